"""medtl: train radiology classifiers from small clinical datasets.

The public API is imported lazily so that ``import medtl`` (and worker processes that only
decode images) never pays for, or initialises, TensorFlow.

Example:
    >>> import medtl
    >>> csv = medtl.make_sample_data("sample_data", n_patients=30)     # synthetic DICOM films
    >>> medtl.write_starter_config(csv, "my.yaml")                     # what `medtl init` does
    >>> cfg = medtl.load_config("configs/demo.yaml", ["evaluate.folds=2"])
    >>> img = medtl.read_image("sample_data/images/P0001_1.dcm")      # float32 (H, W) in [0, 1]
    >>> manifest = medtl.load_manifest(cfg)                            # files, labels, patients
    >>> result = medtl.train(cfg)                                      # one run, staged fine-tuning
    >>> run = medtl.run_cv(cfg)                                        # patient-grouped k-fold CV
    >>> print(medtl.format_cv(medtl.merge_cv(run)))                    # pooled metrics with CIs
    >>> maps = medtl.compute_cam(result.model, x, method="gradcam")    # x: (N, H, W, 1) in [0, 1]
    >>> medtl.write_report(run, "report.html")                         # self-contained HTML

``medtl.train`` is both the training function (``medtl.train(cfg)``) and the ``medtl.train``
sub-package (``medtl.train.losses`` ...): see :class:`_CallableTrainPackage`.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

_API = {
    "load_config": "medtl.config",
    "Config": "medtl.config",
    "ConfigError": "medtl.config",
    "write_starter_config": "medtl.init",
    "read_image": "medtl.io",
    "read_dicom": "medtl.io",
    "read_header": "medtl.io",
    "ImageReadError": "medtl.io",
    "make_sample_data": "medtl.data.synthetic",
    "load_manifest": "medtl.data",
    "ImagePipeline": "medtl.data.pipeline",
    "patient_kfold": "medtl.data.splits",
    "patient_holdout": "medtl.data.splits",
    "build_model": "medtl.models",
    "set_trainable": "medtl.models",
    "train": "medtl.train.trainer",
    "predict_paths": "medtl.run.predictor",
    "run_cv": "medtl.evaluate.cv",
    "merge_cv": "medtl.evaluate.cv",
    "format_cv": "medtl.evaluate.cv",
    "compute_cam": "medtl.explain.cam",
    "write_report": "medtl.report.html",
}

__all__ = sorted(_API) + ["__version__"]


class _CallableTrainPackage(types.ModuleType):
    """The ``medtl.train`` sub-package, callable as :func:`medtl.train.trainer.train`.

    The public function ``medtl.train`` and the sub-package share a name, and Python binds a
    sub-package on its parent when it is first imported (by anyone, e.g. ``run_cv``), which
    would replace the function with the package. Making the package itself callable keeps
    ``medtl.train(cfg)`` and ``medtl.train.losses`` both working whatever was imported first.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from medtl.train.trainer import train

        return train(*args, **kwargs)


class _Medtl(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        if name == "train" and isinstance(value, types.ModuleType):
            value.__class__ = _CallableTrainPackage
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Medtl


def __getattr__(name: str) -> Any:
    if name == "train":
        return importlib.import_module("medtl.train")  # bound (and made callable) by _Medtl
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'medtl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
