"""medtl.train: stage schedule, losses and class weights and the training loop (prediction is
in :mod:`medtl.run.predictor`).

Submodules are imported on first use (``medtl.train.trainer``, ``medtl.train.losses`` ...), so
importing this package loads nothing heavy.
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "set_trainable": "medtl.train.stages",
    "describe_stage": "medtl.train.stages",
    "make_loss": "medtl.train.losses",
    "compute_class_weights": "medtl.train.losses",
    "train": "medtl.train.trainer",
    "TrainResult": "medtl.train.trainer",
    "predict_paths": "medtl.run.predictor",  # kept here for old callers; it lives in medtl.run
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'medtl.train' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
