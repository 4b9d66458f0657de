"""A weight average (SWA) of the last epochs before the best one (``train.swa_epochs``).

Averaging the weights of the last few epochs of a run (Izmailov et al., 2018, "Averaging
weights leads to wider optima and better generalization") often scores a little better than
any one of them, and costs no training. medtl averages the checkpoints of the epochs that end
at the chosen best epoch of the last stage, re-estimates the statistics of the BatchNorm
layers that train, and keeps the average only if it scores at least as well on the run's
monitor as the best checkpoint (the trainer decides, :meth:`medtl.train.trainer._Run._finish`).

This module holds the parts that need no model: the average itself, and which epochs it
covers.

Example:
    >>> average_weights([[np.zeros(2)], [np.ones(2)]])
    [array([0.5, 0.5])]
    >>> swa_window([{"epoch": e, "global_epoch": e + 4, "file": f"e{e}"} for e in (1, 2, 3)],
    ...            {"stage": 2, "epoch": 3, "global_epoch": 7}, last_stage=2, n=2)
    ([{'epoch': 2, 'global_epoch': 6, 'file': 'e2'}, {'epoch': 3, 'global_epoch': 7, 'file': 'e3'}], None)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["average_weights", "average_weight_files", "swa_window", "needed_epochs"]


def average_weights(weight_lists: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
    """The element-wise mean of several lists of arrays (one list per checkpoint).

    The mean is taken in float64 and cast back to each array's dtype. Arrays that are not
    floating point (counters, seed states) cannot be averaged and take the last list's value.

    Args:
        weight_lists: one list of arrays per checkpoint, all with the same shapes in the same order.

    Returns:
        One array per position.

    Raises:
        ValueError: no lists, or lists whose lengths or shapes differ.

    Example:
        >>> average_weights([[np.array([1.0, 2.0])], [np.array([3.0, 6.0])]])
        [array([2., 4.])]
    """
    if not weight_lists:
        raise ValueError("average_weights: no weights to average")
    n = len(weight_lists[0])
    if any(len(ws) != n for ws in weight_lists):
        raise ValueError(f"average_weights: the checkpoints hold {sorted({len(ws) for ws in weight_lists})} "
                         "arrays; they must all hold the same")
    out = []
    for i in range(n):
        arrays = [np.asarray(ws[i]) for ws in weight_lists]
        if any(a.shape != arrays[0].shape for a in arrays):
            raise ValueError(f"average_weights: array {i} has shapes {[a.shape for a in arrays]}; "
                             "the checkpoints are of different models")
        last = arrays[-1]
        if not np.issubdtype(last.dtype, np.floating):
            out.append(last.copy())
            continue
        mean = np.mean(np.stack([a.astype(np.float64) for a in arrays]), axis=0)
        out.append(mean.astype(last.dtype))
    return out


def average_weight_files(paths: Sequence[Path]) -> dict[str, np.ndarray]:
    """The average of weight files saved by :func:`medtl.train.checkpoint.save_weights`.

    Args:
        paths: npz files holding the same variables (``w<position>`` keys).

    Returns:
        ``{key: averaged array}``, in the files' format (apply with
        :func:`medtl.train.checkpoint.assign_weights`).

    Raises:
        ValueError: no files, or files that hold different variables.
    """
    if not paths:
        raise ValueError("average_weight_files: no weight files to average")
    contents = []
    for path in paths:
        with np.load(path) as data:
            contents.append({k: data[k] for k in data.files})
    keys = sorted(contents[0])
    for path, c in zip(paths, contents):
        if sorted(c) != keys:
            raise ValueError(f"{path}: holds other variables than {paths[0]}; only epochs of one stage can "
                             "be averaged")
    return dict(zip(keys, average_weights([[c[k] for k in keys] for c in contents])))


def swa_window(saved: list[dict], best_at: dict | None, last_stage: int,
               n: int) -> tuple[list[dict], str | None]:
    """The saved epochs to average: epochs ``best - n + 1 .. best`` of the last stage.

    Args:
        saved: the last stage's saved epochs, ``{"epoch", "global_epoch", "file"}`` each
            (``RunState.swa_saved``; epochs counted from 1 within the stage).
        best_at: the best epoch (``RunState.best_at``: stage and epoch counted from 1).
        last_stage: the last stage, counted from 1.
        n: ``train.swa_epochs``.

    Returns:
        (the epochs to average, in order; None) or ([], why there is nothing to average).

    Raises:
        RuntimeError: an epoch of the window has no saved weights (a checkpoint was lost).
    """
    if best_at is None:
        return [], "no best epoch"
    if best_at["stage"] != last_stage:
        return [], (f"the best epoch is in stage {best_at['stage']}, not in the last stage ({last_stage}); "
                    "the best checkpoint is kept")
    best = int(best_at["epoch"])
    first = max(1, best - n + 1)
    if best == first:
        return [], f"the best epoch is epoch 1 of stage {last_stage}; there is nothing before it to average"
    by_epoch = {int(w["epoch"]): w for w in saved}
    missing = [e for e in range(first, best + 1) if e not in by_epoch]
    if missing:
        raise RuntimeError(f"no saved weights for epoch(s) {missing} of stage {last_stage}, which train.swa_epochs "
                           f"{n} averages; the run's ckpt/ folder is incomplete")
    return [by_epoch[e] for e in range(first, best + 1)], None


def needed_epochs(saved: list[dict], current: int | None, best_epoch: int | None, n: int) -> list[dict]:
    """The saved epochs of the last stage a later average may still need, after epoch ``current``.

    The final best epoch is either the best so far (then its window is the ``n`` epochs ending
    at it) or one still to come (then its window holds only the ``n - 1`` latest epochs of
    those done); every other epoch can go.

    Args:
        saved: ``{"epoch", "global_epoch", "file"}`` entries (epochs counted from 1 in the stage).
        current: the epoch just finished, counted from 1; None once the stage has ended (no
            epoch is still to come).
        best_epoch: the best epoch so far if it is in this stage, else None.
        n: ``train.swa_epochs``.

    Example:
        >>> [w["epoch"] for w in needed_epochs([{"epoch": e} for e in range(1, 7)], 6, 2, 2)]
        [1, 2, 6]
        >>> [w["epoch"] for w in needed_epochs([{"epoch": e} for e in range(1, 7)], None, 2, 2)]
        [1, 2]
    """
    def needed(e: int) -> bool:
        if current is not None and e > current - n + 1:
            return True
        return best_epoch is not None and best_epoch - n < e <= best_epoch

    return [w for w in saved if needed(int(w["epoch"]))]
