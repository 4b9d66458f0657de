"""The run's ckpt/ folder: weights, optimizer state and :class:`RunState`, per epoch.

After every epoch the loop hands the epoch to :meth:`Checkpointer.on_epoch_end` (which saves
the weight and optimizer files the state will name) and then commits: state.json first, then
the files the state no longer names are deleted. A run killed at any point therefore finds a
state.json whose files all exist.

Weights are npz files of ``model.weights`` positions, applied in order: a stage's full
snapshot, then only the variables the stage trains (a small file per epoch).

With ``train.swa_epochs`` N the last stage also keeps the files of the epochs a weight
average (:mod:`medtl.train.swa`) may still need: the N epochs ending at the best so far and
the N - 1 latest ones (``RunState.swa_saved``), until the run has decided on the average.

Example:
    >>> ck = Checkpointer(run_dir / "ckpt")
    >>> state = ck.load_state()          # a fresh RunState when the run is new
    >>> ck.restore(model, state.weights)
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import keras
import numpy as np

from medtl.io.atomic import write_atomic, write_json
from medtl.models.backbones import walk_layers
from medtl.run.layout import STATE_FILE
from medtl.train.state import RunState
from medtl.train.swa import needed_epochs

__all__ = ["Checkpointer", "save_weights", "load_weights", "assign_weights", "save_optimizer", "load_optimizer",
           "changing_variables", "save_state", "load_state"]


class Checkpointer:
    """Writes and reads one run's ckpt/ folder.

    Args:
        ckpt_dir: the folder (``<run>/ckpt``); created by :meth:`on_run_start`.
    """

    def __init__(self, ckpt_dir: Path) -> None:
        self.dir = Path(ckpt_dir)
        self._trained: list[int] = []  # model.weights positions the current stage changes
        self._keep = 0  # epochs kept for a weight average in the current stage (train.swa_epochs)

    @property
    def state_path(self) -> Path:
        return self.dir / STATE_FILE

    def load_state(self) -> RunState:
        """The committed state, or a fresh one for a new run."""
        return load_state(self.dir)

    def on_run_start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)

    def restore(self, model: keras.Model, files: list[str]) -> None:
        """Apply the weight files ``files`` (names in ckpt/, e.g. ``state.weights``) in order."""
        load_weights(model, [self.dir / f for f in files])

    def restore_optimizer(self, model: keras.Model, state: RunState) -> None:
        """Restore the optimizer state of a stage resumed mid-way (none at a stage start)."""
        if state.optimizer:
            load_optimizer(model, self.dir / state.optimizer)

    def on_stage_start(self, state: RunState, s: int, model: keras.Model, keep_epochs: int = 0) -> None:
        """Note the variables stage ``s`` trains; snapshot all weights when it starts afresh.

        Args:
            keep_epochs: ``train.swa_epochs`` for the last stage of a run that averages, else 0:
                the epochs' weight files a later average may need are kept (``state.swa_saved``).
        """
        position = {id(v): i for i, v in enumerate(model.weights)}
        self._trained = sorted({position[id(v)] for v in changing_variables(model)})
        self._keep = int(keep_epochs)
        if state.epoch == 0:
            state.stage_base = f"stage{s + 1}-start.weights.npz"
            state.swa_saved = []
            save_weights(model, self.dir / state.stage_base)

    def on_epoch_end(self, state: RunState, s: int, e: int, model: keras.Model, fit_model: keras.Model,
                     end_of_stage: bool, improved: bool | None) -> None:
        """Save epoch ``e`` of stage ``s`` and point ``state`` at where the run continues.

        Args:
            state: updated in place (weights, best_weights, optimizer, stage, epoch);
                ``state.global_epoch`` is still the epoch's own index.
            model: the full model (its weights are saved).
            fit_model: the model that was fitted (its optimizer is saved).
            end_of_stage: the stage ends after this epoch (last epoch or early stop).
            improved: the epoch is the best so far; None for a run without a monitor (fixed
                epochs), which goes on from its last weights.
        """
        gid = state.global_epoch
        if improved:
            state.best_weights = [state.stage_base, f"best-{gid:04d}.weights.npz"]
            save_weights(model, self.dir / state.best_weights[-1], self._trained)
        if end_of_stage:
            if improved is None:
                state.weights = self._save_epoch(state, model)
            else:
                # End of stage: continue from (and keep) the best weights seen so far.
                if not improved:
                    self.restore(model, state.best_weights)
                state.weights = state.best_weights
            state.stage, state.epoch, state.optimizer = s + 1, 0, None
        else:
            state.stage, state.epoch = s, e + 1
            state.weights = state.best_weights if improved else self._save_epoch(state, model)
            state.optimizer = f"epoch-{gid:04d}.optimizer.npz"
            save_optimizer(fit_model, self.dir / state.optimizer)
        if self._keep:
            self._keep_for_average(state, s, e, improved, end_of_stage)

    def save_state(self, state: RunState) -> None:
        save_state(self.dir, state)

    def prune(self, state: RunState) -> None:
        """Delete the ckpt files ``state`` no longer names (after it is committed)."""
        keep = {STATE_FILE, state.optimizer, *state.weights, *state.best_weights,
                *(w["file"] for w in state.swa_saved), (state.swa or {}).get("weights")}
        for f in self.dir.iterdir():
            if f.name not in keep:
                f.unlink(missing_ok=True)

    def _keep_for_average(self, state: RunState, s: int, e: int, improved: bool | None, end_of_stage: bool) -> None:
        """Note epoch ``e``'s weight file in ``state.swa_saved`` and drop the entries no later
        average can need. A stage's last epoch that is not the best has no file of its own; it
        comes after the best epoch, so no window (which ends at the best) holds it."""
        gid = state.global_epoch
        file = f"best-{gid:04d}.weights.npz" if improved else (None if end_of_stage else f"epoch-{gid:04d}.weights.npz")
        saved = list(state.swa_saved)
        if file is not None:
            saved.append({"epoch": e + 1, "global_epoch": gid + 1, "file": file})
        best = state.best_at or {}
        best_epoch = best.get("epoch") if best.get("stage") == s + 1 else None
        state.swa_saved = needed_epochs(saved, None if end_of_stage else e + 1, best_epoch, self._keep)

    def _save_epoch(self, state: RunState, model: keras.Model) -> list[str]:
        files = [state.stage_base, f"epoch-{state.global_epoch:04d}.weights.npz"]
        save_weights(model, self.dir / files[-1], self._trained)
        return files


def save_optimizer(model: keras.Model, path: Path) -> None:
    """Save ``model.optimizer``'s variables to one npz."""
    values = {f"v{i:05d}": keras.ops.convert_to_numpy(v) for i, v in enumerate(model.optimizer.variables)}
    write_atomic(path, lambda tmp: np.savez(tmp, **values))


