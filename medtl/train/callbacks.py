"""Keras callbacks for medtl's epoch-by-epoch training loop.

The trainer calls ``model.fit`` once per epoch (so each epoch's data and random seeds are set
from Python, which makes resume exact). Keras's own progress bar and TensorBoard callback
assume one ``fit`` per run, so these variants keep the stage's epoch count and one set of
event files across those calls.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

import keras
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from medtl.train.batchnorm import recalibrate_batchnorm

__all__ = ["EpochProgress", "EpochSummaries", "RecalibrateBatchNorm", "format_logs"]


def format_logs(logs: dict, keys: list[str] | None = None) -> str:
    """``loss 0.4123 - roc_auc 0.9310 - val_loss ...`` for the keys in ``logs``."""
    keys = keys if keys is not None else list(logs)
    return " - ".join(f"{k} {float(logs[k]):.4f}" for k in keys if k in logs)


class EpochProgress(keras.callbacks.Callback):
    """Per-epoch progress: a live bar on a terminal, else one line per epoch.

    Args:
        epochs: the stage's number of epochs (shown as ``Epoch 3/5``).
        first_epoch: the global epoch index the stage's epoch 1 corresponds to; ``fit`` is
            called with global epoch numbers so TensorBoard steps do not collide across stages.
        steps: batches per epoch, or None when unknown.
        tty: draw a live bar (True) or print one line at the end of each epoch (False).
        stream: where one-line output goes (default stdout).
    """

    def __init__(self, epochs: int, first_epoch: int, steps: int | None, tty: bool | None = None,
                 stream: TextIO | None = None, prefix: str = "") -> None:
        super().__init__()
        self.epochs = epochs
        self.first_epoch = first_epoch
        self.steps = steps
        self.tty = sys.stdout.isatty() if tty is None else tty
        self.stream = stream
        self.prefix = prefix
        self._bar: keras.utils.Progbar | None = None
        self._seen = 0
        self._t0 = 0.0

    def _n(self, epoch: int) -> int:
        return epoch - self.first_epoch + 1

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._t0 = time.perf_counter()
        if self.tty:
            print(f"{self.prefix}Epoch {self._n(epoch)}/{self.epochs}", flush=True)
            self._bar = keras.utils.Progbar(self.steps, verbose=1, unit_name="step")
            self._seen = 0

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self._bar is not None:
            self._seen = batch + 1
            self._bar.update(self._seen, list((logs or {}).items()))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        if self._bar is not None:
            self._bar.update(self.steps or self._seen, list(logs.items()), finalize=True)
            self._bar = None
            return
        seconds = time.perf_counter() - self._t0
        line = (f"{self.prefix}Epoch {self._n(epoch)}/{self.epochs} - {seconds:.1f}s - "
                f"{format_logs(logs)}")
        print(line, file=self.stream or sys.stdout, flush=True)


class EpochSummaries(keras.callbacks.Callback):
    """Epoch metrics as TensorBoard event files: ``<log_dir>/train`` and ``<log_dir>/validation``.

    Written with TensorFlow's core summary op, so logs are produced without the
    ``tensorboard`` package installed (``keras.callbacks.TensorBoard`` needs it) and one event
    file per folder serves every ``fit`` call of the run; the tags follow Keras's TensorBoard
    callback (``epoch_loss``, ``epoch_roc_auc``, ...), so ``tensorboard --logdir`` shows both
    alike. Call :meth:`close` when the run ends.
    """

    def __init__(self, log_dir: str) -> None:
        super().__init__()
        self.log_dir = log_dir
        self._writers: dict = {}

    def _writer(self, name: str):
        if name not in self._writers:
            self._writers[name] = tf.summary.create_file_writer(os.path.join(self.log_dir, name))
        return self._writers[name]

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        meta = summary_pb2.SummaryMetadata()
        meta.plugin_data.plugin_name = "scalars"
        logs = dict(logs or {})
        lr = getattr(getattr(self.model, "optimizer", None), "learning_rate", None)
        if lr is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(lr))
        for side, items in (("train", {k: v for k, v in logs.items() if not k.startswith("val_")}),
                            ("validation", {k[4:]: v for k, v in logs.items() if k.startswith("val_")})):
            if not items:
                continue
            with self._writer(side).as_default():
                for k, v in items.items():
                    tf.summary.write(f"epoch_{k}", tf.constant(float(v)), step=epoch, metadata=meta)
            self._writer(side).flush()

    def close(self) -> None:
        """Flush and close the event files."""
        for w in self._writers.values():
            w.close()
        self._writers = {}


class RecalibrateBatchNorm(keras.callbacks.Callback):
    """After an epoch's last training batch, and so before validation and the checkpoint,
    re-estimate the moving statistics of the model's trainable BatchNormalization layers
    (:func:`medtl.train.batchnorm.recalibrate_batchnorm`).

    Args:
        model: the model being trained.
        steps: batches per epoch; the recalibration runs after batch ``steps - 1``.
        max_batches: batches of training data to average the statistics over.

    Set ``batches`` to the epoch's training batches before each ``fit``. An epoch that ends
    without the recalibration (fewer batches than ``steps``) raises instead of validating a
    model with stale statistics.
    """

    def __init__(self, model: keras.Model, steps: int, max_batches: int = 50) -> None:
        super().__init__()
        self.target, self.steps, self.max_batches = model, int(steps), int(max_batches)
        self.batches = None
        self.done = False

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.done = False

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if batch == self.steps - 1:
            if self.batches is None:
                raise RuntimeError("RecalibrateBatchNorm: set .batches before fit")
            recalibrate_batchnorm(self.target, self.batches, self.max_batches)
            self.done = True

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if not self.done and not self.target.stop_training:
            raise RuntimeError(f"RecalibrateBatchNorm: epoch {epoch + 1} ended before batch {self.steps}; "
                               "BatchNormalization statistics were not re-estimated")
