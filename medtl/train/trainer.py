"""Staged fine-tuning with early stopping, best-model checkpoints and exact resume.

``train(cfg)`` runs every stage of ``cfg.train.stages`` (head first, then more of the backbone)
on a patient-grouped holdout of the manifest and writes a training run folder
(``runs/<name>/<YYYYmmdd-HHMMSS>/``; every file in it is listed in :mod:`medtl.run.layout`):
the best model, its model_info.json, histories, metrics, validation predictions and ``ckpt/``,
what ``--resume`` continues from.

Each epoch is one ``model.fit`` call whose data (shuffle order, augmentation) and random
seeds (dropout) are set from ``(seed, stage, epoch)``; after it the weights, optimizer state
and early-stopping state are committed to ``ckpt/``. A run killed at any point therefore
resumes from its last completed epoch and ends with the same weights as an uninterrupted run.

Each stage ends by restoring the best weights seen so far (over all stages), so a stage that
only makes things worse leaves the model as it was; model.keras is written from the best
weights when the run ends.

With ``train.swa_epochs`` N (0: off) the run then averages the weights of the last stage's
epochs ``best - N + 1 .. best`` (fewer if the best epoch is earlier in the stage; nothing when
the best epoch is in an earlier stage or is the stage's first), re-estimates the statistics of
the BatchNorm layers that train (:mod:`medtl.train.batchnorm`; none with a pretrained backbone,
whose BatchNorm stays frozen) on training batches, and scores the average on the validation
split by ``train.monitor``. The average replaces the best weights only if it scores at least as
well as they do (both scored alike, by ``model.evaluate``); metrics.json ``swa`` records both
scores and the decision, and everything after it (model.keras, validation scores, threshold,
calibration, feature summary) uses the weights kept. The decision and the averaged weights are
committed to ``ckpt/`` before anything is saved, so a resumed run does not average again.

With ``fixed_epochs`` (one epoch count per stage) the run has no validation split: it trains
on every given image for exactly those epochs, with no monitor and no early stopping, and
model.keras holds the last epoch's weights (there is no val_predictions.csv; ``train.swa_epochs``
does not apply, as nothing could judge the average). This is how a
cross-validated recipe is retrained on all data (``evaluate.final_model: retrain``).
Checkpoints and resume work as in the default mode; the epoch counts are kept in the
checkpoint state, so a resume needs no ``fixed_epochs`` and refuses different ones.

The loop (``_Run``) calls its parts at fixed points of each stage and epoch: early stopping
(:mod:`medtl.train.early_stopping`), checkpoints (:mod:`medtl.train.checkpoint`), the console
lines and history files (:mod:`medtl.train.run_log`), over one :class:`RunState`
(:mod:`medtl.train.state`); head-only stages train on cached features
(:mod:`medtl.train.feature_cache`).

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
import random
import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import keras
import numpy as np
import pandas as pd

from medtl.config import Config, ConfigError, load_resolved, save_config
from medtl.data.manifest import load_manifest
from medtl.data.pipeline import ImagePipeline
from medtl.data.splits import assert_no_leakage, patient_holdout
from medtl.io.atomic import write_atomic, write_csv, write_json
from medtl.models import build_model, set_trainable
from medtl.models.pooled import with_pooled_features
from medtl.run.files import read_model_info, save_postprocess, score_columns, write_feature_summary, write_model_info
from medtl.run.layout import (
    CKPT_DIR, CONFIG_FILE, FEATURE_SUMMARY_FILE, HISTORY_FILE, METRICS_FILE, MODEL_FILE, STATE_FILE, VAL_PREDICTIONS,
)
from medtl.run.refusal import removed_if_refused
from medtl.run.resume import check_same_config, training_key_is_free
from medtl.run.tta import predict_dataset_views, tta_views
from medtl.stats.shift import MAX_VECTORS, build_summary
from medtl.train.batchnorm import recalibrate_batchnorm, trainable_batchnorm
from medtl.train.block_lr import block_lr_class, block_lr_multipliers, describe_block_lr
from medtl.train.callbacks import RecalibrateBatchNorm
from medtl.train.checkpoint import Checkpointer, assign_weights, save_weights
from medtl.train.early_stopping import EarlyStopping, monitor_mode
from medtl.train.feature_cache import FeatureCache, use_feature_cache
from medtl.train.losses import compute_class_weights, make_loss
from medtl.train.run_log import RunLog
from medtl.train.tracking import make_tracker
from medtl.train.runtime import runtime_for
from medtl.train.stages import is_pretrained
from medtl.train.state import RunState
from medtl.train.swa import average_weight_files, swa_window

__all__ = ["train", "TrainResult", "stage_seed", "monitor_mode"]

METRIC_NAMES = ("accuracy", "roc_auc", "pr_auc")  # compiled for every task (see _make_metrics)
SWA_FILE = "swa.weights.npz"  # in ckpt/: the kept weight average, a full snapshot


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
        val_tta: the ``predict.tta`` views the validation scores are averaged over
            (``val_tta`` in metrics.json; ``none`` for runs from before it was recorded).
    """

    run_dir: Path
    model_path: Path
    history: pd.DataFrame
    val_predictions: pd.DataFrame
    metrics: dict
    model: keras.Model | None = None
    val_tta: str = "none"


