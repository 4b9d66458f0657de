"""Staged fine-tuning with early stopping, best-model checkpoints and exact resume.

``train(cfg)`` runs every stage of ``cfg.train.stages`` (head first, then more of the backbone)
on a patient-grouped holdout of the manifest and writes a run folder::

    runs/<name>/<YYYYmmdd-HHMMSS>/
        config.yaml          the resolved config
        model.keras          the best model (by train.monitor) over all stages
        model_info.json      task, classes and preprocessing; what predict needs
        history_stage<i>.csv, history.csv, tensorboard/
        metrics.json         best validation metrics, per-stage summary, epochs, wall time
        val_predictions.csv  the best model's scores on the validation split
        skipped.csv          files skipped as unreadable (data.on_error: skip)
        ckpt/                state.json, the last epoch's weights and optimizer state and the
                             best weights so far: what --resume continues from

Each epoch is one ``model.fit`` call whose data (shuffle order, augmentation) and random
seeds (dropout) are set from ``(seed, stage, epoch)``; after it the weights, optimizer state
and early-stopping state are committed to ``ckpt/``. A run killed at any point therefore
resumes from its last completed epoch and ends with the same weights as an uninterrupted run.

Each stage ends by restoring the best weights seen so far (over all stages), so a stage that
only makes things worse leaves the model as it was; model.keras is written from the best
weights when the run ends.

With ``fixed_epochs`` (one epoch count per stage) the run has no validation split: it trains
on every given image for exactly those epochs, with no monitor and no early stopping, and
model.keras holds the last epoch's weights (there is no val_predictions.csv). This is how a
cross-validated recipe is retrained on all data (``evaluate.final_model: retrain``).
Checkpoints and resume work as in the default mode; the epoch counts are kept in the
checkpoint state, so a resume needs no ``fixed_epochs`` and refuses different ones.

Example:
    >>> from medtl.config import load_config
    >>> from medtl.train.trainer import train
    >>> result = train(load_config("configs/demo.yaml"))
    >>> result.metrics["best"]["value"]          # best validation ROC AUC
    >>> result = train(cfg, resume=result.run_dir)  # continue an interrupted run
    >>> final = train(cfg, manifest, train_idx=all_idx, fixed_epochs=[3, 2])  # no validation
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import random
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import keras
import numpy as np
import pandas as pd

from medtl.config import Config, ConfigError, load_resolved, save_config
from medtl.train.callbacks import EpochProgress, EpochSummaries, RecalibrateBatchNorm
from medtl.train.predict import MODEL_FILE, score_columns, write_model_info
from medtl.train.runtime import runtime_for

__all__ = ["train", "TrainResult", "stage_seed", "monitor_mode"]

CKPT_DIR = "ckpt"
STATE_FILE = "state.json"
# Keys a resumed run may change without changing what is computed.
_RESUME_FREE_KEYS = {"output_dir", "data.cache_dir", "data.workers"}
# Layers between the backbone and the first trainable head layer that have no weights and no
# randomness; the feature cache stores their output (pooled features are far smaller).
_PASS_THROUGH = ("GlobalAveragePooling2D", "GlobalMaxPooling2D", "Flatten")
METRIC_NAMES = ("accuracy", "roc_auc", "pr_auc")  # compiled for every task (see _make_metrics)


@dataclass
class TrainResult:
    """What :func:`train` produced.

    Attributes:
        run_dir: the run folder.
        model_path: ``run_dir / "model.keras"``, the best model.
        history: one row per epoch over all stages (the contents of history.csv).
        val_predictions: the best model's validation scores (val_predictions.csv); empty
            for a ``fixed_epochs`` run, which has no validation split.
        metrics: the contents of metrics.json.
        model: the best model, in memory (None when a finished run was only re-read).
    """

    run_dir: Path
    model_path: Path
    history: pd.DataFrame
    val_predictions: pd.DataFrame
    metrics: dict
    model: keras.Model | None = None


@dataclass
class _State:
    """Progress of a run, committed to ckpt/state.json after every epoch."""

    stage: int = 0  # next stage to run
    epoch: int = 0  # next epoch within that stage
    global_epoch: int = 0  # epochs completed over all stages
    wait: int = 0  # epochs of this stage since the best score last improved
    best: list | None = None  # comparison key of the best epoch so far
    best_at: dict | None = None
    best_logs: dict = field(default_factory=dict)
    # Weights are ckpt files applied in order: the stage's full snapshot, then the variables
    # trained in the stage (nothing else moves within a stage: BatchNorm is always frozen).
    weights: list = field(default_factory=list)  # after the last completed epoch
    optimizer: str | None = None  # ckpt file of the optimizer state (None at a stage start)
    best_weights: list = field(default_factory=list)
    stage_base: str | None = None
    history: list = field(default_factory=list)
    stages: list = field(default_factory=list)
    elapsed_s: float = 0.0
    finished: bool = False
    fixed_epochs: list | None = None  # epochs per stage of a run without validation (fixed mode)


def stage_seed(seed: int, stage: int, epoch: int) -> int:
    """The random seed set at the start of ``epoch`` of ``stage`` (a pure function)."""
    return int(np.random.default_rng([seed, stage, epoch]).integers(2**31 - 1))


def monitor_mode(monitor: str) -> str:
    """``min`` for losses, ``max`` for every other metric (AUC, accuracy)."""
    return "min" if monitor.endswith("loss") else "max"


# --------------------------------------------------------------------------------------------
# Public entry point


def train(
    cfg: Config | None,
    manifest=None,
    train_idx: Sequence[int] | np.ndarray | None = None,
    val_idx: Sequence[int] | np.ndarray | None = None,
    run_dir: str | Path | None = None,
    resume: str | Path | None = None,
    progress: bool = True,
    fixed_epochs: Sequence[int] | None = None,
) -> TrainResult:
    """Fine-tune ``cfg.model`` in ``cfg.train.stages`` and save the best model in a run folder.

    Args:
        cfg: the run config; may be None with ``resume`` (the run's config.yaml is used).
        manifest: the images to use (default: ``load_manifest(cfg)``).
        train_idx, val_idx: row positions in ``manifest`` for training and validation (both or
            neither; default: a patient-grouped holdout of ``data.val_fraction``).
        run_dir: the run folder (default ``<output_dir>/<name>/<YYYYmmdd-HHMMSS>``).
        resume: a run folder to continue from its last completed epoch.
        progress: print stage headers and per-epoch progress.
        fixed_epochs: train without a validation split for exactly these epochs per stage
            (one int >= 1 per stage of ``cfg.train.stages``; a cosine schedule still spans at
            least the stage's configured epochs) and keep the last epoch's weights. Give
            ``train_idx`` (default: every image of ``manifest``) and no ``val_idx``. A resumed
            fixed run takes them from its checkpoint.

    Returns:
        A :class:`TrainResult`.

    Raises:
        ConfigError: a resumed run's config (or fixed_epochs) differs, or train.monitor is not
            a logged metric.
        LeakageError: a patient or an identical image is in both training and validation.

    Example:
        >>> res = train(cfg)
        >>> res.val_predictions.head()
    """
    run_dir, cfg = _open_run(cfg, run_dir, resume)
    run = _Run(cfg, run_dir, progress, fixed_epochs)
    res = run.execute(manifest, train_idx, val_idx)
    standalone = train_idx is None and val_idx is None and not run.fixed
    if standalone and len(res.val_predictions):
        # A run of its own (not a CV fold, which does this itself): choose evaluate.threshold and
        # fit evaluate.calibration on the validation split, so predict applies them.
        from medtl.evaluate.runs import save_postprocess
        from medtl.train.predict import read_model_info

        try:
            pp = save_postprocess(cfg, read_model_info(res.run_dir)["classes"], res.val_predictions, res.run_dir)
        except ValueError as exc:  # the model is fine; only the threshold rule cannot be applied
            print(f"No decision threshold chosen ({exc}); medtl predict uses 0.5", file=sys.stderr)
            return res
        if pp.thresholds is not None:
            run.log(f"Decision threshold {', '.join(f'{t:.4f}' for t in pp.thresholds)} ({pp.rule} on the "
                    f"validation split), calibration {pp.calibration}; medtl predict applies them")
    return res


# --------------------------------------------------------------------------------------------
# The run


class _Run:
    def __init__(self, cfg: Config, run_dir: Path, progress: bool,
                 fixed_epochs: Sequence[int] | None = None) -> None:
        self.cfg = cfg
        self.dir = run_dir
        self.ckpt = run_dir / CKPT_DIR
        self.progress = progress
        self.monitor = cfg.train.monitor
        self.mode = monitor_mode(self.monitor)
        self.state = _load_state(self.ckpt)
        self.fixed = _fixed_epochs(fixed_epochs, self.state, cfg, self.ckpt / STATE_FILE)
        self.state.fixed_epochs = self.fixed
        self.t_mark = time.perf_counter()

    def _epochs(self, s: int) -> int:
        """Epochs of stage ``s``: the configured maximum, or the fixed count."""
        return self.cfg.train.stages[s].epochs if self.fixed is None else self.fixed[s]

    def log(self, msg: str) -> None:
        if self.progress:
            print(msg, flush=True)

    # -- setup -------------------------------------------------------------------------------

    def execute(self, manifest, train_idx, val_idx) -> TrainResult:
        cfg = self.cfg
        if self.state.finished:
            self.log(f"{self.dir}: run already finished; nothing to resume")
            return _read_result(self.dir)
        logged = [f"{p}{name}" for p in ("val_", "") for name in ("loss", *METRIC_NAMES)]
        if self.monitor not in logged:
            raise ConfigError(f"train.monitor: {self.monitor!r} is not a logged metric; choose one of "
                              f"{', '.join(logged)}")
        self.ckpt.mkdir(parents=True, exist_ok=True)
        self._prepare_data(manifest, train_idx, val_idx)
        if not (self.dir / "config.yaml").exists():
            save_config(cfg, self.dir / "config.yaml")
        with runtime_for(cfg.train) as rt:
            self.rt = rt
            with rt.scope():
                keras.utils.set_random_seed(cfg.seed)
                from medtl.models import build_model

                self.model = build_model(cfg, self.train_m.n_outputs)
            write_model_info(self.dir, cfg, self.train_m, policy=rt.policy)
            _load_weights(self.model, [self.ckpt / f for f in self.state.weights])
            if self.val_m is None:
                self.log(f"Run {self.dir}: {len(self.train_m)} training images, no validation split, "
                         f"fixed epochs per stage {self.fixed}; {rt.describe()}")
            else:
                self.log(f"Run {self.dir}: {len(self.train_m)} training / {len(self.val_m)} "
                         f"validation images; {rt.describe()}")
            self.tb = EpochSummaries(str(self.dir / "tensorboard"))
            try:
                for s in range(self.state.stage, len(cfg.train.stages)):
                    self._run_stage(s)
            finally:
                self.tb.close()
            return self._finish()

    def _prepare_data(self, manifest, train_idx, val_idx) -> None:
        from medtl.data.manifest import load_manifest
        from medtl.data.pipeline import ImagePipeline

        cfg = self.cfg
        if self.fixed is not None and val_idx is not None:
            raise ValueError("train(): fixed_epochs trains without a validation split; pass val_idx=None")
        if self.fixed is None and (train_idx is None) != (val_idx is None):
            raise ValueError("train(): give both train_idx and val_idx, or neither")
        self.pipeline = ImagePipeline(cfg)
        if manifest is None:
            manifest = load_manifest(cfg)
            for note in manifest.notes:  # e.g. label names read as no finding: said even when quiet
                print(f"Note: {note}", file=sys.stdout if self.progress else sys.stderr, flush=True)
        if self.fixed is None:
            self._split_data(manifest, train_idx, val_idx)
        else:
            idx = np.arange(len(manifest)) if train_idx is None else train_idx
            self.train_m, self.val_m = self.pipeline.prepare(manifest.subset(idx)), None
            if len(self.train_m) == 0:
                raise ValueError("train(): no training images; give a non-empty train_idx")
        listed = self.pipeline.save_skipped(self.dir)
        if listed:  # not progress: said even when quiet, so no file is left out unannounced
            print(f"Skipped {len(self.pipeline.skipped)} unreadable file(s) (data.on_error: skip); listed in {listed}",
                  file=sys.stdout if self.progress else sys.stderr, flush=True)

    def _split_data(self, manifest, train_idx, val_idx) -> None:
        from medtl.data.splits import assert_no_leakage, patient_holdout

        if train_idx is None:
            manifest = self.pipeline.prepare(manifest)
            train_idx, val_idx = patient_holdout(manifest, self.cfg.data.val_fraction, self.cfg.seed)
            train_m, val_m = manifest.subset(train_idx), manifest.subset(val_idx)
        else:
            # Prepare each side on its own so that skipped files cannot shift the indices.
            train_m = self.pipeline.prepare(manifest.subset(train_idx))
            val_m = self.pipeline.prepare(manifest.subset(val_idx))
        assert_no_leakage(train_m, val_m)
        for side, m in (("training", train_m), ("validation", val_m)):
            if len(m) == 0:
                raise ValueError(f"train(): the {side} split is empty; add images or lower data.val_fraction")
        self.train_m, self.val_m = train_m, val_m

    # -- one stage ---------------------------------------------------------------------------

    def _run_stage(self, s: int) -> None:
        from medtl.models import set_trainable
        from medtl.train.batchnorm import trainable_batchnorm
        from medtl.train.stages import is_pretrained

        cfg, st, state = self.cfg, self.cfg.train.stages[s], self.state
        if state.epoch == 0:
            state.wait = 0
        set_trainable(self.model, st.unfreeze)
        if st.unfreeze != "all" and not is_pretrained(self.model):
            warnings.warn(
                f"train.stages[{s}].unfreeze is {st.unfreeze!r} but model.weights is none: the frozen part of "
                "the backbone keeps its random weights and initial BatchNorm statistics, so its features carry "
                "little signal; train a random backbone with unfreeze: all, or give pretrained weights",
                RuntimeWarning, stacklevel=2)
        cached = self._use_feature_cache(st)
        n_params = int(sum(np.prod(v.shape) for v in self.model.trainable_weights))
        self._stage_header(s, n_params, cached)
        fit_model, epoch_data, val_ds = self._stage_inputs(cached)
        steps = math.ceil(len(self.train_m) / cfg.train.batch_size)
        # A fixed run keeps the stage's schedule length, so a cosine decay follows the same
        # curve as the runs whose best epoch counts it reuses (and stops where they peaked).
        self._compile(fit_model, st if self.fixed is None else
                      replace(st, epochs=max(st.epochs, self._epochs(s))), steps)
        position = {id(v): i for i, v in enumerate(self.model.weights)}
        self._trained = sorted({position[id(v)] for v in _changing_variables(self.model)})
        if state.epoch == 0:
            state.stage_base = f"stage{s + 1}-start.weights.npz"
            _save_weights(self.model, self.ckpt / state.stage_base)
        summary = self._stage_summary(s, st, n_params, cached)

        callbacks: list = [self.tb]
        if self.progress:
            callbacks.append(EpochProgress(self._epochs(s), state.global_epoch - state.epoch, steps))
        # A backbone trained from random weights: its BatchNormalization statistics are
        # re-estimated for each epoch's weights before validation (see medtl.train.batchnorm).
        recalibrate = None
        if not cached and trainable_batchnorm(self.model):
            recalibrate = RecalibrateBatchNorm(self.model, steps)
            callbacks.append(recalibrate)
        end_epoch = self._end_epoch if self.fixed is None else self._end_fixed_epoch
        for e in range(state.epoch, self._epochs(s)):
            gid = state.global_epoch
            self._reseed(s, e)
            t0 = time.perf_counter()
            if recalibrate is not None:
                recalibrate.batches = epoch_data(gid)
            hist = fit_model.fit(epoch_data(gid), validation_data=val_ds, initial_epoch=gid, epochs=gid + 1,
                                 shuffle=False, verbose=0, callbacks=callbacks)
            logs = {k: float(v[-1]) for k, v in hist.history.items()}
            if end_epoch(s, e, logs, t0, time.perf_counter() - t0, fit_model, summary):
                self.log(f"Stage {s + 1}: early stop, no improvement of {self.monitor} "
                         f"in {cfg.train.patience} epochs")
                break

    def _stage_header(self, s: int, n_params: int, cached: bool) -> None:
        st = self.cfg.train.stages[s]
        what = {"head": "head only", "all": "all layers"}.get(
            st.unfreeze, f"unfreeze {st.unfreeze} block{'s' if st.unfreeze != 1 else ''}")
        resumed = f", resuming at epoch {self.state.epoch + 1}" if self.state.epoch else ""
        self.log(f"Stage {s + 1}/{len(self.cfg.train.stages)}: {what}, lr {st.lr:g}, {self._epochs(s)} epochs, "
                 f"{n_params:,} trainable params{', cached features' if cached else ''}{resumed}")

    def _stage_inputs(self, cached: bool):
        """(model to fit, epoch -> training dataset, validation dataset) for a stage."""
        seed, bs = self.cfg.seed, self.cfg.train.batch_size
        if cached:
            head, (fx, fy), val = self._feature_data()
            return (head,
                    lambda gid: _feature_dataset(fx, fy, bs, np.random.default_rng([seed, gid]).permutation(len(fx))),
                    None if val is None else _feature_dataset(*val, bs))
        self._features = None  # this stage may change the backbone: cached features go stale
        return (self.model,
                lambda gid: self.pipeline.dataset(self.train_m, training=True, epoch=gid),
                self._val_dataset())

    def _compile(self, fit_model: keras.Model, st, steps: int) -> None:
        """Compile for a stage: a fresh optimizer (restored when resuming mid-stage)."""
        from medtl.train.losses import compute_class_weights, make_loss

        cfg = self.cfg
        # Class weights come from the training split only, never from validation.
        class_weights = compute_class_weights(
            self.train_m.targets(), cfg.train.loss.class_weight, self.train_m.classes, task=cfg.task)
        with self.rt.scope():
            fit_model.compile(
                optimizer=_make_optimizer(st, steps),
                loss=make_loss(cfg.train.loss, cfg.task, class_weights),
                metrics=_make_metrics(cfg.task, self.train_m.n_outputs),
                jit_compile=self.rt.jit_compile,
            )
            if self.state.optimizer:
                _load_optimizer(fit_model, self.ckpt / self.state.optimizer)

    def _stage_summary(self, s: int, st, n_params: int, cached: bool) -> dict:
        while len(self.state.stages) <= s:
            self.state.stages.append({})
        summary = self.state.stages[s]
        if not summary:
            summary.update(stage=s + 1, unfreeze=st.unfreeze, lr=st.lr, optimizer=st.optimizer,
                           schedule=st.schedule, epochs_planned=self._epochs(s), epochs_run=0)
            if self.fixed is None:  # a fixed run has no monitor: nothing stops or improves
                summary.update(stopped_early=False, best=None, improved_overall=False)
            summary.update(trainable_params=n_params, feature_cache=cached, seconds=0.0)
        return summary

    def _end_fixed_epoch(self, s: int, e: int, logs: dict, t0: float, fit_seconds: float, fit_model,
                         summary: dict) -> bool:
        """Book-keeping after one epoch of a fixed run: the weights go on as they are (no best
        to return to); commits the checkpoint. Never stops a stage early."""
        state = self.state
        gid = state.global_epoch
        state.weights = [state.stage_base, f"epoch-{gid:04d}.weights.npz"]
        _save_weights(self.model, self.ckpt / state.weights[-1], self._trained)
        if e + 1 == self._epochs(s):
            state.stage, state.epoch, state.optimizer = s + 1, 0, None
        else:
            state.stage, state.epoch = s, e + 1
            state.optimizer = f"epoch-{gid:04d}.optimizer.npz"
            _save_optimizer(fit_model, self.ckpt / state.optimizer)
        seconds = time.perf_counter() - t0
        summary.update(epochs_run=e + 1, seconds=round(summary["seconds"] + seconds, 3))
        state.history.append({"stage": s + 1, "epoch": e + 1, "global_epoch": gid + 1, **logs,
                              "lr": _current_lr(fit_model), "seconds": round(seconds, 3),
                              "fit_seconds": round(fit_seconds, 3)})
        state.global_epoch = gid + 1
        self._commit()
        return False

    def _end_epoch(self, s: int, e: int, logs: dict, t0: float, fit_seconds: float, fit_model,
                   summary: dict) -> bool:
        """Book-keeping after one epoch; commits the checkpoint. Returns True to stop the stage."""
        cfg, st, state = self.cfg, self.cfg.train.stages[s], self.state
        if self.monitor not in logs:
            raise ConfigError(
                f"train.monitor: {self.monitor!r} is not a logged metric; choose one of "
                f"{', '.join(sorted(logs))}")
        gid = state.global_epoch
        improved = state.best is None or _better(self._key(logs), state.best, self.mode)
        if improved:
            state.best, state.wait = self._key(logs), 0
            state.best_at = {"stage": s + 1, "epoch": e + 1, "global_epoch": gid + 1}
            state.best_logs = dict(logs)
            state.best_weights = [state.stage_base, f"best-{gid:04d}.weights.npz"]
            _save_weights(self.model, self.ckpt / state.best_weights[-1], self._trained)
            summary["improved_overall"] = True
        else:
            state.wait += 1
        stop = state.wait >= cfg.train.patience
        if stop or e + 1 == st.epochs:
            # End of stage: continue from (and keep) the best weights seen so far.
            if not improved:
                _load_weights(self.model, [self.ckpt / f for f in state.best_weights])
            state.stage, state.epoch, state.optimizer = s + 1, 0, None
            state.weights = state.best_weights
        else:
            state.stage, state.epoch = s, e + 1
            if improved:
                state.weights = state.best_weights
            else:
                state.weights = [state.stage_base, f"epoch-{gid:04d}.weights.npz"]
                _save_weights(self.model, self.ckpt / state.weights[-1], self._trained)
            state.optimizer = f"epoch-{gid:04d}.optimizer.npz"
            _save_optimizer(fit_model, self.ckpt / state.optimizer)
        seconds = time.perf_counter() - t0
        score = logs[self.monitor]
        if summary["best"] is None or _better([score], [summary["best"]], self.mode):
            summary["best"] = score
        summary.update(epochs_run=e + 1, stopped_early=stop and e + 1 < st.epochs,
                       seconds=round(summary["seconds"] + seconds, 3))
        state.history.append({"stage": s + 1, "epoch": e + 1, "global_epoch": gid + 1, **logs,
                              "lr": _current_lr(fit_model), "seconds": round(seconds, 3),
                              "fit_seconds": round(fit_seconds, 3), "best": improved})
        state.global_epoch = gid + 1
        self._commit()
        return stop

    def _key(self, logs: dict) -> list[float]:
        """Comparison key: the monitored value, ties broken by the lower validation loss."""
        score = logs[self.monitor]
        tie = logs.get("val_loss", float("nan")) if self.monitor != "val_loss" else score
        return [score, -tie if self.mode == "max" else tie]

    def _commit(self) -> None:
        now = time.perf_counter()
        self.state.elapsed_s += now - self.t_mark
        self.t_mark = now
        _save_state(self.ckpt, self.state)
        _write_histories(self.dir, self.state.history)
        keep = {STATE_FILE, self.state.optimizer, *self.state.weights, *self.state.best_weights}
        for f in self.ckpt.iterdir():
            if f.name not in keep:
                f.unlink(missing_ok=True)

    def _reseed(self, s: int, e: int) -> None:
        """Seed Python, NumPy and every layer's SeedGenerator (dropout) from (seed, s, e).

        TensorFlow's global seed is set once, before the model is built, and not here: changing
        it makes every ``tf.function`` retrace (measured: +60% per epoch). Keras layers draw
        their randomness from their SeedGenerator states, which are reset instead.
        """
        seed = stage_seed(self.cfg.seed, s, e)
        random.seed(seed)
        np.random.seed(seed)
        states = [v for v in self.model.variables if v.path.endswith("seed_generator_state")]
        for i, v in enumerate(states):
            v.assign(np.array([(seed + 7919 * i) % 2**31, 0], dtype=v.dtype))

    # -- data --------------------------------------------------------------------------------

    def _val_dataset(self):
        if self.val_m is None:
            return None
        if getattr(self, "_val_ds", None) is None:
            self._val_ds = self.pipeline.dataset(self.val_m, training=False)
        return self._val_ds

    def _use_feature_cache(self, st) -> bool:
        aug = self.cfg.augment
        return bool(self.cfg.train.feature_cache and st.unfreeze == "head"
                    and aug.preset == "none" and not aug.transforms and not aug.hflip)

    def _feature_data(self):
        """(head model, (train features, y), (val features, y) or None) for a cached head-only stage."""
        if getattr(self, "_features", None) is None:
            extractor, head = split_head(self.model)
            t0 = time.perf_counter()
            data = []
            for m in (self.train_m, self.val_m):
                if m is None:  # a fixed run has no validation split
                    data.append(None)
                    continue
                images = self.pipeline.dataset(m, training=False).map(lambda x, y: x)
                data.append((extractor.predict(images, verbose=0), m.targets()))
            n = sum(len(d[0]) for d in data if d is not None)
            self.log(f"Cached backbone features {data[0][0].shape[1:]} for "
                     f"{n} images in {time.perf_counter() - t0:.1f}s")
            self._features = (head, data[0], data[1])
        return self._features

    # -- end of run --------------------------------------------------------------------------

    def _finish(self) -> TrainResult:
        if self.fixed is not None:
            return self._finish_fixed()
        state = self.state
        if not state.best_weights:
            raise RuntimeError(f"{self.dir}: no epoch completed; nothing to save")
        _load_weights(self.model, [self.ckpt / f for f in state.best_weights])
        _save_model_atomic(self.model, self.dir / MODEL_FILE)
        val = self._val_predictions()
        _write_csv(val, self.dir / "val_predictions.csv")
        state.elapsed_s += time.perf_counter() - self.t_mark
        self.t_mark = time.perf_counter()
        metrics = {
            "monitor": self.monitor,
            "mode": self.mode,
            "best": {"value": state.best_logs.get(self.monitor), **(state.best_at or {})},
            "best_val_metrics": {k: v for k, v in state.best_logs.items() if k.startswith("val_")},
            "best_train_metrics": {k: v for k, v in state.best_logs.items() if not k.startswith("val_")},
            **self._run_summary(validated=True),
        }
        _write_json(self.dir / "metrics.json", metrics)
        state.finished = True
        self._commit()
        self.log(f"Best {self.monitor} {metrics['best']['value']:.4f} (stage {state.best_at['stage']}, "
                 f"epoch {state.best_at['epoch']}); saved {self.dir / MODEL_FILE}")
        return TrainResult(self.dir, self.dir / MODEL_FILE, pd.DataFrame(state.history), val,
                           metrics, self.model)

    def _run_summary(self, validated: bool) -> dict:
        """The metrics.json fields that describe the run rather than its scores."""
        state = self.state
        return {
            "stages": state.stages,
            "epochs_run": state.global_epoch,
            "wall_time_s": round(state.elapsed_s, 2),
            "n_train": len(self.train_m),
            "n_val": len(self.val_m) if validated else 0,
            "n_train_patients": int(self.train_m.df["patient_id"].nunique()),
            "n_val_patients": int(self.val_m.df["patient_id"].nunique()) if validated else 0,
            "classes": list(self.train_m.classes),
            "task": self.cfg.task,
            "runtime": self.rt.as_dict(),
        }

    def _finish_fixed(self) -> TrainResult:
        """Save the last epoch's weights; metrics describe training only (no validation)."""
        state = self.state
        if not state.weights or not state.history:
            raise RuntimeError(f"{self.dir}: no epoch completed; nothing to save")
        _load_weights(self.model, [self.ckpt / f for f in state.weights])
        _save_model_atomic(self.model, self.dir / MODEL_FILE)
        state.elapsed_s += time.perf_counter() - self.t_mark
        self.t_mark = time.perf_counter()
        last = state.history[-1]
        metrics = {
            "monitor": None,
            "mode": "fixed_epochs",
            "fixed_epochs": list(self.fixed),
            "best": None,
            "last": {k: last[k] for k in ("stage", "epoch", "global_epoch")},
            "last_train_metrics": {k: last[k] for k in ("loss", *METRIC_NAMES) if k in last},
            **self._run_summary(validated=False),
        }
        _write_json(self.dir / "metrics.json", metrics)
        state.finished = True
        self._commit()
        self.log(f"Trained {state.global_epoch} epochs ({', '.join(map(str, self.fixed))} per stage) without "
                 f"validation; saved the last epoch's weights to {self.dir / MODEL_FILE}")
        return TrainResult(self.dir, self.dir / MODEL_FILE, pd.DataFrame(state.history), pd.DataFrame(),
                           metrics, self.model)

    def _val_predictions(self) -> pd.DataFrame:
        ds = self._val_dataset()
        scores = np.asarray(self.model.predict(ds, verbose=0), dtype=np.float64)
        targets = np.concatenate([np.asarray(y) for y in ds.map(lambda x, y: y)])
        if not np.array_equal(targets, self.val_m.targets()):
            raise RuntimeError("validation dataset order differs from the manifest; "
                               "ImagePipeline.dataset(training=False) must not shuffle")
        df = self.val_m.df
        out = pd.DataFrame({"path": df["path"].astype(str), "patient_id": df["patient_id"].astype(str)})
        if self.cfg.task == "multilabel":
            for c, col in zip(self.val_m.classes, self.val_m.label_columns or self.val_m.classes):
                out[f"label_{c}"] = df[col].to_numpy()
        else:
            out["label"] = df["label"].to_numpy()
        for j, col in enumerate(score_columns(self.cfg.task, self.val_m.classes)):
            out[col] = scores[:, j]
        return out


# --------------------------------------------------------------------------------------------
# Feature cache


def split_head(model: keras.Model) -> tuple[keras.Model, keras.Model]:
    """Split ``model`` into (feature extractor, head) that share its layers and weights.

    The cut is after the layer named ``backbone`` and any weight-free pooling or flattening
    right after it, so cached features are small. Training the head trains ``model``'s head.

    Example:
        >>> extractor, head = split_head(model)
        >>> np.allclose(head(extractor(x)), model(x))
        True
    """
    try:
        backbone = model.get_layer("backbone")
    except ValueError:
        raise ValueError("split_head: the model has no layer named 'backbone'; build it with "
                         "medtl.models.build_model or set train.feature_cache: false") from None
    # backbone.output would be the nested model's own output; the tensor the outer graph
    # feeds onward is the output of the backbone's call node in this model.
    cut = backbone._inbound_nodes[-1].output_tensors[0]
    consumers = _consumers(model)
    while True:
        users = consumers.get(id(cut), [])
        if len(users) != 1 or type(users[0]).__name__ not in _PASS_THROUGH:
            break
        layer = users[0]
        outs = [n.output_tensors[0] for n in layer._inbound_nodes
                if any(t is cut for t in n.input_tensors)]
        if not outs:
            break
        cut = outs[0]
    extractor = keras.Model(model.inputs, cut, name="feature_extractor")
    head = keras.Model(cut, model.outputs, name="head")
    return extractor, head


def _feature_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, order: np.ndarray | None = None):
    """Batches of cached features; a tf.data input costs Keras far less per fit than numpy."""
    import tensorflow as tf

    if order is not None:
        x, y = x[order], y[order]
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)


