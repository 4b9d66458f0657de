"""medtl: train radiology classifiers from small clinical datasets.

Every ``medtl`` command is a function of the same name and arguments (:mod:`medtl.api`):
``inspect``, ``init``, ``train``, ``cv``, ``predict``, ``evaluate``, ``compare``, ``explain``
and ``report``; the building blocks below them (``load_config``, ``run_cv``, ``compute_cam``
...) are public too. Names are imported lazily so that ``import medtl`` (and worker processes
that only decode images) never pays for, or initialises, TensorFlow.

Example:
    >>> import medtl
    >>> csv = medtl.make_sample_data("sample_data", n_patients=30)     # synthetic DICOM films
    >>> medtl.inspect(csv).ok                                          # medtl inspect
    True
    >>> medtl.init(csv, out="my.yaml")                                 # medtl init
    >>> result = medtl.train("my.yaml", overrides=["evaluate.folds=2"])  # medtl train
    >>> run = medtl.cv("my.yaml", progress=False)                      # medtl cv
    >>> print(medtl.format_cv(medtl.cv(merge=run)))                    # medtl cv --merge RUN
    >>> df = medtl.predict(run, ["new_films/"])                        # medtl predict
    >>> medtl.explain(run, ["sample_data/images/P0001_1.dcm"], out="cams/")  # medtl explain
    >>> medtl.report(run)                                              # medtl report

``medtl.train``, ``medtl.evaluate``, ``medtl.explain``, ``medtl.report`` and ``medtl.init`` are
both the command's function (``medtl.train(cfg)``) and the sub-package or module of that name
(``medtl.train.losses``, ``medtl.evaluate.cv`` ...): see :class:`_CommandModule`.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

#: The commands' functions, in medtl.api. Each of these names is also a sub-package or module.
_COMMAND_MODULES = ("train", "evaluate", "explain", "report", "init")
_COMMANDS = ("inspect", "init", "train", "cv", "predict", "evaluate", "compare", "explain", "report",
             "deid_check", "export", "localise")

_API = {
    **{name: "medtl.api" for name in _COMMANDS if name not in _COMMAND_MODULES},
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
    "predict_paths": "medtl.run.predictor",
    "run_cv": "medtl.evaluate.cv",
    "merge_cv": "medtl.evaluate.cv",
    "format_cv": "medtl.evaluate.cv",
    "compute_cam": "medtl.explain.cam",
    "explain_for_original": "medtl.explain.cam",
    "overlay": "medtl.explain.overlay",
    "write_report": "medtl.report.html",
}

__all__ = sorted([*_API, *_COMMAND_MODULES]) + ["__version__"]


class _CommandModule(types.ModuleType):
    """A sub-package or module of medtl that is also callable as the command of its name.

    ``medtl.train`` is the function :func:`medtl.api.train` and the sub-package
    ``medtl.train``; Python binds a sub-package on its parent when it is first imported (by
    anyone, e.g. ``run_cv`` imports ``medtl.train.trainer``), which would replace the function
    with the package. Making the module itself callable keeps ``medtl.train(cfg)`` and
    ``medtl.train.losses`` both working whatever was imported first. The same holds for
    ``evaluate``, ``explain``, ``report`` and ``init``.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        command = getattr(importlib.import_module("medtl.api"), self.__name__.rpartition(".")[2])
        return command(*args, **kwargs)


_CallableTrainPackage = _CommandModule  # its former name, for callers that referred to it


def _callable(module: types.ModuleType) -> types.ModuleType:
    # Only plain modules: another ModuleType subclass has behaviour that __class__ would drop.
    if type(module) is types.ModuleType:
        module.__class__ = _CommandModule
    return module


class _Medtl(types.ModuleType):
    """``medtl`` itself: makes each command's module callable whenever it is bound here."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _COMMAND_MODULES and isinstance(value, types.ModuleType) and value.__name__ == f"medtl.{name}":
            _callable(value)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Medtl


def __getattr__(name: str) -> Any:
    if name in _COMMAND_MODULES:
        return _callable(importlib.import_module(f"medtl.{name}"))  # bound (and made callable) by _Medtl
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'medtl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
