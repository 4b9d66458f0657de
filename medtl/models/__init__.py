"""medtl.models: backbones (Keras applications, TF Hub) and the classifier.

Names are imported lazily so that ``import medtl.models`` does not load TensorFlow.
``set_trainable`` lives in :mod:`medtl.train.stages` (it is the stage schedule's tool) and is
re-exported here because it acts on the models built by :func:`build_model`.

Example:
    >>> from medtl.models import build_model, set_trainable
    >>> model = build_model(cfg, n_outputs=1)
    >>> set_trainable(model, 2)   # top two backbone blocks + head
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "build_model": "medtl.models.classifier",
    "load_model": "medtl.models.classifier",
    "build_backbone": "medtl.models.backbones",
    "get_backbone_spec": "medtl.models.backbones",
    "BACKBONES": "medtl.models.backbones",
    "BackbonePreprocessing": "medtl.models.backbones",
    "HubBackbone": "medtl.models.hub",
    "set_trainable": "medtl.train.stages",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'medtl.models' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