def _consumers(model: keras.Model) -> dict[int, list]:
    users: dict[int, list] = {}
    for layer in model.layers:
        for node in layer._inbound_nodes:
            for t in node.input_tensors:
                users.setdefault(id(t), []).append(layer)
    return users


# --------------------------------------------------------------------------------------------
# Compile helpers


def _make_optimizer(st, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    lr: Any = st.lr
    if st.schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(st.lr, decay_steps=max(1, steps_per_epoch * st.epochs))
    wd = st.weight_decay or None
    if st.optimizer == "adam":
        return keras.optimizers.Adam(lr, weight_decay=wd)
    if st.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=st.weight_decay)
    if st.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True, weight_decay=wd)
    if st.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(lr, weight_decay=wd)
    raise ConfigError(f"train.stages.optimizer: invalid value {st.optimizer!r}; expected adam, adamw, sgd or rmsprop")


def _make_metrics(task: str, k: int) -> list:
    multi = task != "binary"
    auc = dict(multi_label=True, num_labels=k) if multi else {}
    acc = keras.metrics.CategoricalAccuracy(name="accuracy") if task == "multiclass" \
        else keras.metrics.BinaryAccuracy(name="accuracy")
    return [acc, keras.metrics.AUC(name="roc_auc", **auc),
            keras.metrics.AUC(curve="PR", name="pr_auc", **auc)]