def load_optimizer(model: keras.Model, path: Path) -> None:
    """Restore optimizer variables saved by :func:`save_optimizer` (builds the optimizer first)."""
    opt = model.optimizer
    if not opt.built:
        opt.build(model.trainable_variables)
    with np.load(path) as data:
        values = [data[k] for k in sorted(data.files)]
    if len(values) != len(opt.variables):
        raise RuntimeError(f"{path}: holds {len(values)} optimizer variables, the model's optimizer "
                           f"has {len(opt.variables)}; the checkpoint is from another config")
    for v, x in zip(opt.variables, values):
        v.assign(x)


def changing_variables(model: keras.Model) -> list:
    """The variables a stage can change: trainable weights, plus the moving statistics of
    BatchNormalization layers that train (a backbone trained from random weights)."""
    found = list(model.trainable_weights)
    for layer in walk_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable:
            found.extend(layer.non_trainable_weights)
    return found


def save_weights(model: keras.Model, path: Path, which: list[int] | None = None) -> None:
    """Save the variables ``model.weights[i]`` for i in ``which`` (default all) to one npz.

    An uncompressed npz is ~10x faster to write than Keras's per-variable .h5, and saving only
    the variables a stage trains cuts the per-epoch checkpoint further.
    """
    weights = model.weights
    which = range(len(weights)) if which is None else which
    arrays = {f"w{i}": np.asarray(weights[i].numpy()) for i in which}
    # The temporary name keeps the .npz suffix, so np.savez adds none.
    write_atomic(path, lambda tmp: np.savez(tmp, **arrays))


def load_weights(model: keras.Model, paths: list[Path]) -> None:
    """Apply weight files saved by :func:`save_weights`, in order."""
    for path in paths:
        with np.load(path) as data:
            assign_weights(model, {k: data[k] for k in data.files}, path)


def assign_weights(model: keras.Model, arrays: dict[str, np.ndarray], source: str | Path = "weights") -> None:
    """Assign ``{"w<position>": array}`` (a file of :func:`save_weights`, or an average of such
    files) to ``model.weights``; ``source`` names them in the error."""
    weights = model.weights
    for key, value in arrays.items():
        i = int(key[1:])
        if i >= len(weights) or tuple(weights[i].shape) != value.shape:
            raise RuntimeError(f"{source}: does not fit the model ({key} of shape {value.shape}); "
                               "the checkpoint is from another config, start a new run")
        weights[i].assign(value)


def save_state(ckpt: Path, state: RunState) -> None:
    """Write ``state`` to ``ckpt/state.json`` atomically (strict JSON: NaN is written as null)."""
    write_json(Path(ckpt) / STATE_FILE, asdict(state))


def load_state(ckpt: Path) -> RunState:
    """The state in ``ckpt/state.json``, or a fresh :class:`RunState` if there is none."""
    path = Path(ckpt) / STATE_FILE
    if not path.exists():
        return RunState()
    try:
        state = RunState(**json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise RuntimeError(f"{path}: unreadable checkpoint state ({exc}); start a new run") from None
    if state.best is not None:
        # Strict JSON stores a NaN score (e.g. no positive in validation) as null; comparing
        # keys needs NaN back.
        state.best = [math.nan if v is None else v for v in state.best]
    return state
