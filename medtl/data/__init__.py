"""medtl.data: manifests, patient-grouped splits, resizing, the image cache and tf.data pipeline.

Names are imported on first use, so ``import medtl.data.cache`` in a decoding worker process
never loads TensorFlow (only :mod:`medtl.data.pipeline` imports it).

Example:
    >>> from medtl.data import load_manifest, patient_kfold, ImagePipeline
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DataError": "manifest",
    "Manifest": "manifest",
    "load_manifest": "manifest",
    "LeakageError": "splits",
    "assert_no_leakage": "splits",
    "patient_holdout": "splits",
    "patient_kfold": "splits",
    "Geometry": "resize",
    "letterbox": "resize",
    "ImageCache": "cache",
    "build_augmenter": "augment",
    "ImagePipeline": "pipeline",
    "InspectReport": "inspect",
    "format_report": "inspect",
    "inspect_data": "inspect",
    "make_sample_data": "synthetic",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'medtl.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"medtl.data.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
