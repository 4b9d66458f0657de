"""medtl.explain: where the model looks (Grad-CAM, Grad-CAM++, HiResCAM, LayerCAM, integrated
gradients, Score-CAM, occlusion), how faithful the maps are, and overlays.

The method names and kinds are in :mod:`medtl.registry`.

Names are imported lazily: the overlay helpers need no TensorFlow, the CAM methods do.

Example:
    >>> from medtl.explain import compute_cam, explain_for_original, overlay, write_png
    >>> x, geo = pipeline.load("film.dcm")
    >>> cam = compute_cam(model, x[None], method="gradcam")[0]
    >>> write_png(overlay(read_image("film.dcm"), explain_for_original(cam, geo)), "cam.png")
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "compute_cam": "medtl.explain.cam",
    "explain_for_original": "medtl.explain.cam",
    "method_for_model": "medtl.explain.cam",
    "off_film_share": "medtl.explain.cam",
    "spatial_layers": "medtl.explain.cam",
    "CAMMethod": "medtl.explain.cam",
    "GradientCAM": "medtl.explain.cam",
    "GradCAM": "medtl.explain.cam",
    "GradCAMPlusPlus": "medtl.explain.cam",
    "HiResCAM": "medtl.explain.cam",
    "LayerCAM": "medtl.explain.cam",
    "IntegratedGradients": "medtl.explain.cam",
    "ScoreCAM": "medtl.explain.cam",
    "map_grid": "medtl.explain.cam",
    "faithfulness": "medtl.explain.faithfulness",
    "faithfulness_table": "medtl.explain.faithfulness",
    "pool_faithfulness": "medtl.explain.faithfulness",
    "Occlusion": "medtl.explain.cam",
    "METHODS": "medtl.explain.cam",
    "register": "medtl.explain.cam",
    "MethodChoice": "medtl.explain.cam",
}

# Imported eagerly (no TensorFlow there): the function `overlay` shares its name with its
# module, and a lazy lookup would return the module once anything imported it.
from medtl.explain.overlay import overlay, png_bytes, read_map_png, write_map_png, write_png  # noqa: E402

__all__ = sorted([*_API, "overlay", "png_bytes", "read_map_png", "write_map_png", "write_png"])


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'medtl.explain' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