def stage_seed(seed: int, stage: int, epoch: int) -> int:
    """The random seed set at the start of ``epoch`` of ``stage`` (a pure function)."""
    return int(np.random.default_rng([seed, stage, epoch]).integers(2**31 - 1))


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
    fresh = resume is None and (run_dir is None or not Path(run_dir).exists())  # made by this call
    run_dir, cfg = _open_run(cfg, run_dir, resume)
    with removed_if_refused(run_dir, fresh, run_dir / CKPT_DIR / STATE_FILE):  # refused: no empty folder left
        run = _Run(cfg, run_dir, progress, fixed_epochs)
        res = run.execute(manifest, train_idx, val_idx)
    standalone = train_idx is None and val_idx is None and not run.fixed
    if standalone and len(res.val_predictions):
        # A run of its own (not a CV fold, which does this itself): choose evaluate.threshold and
        # fit evaluate.calibration on the validation split, so predict applies them.
        try:
            pp = save_postprocess(cfg, read_model_info(res.run_dir)["classes"], res.val_predictions, res.run_dir,
                                  tta=res.val_tta)
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
    """One training run: the loop over stages and epochs, and the data it feeds.

    Early stopping, checkpointing and the run log are parts the loop calls at named points
    (``on_stage_start``, ``on_epoch_end``, ...); the order of those calls, which is what makes
    an epoch resumable, is written out once, in :meth:`_run_stage`.
    """

    def __init__(self, cfg: Config, run_dir: Path, progress: bool,
                 fixed_epochs: Sequence[int] | None = None) -> None:
        self.cfg = cfg
        self.dir = run_dir
        self.monitor = cfg.train.monitor
        self.mode = monitor_mode(self.monitor)
        self.log = RunLog(run_dir, progress, tracker=make_tracker(cfg, run_dir))
        self.checkpoint = Checkpointer(run_dir / CKPT_DIR)
        self.state = self.checkpoint.load_state()
        self.fixed = _fixed_epochs(fixed_epochs, self.state, cfg, self.checkpoint.state_path)
        self.state.fixed_epochs = self.fixed
        # A fixed run has no monitor: no stage stops early and no best epoch is restored.
        self.stopper = EarlyStopping(self.monitor, cfg.train.patience) if self.fixed is None else None
        self.t_mark = time.perf_counter()

    def _epochs(self, s: int) -> int:
        """Epochs of stage ``s``: the configured maximum, or the fixed count."""
        return self.cfg.train.stages[s].epochs if self.fixed is None else self.fixed[s]

    # -- the run -----------------------------------------------------------------------------

    def execute(self, manifest, train_idx, val_idx) -> TrainResult:
        """Run the stages from where the checkpoint left off; save and return the result."""
        cfg = self.cfg
        if self.state.finished:
            self.log(f"{self.dir}: run already finished; nothing to resume")
            return _read_result(self.dir)
        logged = [f"{p}{name}" for p in ("val_", "") for name in ("loss", *METRIC_NAMES)]
        if self.monitor not in logged:
            raise ConfigError(f"train.monitor: {self.monitor!r} is not a logged metric; choose one of "
                              f"{', '.join(logged)}")
        self.checkpoint.on_run_start()
        self._prepare_data(manifest, train_idx, val_idx)
        if not (self.dir / CONFIG_FILE).exists():
            save_config(cfg, self.dir / CONFIG_FILE)
        with runtime_for(cfg.train) as rt:
            self.rt = rt
            with rt.scope():
                keras.utils.set_random_seed(cfg.seed)
                self.model = build_model(cfg, self.train_m.n_outputs)
            write_model_info(self.dir, cfg, self.train_m, policy=rt.policy)
            self.checkpoint.restore(self.model, self.state.weights)
            self.log.on_run_start(len(self.train_m), None if self.val_m is None else len(self.val_m),
                                  self.fixed, rt.describe())
            try:
                for s in range(self.state.stage, len(cfg.train.stages)):
                    self._run_stage(s)
            except BaseException:
                self.log.on_run_end(failed=True)  # an MLflow run is marked failed, not left running
                raise
            finally:
                self.log.close()
            return self._finish()

    # -- data --------------------------------------------------------------------------------

    def _prepare_data(self, manifest, train_idx, val_idx) -> None:
        cfg = self.cfg
        if self.fixed is not None and val_idx is not None:
            raise ValueError("train(): fixed_epochs trains without a validation split; pass val_idx=None")
        if self.fixed is None and (train_idx is None) != (val_idx is None):
            raise ValueError("train(): give both train_idx and val_idx, or neither")
        self.pipeline = ImagePipeline(cfg)
        if manifest is None:
            manifest = load_manifest(cfg)
            for note in manifest.notes:  # e.g. label names read as no finding: said even when quiet
                self.log.note(f"Note: {note}")
        if self.fixed is None:
            self._split_data(manifest, train_idx, val_idx)
        else:
            idx = np.arange(len(manifest)) if train_idx is None else train_idx
            self.train_m, self.val_m = self.pipeline.prepare(manifest.subset(idx)), None
            if len(self.train_m) == 0:
                raise ValueError("train(): no training images; give a non-empty train_idx")
        listed = self.pipeline.save_skipped(self.dir)
        if listed:  # said even when quiet, so no file is left out unannounced
            self.log.note(f"Skipped {len(self.pipeline.skipped)} unreadable file(s) (data.on_error: skip); "
                          f"listed in {listed}")
        self.features = FeatureCache(self.pipeline, self.train_m, self.val_m, cfg.train.batch_size, cfg.seed,
                                     self.log)

    def _split_data(self, manifest, train_idx, val_idx) -> None:
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

    def _val_dataset(self):
        if self.val_m is None:
            return None
        if getattr(self, "_val_ds", None) is None:
            self._val_ds = self.pipeline.dataset(self.val_m, training=False)
        return self._val_ds

    # -- one stage ---------------------------------------------------------------------------

    def _run_stage(self, s: int) -> None:
        """Train stage ``s`` epoch by epoch, from where the state left it.

        After each epoch's ``fit``: early stopping judges it, the checkpointer saves it, the log
        records it, and the commit makes it count. The commit comes last, so a run killed at
        any point resumes from a complete epoch.
        """
        cfg, st, state, epochs = self.cfg, self.cfg.train.stages[s], self.state, self._epochs(s)
        cached = self._set_trainable(s)
        n_params = int(sum(np.prod(v.shape) for v in self.model.trainable_weights))
        summary = self.log.on_stage_start(state, s, st, len(cfg.train.stages), epochs, n_params, cached,
                                          monitored=self.stopper is not None)
        block_lr = describe_block_lr(self.model, st.unfreeze, st.lr, cfg.train.block_lr_decay)
        if block_lr:
            self.log(block_lr)
        fit_model, epoch_data, val_ds = self._stage_inputs(cached)
        steps = math.ceil(len(self.train_m) / cfg.train.batch_size)
        self._compile(fit_model, s, steps)
        self.checkpoint.on_stage_start(state, s, self.model, keep_epochs=self._swa_epochs(s))
        if self.stopper is not None:
            self.stopper.on_stage_start(state)
        callbacks = self.log.callbacks(epochs, state.global_epoch - state.epoch, steps)
        recalibrate = self._recalibration(cached, steps)
        if recalibrate is not None:
            callbacks.append(recalibrate)

        for e in range(state.epoch, epochs):
            gid = state.global_epoch
            self._reseed(s, e)
            t0 = time.perf_counter()
            if recalibrate is not None:
                recalibrate.batches = epoch_data(gid)
            hist = fit_model.fit(epoch_data(gid), validation_data=val_ds, initial_epoch=gid, epochs=gid + 1,
                                 shuffle=False, verbose=0, callbacks=callbacks)
            fit_seconds = time.perf_counter() - t0
            logs = {k: float(v[-1]) for k, v in hist.history.items()}
            verdict = self.stopper.on_epoch_end(state, s, e, logs, summary, epochs) if self.stopper else None
            improved = None if verdict is None else verdict.improved
            stop = verdict is not None and verdict.stop
            self.checkpoint.on_epoch_end(state, s, e, self.model, fit_model,
                                         end_of_stage=stop or e + 1 == epochs, improved=improved)
            self.log.on_epoch_end(state, s, e, logs, summary, lr=_current_lr(fit_model),
                                  seconds=time.perf_counter() - t0, fit_seconds=fit_seconds, best=improved)
            state.global_epoch = gid + 1
            self._commit()
            if stop:
                self.log.on_early_stop(s, self.monitor, cfg.train.patience)
                break

    def _swa_epochs(self, s: int) -> int:
        """``train.swa_epochs`` for the last stage of a validated run (whose epochs are kept
        for the average), else 0."""
        last = s == len(self.cfg.train.stages) - 1
        return self.cfg.train.swa_epochs if last and self.fixed is None else 0

    def _set_trainable(self, s: int) -> bool:
        """Unfreeze what stage ``s`` trains; True if it trains on cached backbone features."""
        st = self.cfg.train.stages[s]
        set_trainable(self.model, st.unfreeze)
        if st.unfreeze != "all" and not is_pretrained(self.model):
            warnings.warn(
                f"train.stages[{s}].unfreeze is {st.unfreeze!r} but model.weights is none: the frozen part of "
                "the backbone keeps its random weights and initial BatchNorm statistics, so its features carry "
                "little signal; train a random backbone with unfreeze: all, or give pretrained weights",
                RuntimeWarning, stacklevel=3)  # the line in execute(), as before
        return use_feature_cache(self.cfg, st)

    def _stage_inputs(self, cached: bool):
        """(model to fit, global epoch -> training dataset, validation dataset) for a stage."""
        if cached:
            return self.features.stage_inputs(self.model)
        self.features.clear()  # this stage may change the backbone: cached features go stale
        return (self.model,
                lambda gid: self.pipeline.dataset(self.train_m, training=True, epoch=gid),
                self._val_dataset())

    def _compile(self, fit_model: keras.Model, s: int, steps: int) -> None:
        """Compile for stage ``s``: a fresh optimizer (restored when resuming mid-stage)."""
        cfg, st = self.cfg, self.cfg.train.stages[s]
        if self.fixed is not None:
            # A fixed run keeps the stage's schedule length, so a cosine decay follows the same
            # curve as the runs whose best epoch counts it reuses (and stops where they peaked).
            st = replace(st, epochs=max(st.epochs, self._epochs(s)))
        # Class weights come from the training split only, never from validation.
        class_weights = compute_class_weights(
            self.train_m.targets(), cfg.train.loss.class_weight, self.train_m.classes, task=cfg.task)
        # Per-block rates only where the backbone trains (never for the cached head model).
        multipliers = block_lr_multipliers(self.model, st.unfreeze, cfg.train.block_lr_decay)
        with self.rt.scope():
            fit_model.compile(
                optimizer=_make_optimizer(st, steps, multipliers),
                loss=make_loss(cfg.train.loss, cfg.task, class_weights),
                metrics=_make_metrics(cfg.task, self.train_m.n_outputs),
                jit_compile=self.rt.jit_compile,
            )
            self.checkpoint.restore_optimizer(fit_model, self.state)

    def _recalibration(self, cached: bool, steps: int) -> RecalibrateBatchNorm | None:
        """A backbone trained from random weights: its BatchNormalization statistics are
        re-estimated for each epoch's weights before validation (see medtl.train.batchnorm)."""
        if cached or not trainable_batchnorm(self.model):
            return None
        return RecalibrateBatchNorm(self.model, steps)

    def _commit(self) -> None:
        """Make the epoch durable: state.json, then the history CSVs, then drop stale ckpt files.

        (tests/train/conftest.py wraps this method to kill a run right after a commit.)
        """
        now = time.perf_counter()
        self.state.elapsed_s += now - self.t_mark
        self.t_mark = now
        self.checkpoint.save_state(self.state)
        self.log.write_histories(self.state.history)
        self.checkpoint.prune(self.state)

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

    # -- end of run --------------------------------------------------------------------------

    def _finish(self) -> TrainResult:
        if self.fixed is not None:
            return self._finish_fixed()
        state = self.state
        if not state.best_weights:
            raise RuntimeError(f"{self.dir}: no epoch completed; nothing to save")
        self.checkpoint.restore(self.model, state.best_weights)
        swa = self._weight_average() if self.cfg.train.swa_epochs else None
        _save_model(self.model, self.dir / MODEL_FILE)
        self._save_feature_summary()
        val = self._val_predictions()
        write_csv(self.dir / VAL_PREDICTIONS, val)
        state.elapsed_s += time.perf_counter() - self.t_mark
        self.t_mark = time.perf_counter()
        metrics = {
            "monitor": self.monitor,
            "mode": self.mode,
            "best": {"value": state.best_logs.get(self.monitor), **(state.best_at or {})},
            "best_val_metrics": {k: v for k, v in state.best_logs.items() if k.startswith("val_")},
            "best_train_metrics": {k: v for k, v in state.best_logs.items() if not k.startswith("val_")},
            **self._run_summary(validated=True),
            "val_tta": self.cfg.predict.tta,  # the views val_predictions.csv is averaged over
        }
        if swa is not None:
            metrics["swa"] = {k: v for k, v in swa.items() if k not in ("weights", "line")}
        write_json(self.dir / METRICS_FILE, metrics)
        state.finished = True
        self._commit()
        self.log.on_run_end()
        which = "the weight average" if swa and swa.get("kept") else "the best weights"
        self.log(f"Best {self.monitor} {metrics['best']['value']:.4f} (stage {state.best_at['stage']}, "
                 f"epoch {state.best_at['epoch']}); saved {which} to {self.dir / MODEL_FILE}")
        return TrainResult(self.dir, self.dir / MODEL_FILE, pd.DataFrame(state.history), val,
                           metrics, self.model, val_tta=self.cfg.predict.tta)

    def _weight_average(self) -> dict:
        """Apply ``train.swa_epochs`` to the model, which holds the best weights: decide once
        (:meth:`_decide_average`), commit the decision, and load the average if it was kept.

        Returns:
            The record of metrics.json ``swa`` (plus the ckpt file of a kept average).
        """
        state = self.state
        if state.swa is None:
            state.swa = self._decide_average()
            state.swa_saved = []  # the epochs' own files are not needed any more
            self._commit()  # a run resumed from here finds the decision, not the epoch files
        elif state.swa.get("kept"):
            self.checkpoint.restore(self.model, [state.swa["weights"]])
        self.log(state.swa["line"])
        return state.swa

    def _decide_average(self) -> dict:
        """Average the window's epochs, re-estimate trainable BatchNorm statistics, score the
        average and the best weights alike (:meth:`_score`), and keep the average if it scores at
        least as well (a tie keeps it). Leaves the model holding the weights kept."""
        cfg, state, n = self.cfg, self.state, self.cfg.train.swa_epochs
        last = len(cfg.train.stages) - 1
        window, why = swa_window(state.swa_saved, state.best_at, last + 1, n)
        if not window:
            return {"swa_epochs": n, "kept": False, "skipped": why, "line": f"No weight average (train.swa_epochs "
                    f"{n}): {why}"}
        # A resumed run can get here without running the last stage: its trainable set (which
        # BatchNorm layers update) and compiled loss and metrics come from that stage.
        set_trainable(self.model, cfg.train.stages[last].unfreeze)
        steps = math.ceil(len(self.train_m) / cfg.train.batch_size)
        self._compile(self.model, last, steps)
        best_value = self._score()
        self.checkpoint.restore(self.model, state.best_weights[:1])  # the stage's start: frozen parts
        assign_weights(self.model, average_weight_files([self.checkpoint.dir / w["file"] for w in window]),
                       "the weight average")
        n_bn = len(trainable_batchnorm(self.model))
        if n_bn:
            self._reseed(len(cfg.train.stages), 0)  # dropout in the forward passes, as at an epoch
            recalibrate_batchnorm(self.model, self.pipeline.dataset(self.train_m, training=True,
                                                                    epoch=state.global_epoch))
        value = self._score()
        kept = _at_least_as_good(value, best_value, self.mode)
        epochs = f"{window[0]['epoch']}-{window[-1]['epoch']}"
        record = {
            "swa_epochs": n, "stage": last + 1, "epochs": [w["epoch"] for w in window],
            "global_epochs": [w["global_epoch"] for w in window], "value": value, "best_value": best_value,
            "kept": kept, "batchnorm_recalibrated": n_bn,
            "line": (f"SWA of epochs {epochs} of stage {last + 1}: {self.monitor} {value:.4f} vs best "
                     f"{best_value:.4f}: {'kept' if kept else 'not kept'}"),
        }
        if kept:
            save_weights(self.model, self.checkpoint.dir / SWA_FILE)
            record["weights"] = SWA_FILE
        else:
            self.checkpoint.restore(self.model, state.best_weights)
        return record

    def _score(self) -> float:
        """The model's ``train.monitor`` by ``model.evaluate`` on the split it names (training
        metrics: the training images without augmentation)."""
        if self.monitor.startswith("val_"):
            ds, name = self._val_dataset(), self.monitor[len("val_"):]
        else:
            ds, name = self.pipeline.dataset(self.train_m, training=False), self.monitor
        logs = self.model.evaluate(ds, verbose=0, return_dict=True)
        return float(logs[name])

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
        if self.cfg.train.swa_epochs:
            self.log.note(f"Note: train.swa_epochs {self.cfg.train.swa_epochs} is not applied to a run with fixed "
                          "epochs (no validation split to judge the average by); the last epoch's weights are kept")
        self.checkpoint.restore(self.model, state.weights)
        _save_model(self.model, self.dir / MODEL_FILE)
        self._save_feature_summary()
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
        write_json(self.dir / METRICS_FILE, metrics)
        state.finished = True
        self._commit()
        self.log.on_run_end()
        self.log(f"Trained {state.global_epoch} epochs ({', '.join(map(str, self.fixed))} per stage) without "
                 f"validation; saved the last epoch's weights to {self.dir / MODEL_FILE}")
        return TrainResult(self.dir, self.dir / MODEL_FILE, pd.DataFrame(state.history), pd.DataFrame(),
                           metrics, self.model)

    def _save_feature_summary(self) -> None:
        """Write feature_summary.npz: up to MAX_VECTORS training films (one per patient first) in
        the saved model's pooled feature space, with training-time preprocessing and no
        augmentation; what ``medtl evaluate``/``predict`` measure shift against (medtl.stats.shift).
        A model without pooled features gets no summary, and a note."""
        m = self.train_m
        try:
            dual = with_pooled_features(self.model)
        except ValueError as exc:
            self.log.note(f"Note: no {FEATURE_SUMMARY_FILE} ({exc}); evaluate and predict will not measure shift")
            return
        idx = _one_film_per_patient_first(m.df["patient_id"].astype(str).to_numpy(), MAX_VECTORS, self.cfg.seed)
        if len(idx) < 3:
            self.log.note(f"Note: no {FEATURE_SUMMARY_FILE} (fewer than 3 training films)")
            return
        sub = m.subset(np.sort(idx))
        images = self.pipeline.dataset(sub, training=False).map(lambda x, y: x)
        feats = np.asarray(dual.predict(images, verbose=0)[1], dtype=np.float32)
        try:
            summary = build_summary(feats, sub.df["patient_id"].astype(str).to_numpy(), seed=self.cfg.seed)
        except ValueError as exc:  # e.g. a single training patient: no reference distances
            self.log.note(f"Note: no {FEATURE_SUMMARY_FILE} ({exc})")
            return
        write_feature_summary(self.dir, summary)

    def _val_predictions(self) -> pd.DataFrame:
        """The best model's validation scores, averaged over the ``predict.tta`` views: the
        threshold and calibrator are chosen on these, so they must be the scores predict,
        evaluate and the CV test folds apply them to (one view: ``model.predict`` exactly)."""
        ds = self._val_dataset()
        scores = predict_dataset_views(self.model, ds.map(lambda x, y: x), tta_views(self.cfg.predict.tta))
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
# Compile helpers