def _current_lr(model: keras.Model) -> float:
    try:
        return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    except Exception:  # a custom optimizer without a readable rate; the log column stays empty
        return float("nan")


def _better(a: list, b: list, mode: str) -> bool:
    """Lexicographic comparison of keys; NaN is worse than any number."""
    for x, y in zip(a, b):
        x = -math.inf if math.isnan(x) else (x if mode == "max" else -x)
        y = -math.inf if math.isnan(y) else (y if mode == "max" else -y)
        if x != y:
            return x > y
    return False


# --------------------------------------------------------------------------------------------
# Checkpoints and files


def _save_optimizer(model: keras.Model, path: Path) -> None:
    values = {f"v{i:05d}": keras.ops.convert_to_numpy(v) for i, v in enumerate(model.optimizer.variables)}
    _atomic(path, lambda tmp: np.savez(tmp, **values), suffix=".npz")


def _load_optimizer(model: keras.Model, path: Path) -> None:
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


def _changing_variables(model: keras.Model) -> list:
    """The variables a stage can change: trainable weights, plus the moving statistics of
    BatchNormalization layers that train (a backbone trained from random weights)."""
    from medtl.models.backbones import walk_layers

    found = list(model.trainable_weights)
    for layer in walk_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable:
            found.extend(layer.non_trainable_weights)
    return found


