"""Early stopping on ``train.monitor``: the best epoch so far and when a stage gives up.

The best score is tracked over all stages (a later stage must beat the earlier ones to count
as an improvement), the patience within a stage. All of it lives in the
:class:`~medtl.train.state.RunState`, so a resumed run stops where the uninterrupted one would.

Example:
    >>> stopper = EarlyStopping("val_roc_auc", patience=2)
    >>> state = RunState()
    >>> [stopper.on_epoch_end(state, 0, e, {"val_roc_auc": v}).stop for e, v in enumerate([0.7, 0.6, 0.65])]
    [False, False, True]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from medtl.config import ConfigError
from medtl.train.state import RunState

__all__ = ["EarlyStopping", "Verdict", "monitor_mode", "better"]


def monitor_mode(monitor: str) -> str:
    """``min`` for losses, ``max`` for every other metric (AUC, accuracy)."""
    return "min" if monitor.endswith("loss") else "max"


def better(a: list, b: list, mode: str) -> bool:
    """Lexicographic comparison of keys; NaN is worse than any number."""
    for x, y in zip(a, b):
        x = -math.inf if math.isnan(x) else (x if mode == "max" else -x)
        y = -math.inf if math.isnan(y) else (y if mode == "max" else -y)
        if x != y:
            return x > y
    return False


@dataclass(frozen=True)
class Verdict:
    """What one epoch meant: a new best over all stages, and whether the stage stops."""

    improved: bool
    stop: bool


class EarlyStopping:
    """Tracks the best epoch by ``monitor`` and stops a stage after ``patience`` epochs without one.

    Args:
        monitor: the logged metric to follow (e.g. ``val_roc_auc``).
        patience: epochs of a stage without improvement before it stops.
    """

    def __init__(self, monitor: str, patience: int) -> None:
        self.monitor = monitor
        self.patience = patience
        self.mode = monitor_mode(monitor)

    def key(self, logs: dict) -> list[float]:
        """Comparison key: the monitored value, ties broken by the lower validation loss."""
        score = logs[self.monitor]
        tie = logs.get("val_loss", float("nan")) if self.monitor != "val_loss" else score
        return [score, -tie if self.mode == "max" else tie]

    def on_stage_start(self, state: RunState) -> None:
        """Patience counts within a stage; a resumed stage keeps the count it had."""
        if state.epoch == 0:
            state.wait = 0

    def on_epoch_end(self, state: RunState, s: int, e: int, logs: dict, summary: dict | None = None,
                     planned: int | None = None) -> Verdict:
        """Record epoch ``e`` of stage ``s`` (before ``state.global_epoch`` moves on).

        Args:
            state: updated in place (best, best_at, best_logs, wait).
            s, e: the stage and its epoch, from 0.
            logs: the epoch's logged metrics.
            summary: the stage's summary; its ``best``, ``improved_overall`` and
                ``stopped_early`` fields are kept here.
            planned: the stage's epochs (a stop before the last one is an early stop).

        Raises:
            ConfigError: ``monitor`` is not among ``logs``.
        """
        if self.monitor not in logs:
            raise ConfigError(f"train.monitor: {self.monitor!r} is not a logged metric; choose one of "
                              f"{', '.join(sorted(logs))}")
        improved = state.best is None or better(self.key(logs), state.best, self.mode)
        if improved:
            state.best, state.wait = self.key(logs), 0
            state.best_at = {"stage": s + 1, "epoch": e + 1, "global_epoch": state.global_epoch + 1}
            state.best_logs = dict(logs)
        else:
            state.wait += 1
        stop = state.wait >= self.patience
        if summary is not None:
            score = logs[self.monitor]
            if improved:
                summary["improved_overall"] = True
            if summary["best"] is None or better([score], [summary["best"]], self.mode):
                summary["best"] = score
            summary["stopped_early"] = stop and (planned is None or e + 1 < planned)
        return Verdict(improved, stop)