def _at_least_as_good(value: float, best: float, mode: str) -> bool:
    """``value`` is as good as ``best`` or better by the monitor's mode; NaN is never."""
    if math.isnan(value):
        return False
    if math.isnan(best):
        return True
    return value >= best if mode == "max" else value <= best


def _make_optimizer(st, steps_per_epoch: int, lr_multipliers: dict[int, float] | None = None
                    ) -> keras.optimizers.Optimizer:
    """The stage's optimizer; with ``lr_multipliers`` (``{id(variable): multiplier}``, from
    :func:`medtl.train.block_lr.block_lr_multipliers`) a subclass with per-variable rates, else
    the plain Keras class."""
    lr: Any = st.lr
    if st.schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(st.lr, decay_steps=max(1, steps_per_epoch * st.epochs))
    wd = st.weight_decay or None
    if st.optimizer == "adam":
        cls, kwargs = keras.optimizers.Adam, dict(weight_decay=wd)
    elif st.optimizer == "adamw":
        cls, kwargs = keras.optimizers.AdamW, dict(weight_decay=st.weight_decay)
    elif st.optimizer == "sgd":
        cls, kwargs = keras.optimizers.SGD, dict(momentum=0.9, nesterov=True, weight_decay=wd)
    elif st.optimizer == "rmsprop":
        cls, kwargs = keras.optimizers.RMSprop, dict(weight_decay=wd)
    else:
        raise ConfigError(f"train.stages.optimizer: invalid value {st.optimizer!r}; expected adam, adamw, sgd or "
                          "rmsprop")
    if lr_multipliers:
        return block_lr_class(cls)(lr, lr_multipliers=lr_multipliers, **kwargs)
    return cls(lr, **kwargs)


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