def _save_weights(model: keras.Model, path: Path, which: list[int] | None = None) -> None:
    """Save the variables ``model.weights[i]`` for i in ``which`` (default all) to one npz.

    An uncompressed npz is ~10x faster to write than Keras's per-variable .h5, and saving only
    the variables a stage trains cuts the per-epoch checkpoint further.
    """
    weights = model.weights
    which = range(len(weights)) if which is None else which
    arrays = {f"w{i}": np.asarray(weights[i].numpy()) for i in which}
    _atomic(path, lambda tmp: np.savez(tmp, **arrays), suffix=".npz")


def _load_weights(model: keras.Model, paths: list[Path]) -> None:
    """Apply weight files saved by :func:`_save_weights`, in order."""
    weights = model.weights
    for path in paths:
        with np.load(path) as data:
            for key in data.files:
                i, value = int(key[1:]), data[key]
                if i >= len(weights) or tuple(weights[i].shape) != value.shape:
                    raise RuntimeError(f"{path}: does not fit the model ({key} of shape {value.shape}); "
                                       "the checkpoint is from another config, start a new run")
                weights[i].assign(value)


def _save_model_atomic(model: keras.Model, path: Path) -> None:
    _atomic(path, lambda tmp: model.save(tmp), suffix=".keras")


def _atomic(path: Path, write, suffix: str) -> None:
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{suffix}")
    write(str(tmp))
    os.replace(tmp, path)


