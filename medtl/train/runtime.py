"""Hardware settings for a run: mixed precision, XLA and the distribution strategy.

One :class:`Runtime` is made per run from ``cfg.train``. The model must be built and compiled
inside :meth:`Runtime.scope`, after the dtype policy is set, so that its variables live on the
strategy's devices and its layers compute in the chosen precision.

Example:
    >>> from medtl.train.runtime import runtime_for
    >>> with runtime_for(cfg.train) as rt:
    ...     with rt.scope():
    ...         model = build_model(cfg, n_outputs=1)
    ...         model.compile(optimizer="adam", loss="bce", jit_compile=rt.jit_compile)
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import keras
import tensorflow as tf

__all__ = ["Runtime", "resolve_precision", "make_strategy", "runtime_for", "gpus_visible"]


def gpus_visible() -> int:
    """Number of GPUs TensorFlow can see."""
    return len(tf.config.list_physical_devices("GPU"))


def resolve_precision(mode: str) -> str:
    """Keras dtype policy name for ``train.mixed_precision``.

    Args:
        mode: ``auto`` (float16 compute only when a GPU is visible: on a CPU it is slower and
            gains nothing), ``on`` (always) or ``off``.

    Returns:
        ``"mixed_float16"`` or ``"float32"``.
    """
    if mode == "on":
        return "mixed_float16"
    if mode == "off":
        return "float32"
    if mode == "auto":
        return "mixed_float16" if gpus_visible() else "float32"
    raise ValueError(f"train.mixed_precision: invalid value {mode!r}; expected auto, on or off")


def make_strategy(distribute: str) -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy for ``train.distribute``.

    Args:
        distribute: ``auto`` (MirroredStrategy over all GPUs when there are several, else the
            default strategy), ``none`` (default strategy) or ``mirrored`` (MirroredStrategy over
            every GPU, or over every logical CPU device when there is no GPU).

    Returns:
        The strategy; build and compile the model inside ``strategy.scope()``.
    """
    if distribute == "none":
        return tf.distribute.get_strategy()
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    if distribute == "auto":
        return _mirrored(gpus) if len(gpus) > 1 else tf.distribute.get_strategy()
    if distribute == "mirrored":
        return _mirrored(gpus or [d.name for d in tf.config.list_logical_devices("CPU")])
    raise ValueError(f"train.distribute: invalid value {distribute!r}; expected auto, none or mirrored")


def _mirrored(devices: list[str]) -> tf.distribute.Strategy:
    on_gpu = any("GPU" in d.upper() for d in devices)
    # NCCL all-reduce exists only between GPUs; CPU replicas reduce through one device.
    ops = None if on_gpu else tf.distribute.ReductionToOneDevice()
    return tf.distribute.MirroredStrategy(devices=devices, cross_device_ops=ops)


@dataclass
class Runtime:
    """The resolved hardware settings of one run."""

    strategy: tf.distribute.Strategy
    policy: str
    jit_compile: bool

    @property
    def replicas(self) -> int:
        """Number of model replicas a batch is split across."""
        return int(self.strategy.num_replicas_in_sync)

    def scope(self) -> contextlib.AbstractContextManager:
        """Context in which to build and compile models (the strategy's scope)."""
        return self.strategy.scope()

    @property
    def strategy_name(self) -> str:
        """``MirroredStrategy`` etc., or ``default`` for no distribution."""
        name = type(self.strategy).__name__
        return "default" if name.startswith("_Default") else name

    def describe(self) -> str:
        """One line for the log, e.g. ``float32, 1 replica (default), XLA off``."""
        n = self.replicas
        return (f"{self.policy}, {n} replica{'s' if n != 1 else ''} ({self.strategy_name}), "
                f"XLA {'on' if self.jit_compile else 'off'}")

    def as_dict(self) -> dict:
        """JSON-friendly summary saved with the run's metrics."""
        return {"policy": self.policy, "replicas": self.replicas, "strategy": self.strategy_name,
                "jit_compile": self.jit_compile}


@contextlib.contextmanager
def runtime_for(train_cfg) -> Iterator[Runtime]:
    """Set the dtype policy for the duration of a run and yield its :class:`Runtime`.

    The previous global dtype policy is restored on exit, so a float16 run does not leak its
    policy into models built later in the same process (tests, notebooks, CV folds).

    Args:
        train_cfg: ``cfg.train`` (uses ``mixed_precision``, ``xla`` and ``distribute``).
    """
    previous = keras.config.dtype_policy()
    policy = resolve_precision(train_cfg.mixed_precision)
    keras.config.set_dtype_policy(policy)
    try:
        yield Runtime(make_strategy(train_cfg.distribute), policy, bool(train_cfg.xla))
    finally:
        keras.config.set_dtype_policy(previous)