# --------------------------------------------------------------------------------------------
# Checkpoints and files


def _save_model(model: keras.Model, path: Path) -> None:
    # The temporary name keeps the .keras suffix, by which Keras chooses the format.
    write_atomic(path, model.save)


def _one_film_per_patient_first(patients: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Up to ``n`` row positions in random order, every patient's first film before any second."""
    order = np.random.default_rng([seed, 31]).permutation(len(patients))
    rank = pd.Series(patients[order]).groupby(patients[order]).cumcount().to_numpy()
    return order[np.argsort(rank, kind="stable")][:n]


def _fixed_epochs(given: Sequence[int] | None, state: RunState, cfg: Config, state_path: Path) -> list[int] | None:
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
        saved = path / CONFIG_FILE
        if not saved.exists():
            raise FileNotFoundError(f"{path}: not a medtl run folder (no config.yaml); "
                                    "pass the folder printed when the run started")
        if run_dir is not None and Path(run_dir).resolve() != path.resolve():
            raise ValueError(f"train(): run_dir {run_dir} and resume {resume} differ; give one of them")
        old = load_resolved(saved)
        if cfg is None:
            return path, old
        check_same_config(saved, old, cfg, training_key_is_free, "the config differs from the run being resumed in",
                          "{key} ({old!r} -> {new!r})", "resume with the same config, or start a new run")
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
    metrics = json.loads((run_dir / METRICS_FILE).read_text())
    history = pd.read_csv(run_dir / HISTORY_FILE)
    val_file = run_dir / VAL_PREDICTIONS
    # A fixed-epoch run has no validation split and so no val_predictions.csv.
    val = pd.read_csv(val_file) if metrics.get("mode") != "fixed_epochs" else pd.DataFrame()
    # Runs finished before val_tta was recorded scored their validation split on one view.
    return TrainResult(run_dir, run_dir / MODEL_FILE, history, val, metrics, None,
                       val_tta=str(metrics.get("val_tta") or "none"))
