"""medtl: train radiology classifiers from small clinical datasets.

The public API is imported lazily so that ``import medtl`` (and worker processes that only
decode images) never pays for, or initialises, TensorFlow.

Example:
    >>> import medtl
    >>> cfg = medtl.load_config("configs/demo.yaml")
    >>> img = medtl.read_image("sample_data/images/P0001_1.dcm")  # float32 (H, W) in [0, 1]
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "load_config": "medtl.config",
    "Config": "medtl.config",
    "ConfigError": "medtl.config",
    "read_image": "medtl.io",
    "read_dicom": "medtl.io",
    "read_header": "medtl.io",
    "ImageReadError": "medtl.io",
    "load_manifest": "medtl.data",
    "ImagePipeline": "medtl.data.pipeline",
    "patient_kfold": "medtl.data.splits",
    "patient_holdout": "medtl.data.splits",
    "build_model": "medtl.models",
    "set_trainable": "medtl.models",
    "train": "medtl.train.trainer",
    "predict_paths": "medtl.train.predict",
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'medtl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