def _write_json(path: Path, obj: Any) -> None:
    def dump(tmp: str) -> None:
        Path(tmp).write_text(json.dumps(obj, indent=2, default=_jsonable) + "\n")
    _atomic(path, dump, suffix=".json")


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    _atomic(path, lambda tmp: df.to_csv(tmp, index=False), suffix=".csv")


def _write_histories(run_dir: Path, history: list[dict]) -> None:
    if not history:
        return
    df = pd.DataFrame(history)
    _write_csv(df, run_dir / "history.csv")
    for stage, part in df.groupby("stage"):
        _write_csv(part.drop(columns="stage"), run_dir / f"history_stage{stage}.csv")


def _save_state(ckpt: Path, state: _State) -> None:
    _write_json(ckpt / STATE_FILE, asdict(state))


def _load_state(ckpt: Path) -> _State:
    path = ckpt / STATE_FILE
    if not path.exists():
        return _State()
    try:
        return _State(**json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise RuntimeError(f"{path}: unreadable checkpoint state ({exc}); start a new run") from None


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _fixed_epochs(given: Sequence[int] | None, state: _State, cfg: Config, state_path: Path) -> list[int] | None:
    """The run's fixed epochs per stage: ``given``, checked against a resumed run's state."""
    saved = state.fixed_epochs
    started = state_path.exists()
    if given is None:
        return None if saved is None else [int(e) for e in saved]
    n = len(cfg.train.stages)
    try:
        fixed = [int(e) for e in given]
        ok = len(fixed) == n and all(e >= 1 and e == g for e, g in zip(fixed, given))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"train(): fixed_epochs {given!r} must list one whole number >= 1 for each of the "
                         f"{n} stage(s) of train.stages")
    if started and saved != fixed:
        was = f"fixed_epochs {saved}" if saved is not None else "a validation split (no fixed_epochs)"
        raise ConfigError(f"{state_path}: the run being resumed trains with {was}, not fixed_epochs {fixed}; "
                          "resume it as it was started, or start a new run")
    return fixed


def _open_run(cfg: Config | None, run_dir, resume) -> tuple[Path, Config]:
    if resume is not None:
        path = Path(resume)
        saved = path / "config.yaml"
        if not saved.exists():
            raise FileNotFoundError(f"{path}: not a medtl run folder (no config.yaml); "
                                    "pass the folder printed when the run started")
        if run_dir is not None and Path(run_dir).resolve() != path.resolve():
            raise ValueError(f"train(): run_dir {run_dir} and resume {resume} differ; give one of them")
        old = load_resolved(saved)
        if cfg is None:
            return path, old
        a, b = _flatten(old.to_dict()), _flatten(cfg.to_dict())
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in _RESUME_FREE_KEYS)
        if diff:
            shown = ", ".join(f"{k} ({a.get(k)!r} -> {b.get(k)!r})" for k in diff[:5])
            raise ConfigError(f"{saved}: the config differs from the run being resumed in {shown}; "
                              "resume with the same config, or start a new run")
        return path, cfg
    if cfg is None:
        raise ValueError("train(): give a config (or resume=RUN_DIR)")
    if run_dir is None:
        base = Path(cfg.output_dir) / cfg.name
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir, n = base / stamp, 1
        while run_dir.exists():
            n += 1
            run_dir = base / f"{stamp}-{n}"
    run_dir = Path(run_dir)
    if (run_dir / CKPT_DIR / STATE_FILE).exists():
        raise FileExistsError(f"{run_dir}: already holds a run; pass resume={str(run_dir)!r} to "
                              "continue it, or choose another run_dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, cfg


def _read_result(run_dir: Path) -> TrainResult:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = pd.read_csv(run_dir / "history.csv")
    val_file = run_dir / "val_predictions.csv"
    # A fixed-epoch run has no validation split and so no val_predictions.csv.
    val = pd.read_csv(val_file) if metrics.get("mode") != "fixed_epochs" else pd.DataFrame()
    return TrainResult(run_dir, run_dir / MODEL_FILE, history, val, metrics, None)
