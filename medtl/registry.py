"""The heat-map methods medtl knows: one list that config, CLI, explain and the report read.

Kept free of TensorFlow and of every other medtl module, so that :mod:`medtl.config` can take
its allowed values from here without importing :mod:`medtl.explain` (which imports the data
layer, which imports config). The implementations live in :mod:`medtl.explain.cam`; a test
checks that the two agree name for name.

Code asks this registry what *kind* a method is rather than comparing its name: a
``"gradient"`` method reads the gradients of the score (through a spatial target layer, its map
as coarse as that layer, or, where :func:`takes_target_layer` is False, at the input itself); an
``"activation"`` method reads a target layer's feature maps but no gradient, scoring the image
masked by each of them (Score-CAM); a ``"perturbation"`` method only scores altered copies of the
image (it works for any backbone and takes ``patch``/``stride``).

Example:
    >>> from medtl.registry import map_methods, method_label, is_perturbation
    >>> map_methods()
    ('gradcam', 'gradcam++', 'hirescam', 'layercam', 'intgrad', 'scorecam', 'occlusion')
    >>> method_label("gradcam++"), is_perturbation("occlusion")
    ('Grad-CAM++', True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "GRADIENT",
    "ACTIVATION",
    "PERTURBATION",
    "DEFAULT_METHOD",
    "MapMethod",
    "map_methods",
    "method_info",
    "method_kind",
    "method_label",
    "is_gradient",
    "is_perturbation",
    "takes_target_layer",
    "fallback_method",
]

MethodKind = Literal["gradient", "activation", "perturbation"]
GRADIENT: MethodKind = "gradient"
ACTIVATION: MethodKind = "activation"
PERTURBATION: MethodKind = "perturbation"
_KINDS: tuple[MethodKind, ...] = (GRADIENT, ACTIVATION, PERTURBATION)


@dataclass(frozen=True)
class MapMethod:
    """One heat-map method: its config name, kind, display label and a one-line description.

    ``layer`` says whether it reads a target layer (Grad-CAM) or not (integrated gradients,
    on the input; occlusion)."""

    name: str
    kind: MethodKind
    label: str
    description: str
    layer: bool = True


# Gradient methods first: the order is the one config errors and CLI help list them in.
_METHODS: tuple[MapMethod, ...] = (
    MapMethod("gradcam", GRADIENT, "Grad-CAM",
              "feature maps weighted by their mean gradient (Selvaraju et al. 2017)"),
    MapMethod("gradcam++", GRADIENT, "Grad-CAM++",
              "feature maps weighted by positive gradients with pixel weights "
              "(Chattopadhyay et al. 2018)"),
    MapMethod("hirescam", GRADIENT, "HiResCAM",
              "gradient times feature map summed over channels, per pixel (Draelos & Carin 2020)"),
    MapMethod("layercam", GRADIENT, "LayerCAM",
              "positive gradient times feature map summed over channels, per pixel; can fuse "
              "several layers (Jiang et al. 2021)"),
    MapMethod("intgrad", GRADIENT, "Integrated gradients",
              "input times its gradient averaged along a path from a black image, per pixel "
              "(Sundararajan et al. 2017)", layer=False),
    MapMethod("scorecam", ACTIVATION, "Score-CAM",
              "feature maps weighted by the score of the image masked by each of them "
              "(Wang et al. 2020)"),
    MapMethod("occlusion", PERTURBATION, "Occlusion",
              "drop in the score when a patch of the image is hidden (Zeiler & Fergus 2014)",
              layer=False),
)
_BY_NAME: dict[str, MapMethod] = {m.name: m for m in _METHODS}

#: The method of ``report.cam`` when none is given: Grad-CAM++ fails the model-randomisation
#: sanity check on one of the test models (tests/explain/test_cam.py).
DEFAULT_METHOD = "gradcam"


def map_methods(kind: MethodKind | None = None) -> tuple[str, ...]:
    """Names of the heat-map methods, optionally only those of one ``kind``.

    Example:
        >>> map_methods("perturbation")
        ('occlusion',)
    """
    if kind is not None and kind not in _KINDS:
        raise ValueError(f"kind={kind!r}: choose one of {', '.join(map(repr, _KINDS))}")
    return tuple(m.name for m in _METHODS if kind is None or m.kind == kind)


def method_info(name: str) -> MapMethod:
    """The registry entry for ``name``; an unknown name raises ValueError listing the known ones.

    Example:
        >>> method_info("hirescam").label
        'HiResCAM'
    """
    try:
        return _BY_NAME[name]
    except (KeyError, TypeError):  # TypeError: an unhashable value from a config file
        raise ValueError(f"heat-map method {name!r}: unknown; choose one of "
                         f"{', '.join(map_methods())}") from None


def method_kind(name: str) -> MethodKind:
    """``"gradient"``, ``"activation"`` or ``"perturbation"`` for the method ``name``."""
    return method_info(name).kind


def method_label(name: str) -> str:
    """The display label of ``name``, e.g. ``"Grad-CAM++"`` for ``"gradcam++"``."""
    return method_info(name).label


def is_gradient(name: str) -> bool:
    """True if ``name`` reads gradients of the score (of a target layer, or of the input where
    :func:`takes_target_layer` is False)."""
    return method_kind(name) == GRADIENT


def is_perturbation(name: str) -> bool:
    """True if ``name`` scores altered copies of the image (so takes ``patch``/``stride``)."""
    return method_kind(name) == PERTURBATION


def takes_target_layer(name: str) -> bool:
    """True if ``name`` reads a target layer's feature map (so accepts ``target_layer``).

    Example:
        >>> takes_target_layer("scorecam"), takes_target_layer("intgrad")
        (True, False)
    """
    return method_info(name).layer


def fallback_method() -> str:
    """The method for a model without a spatial feature map (e.g. a TF Hub backbone): the
    first perturbation method, since those need nothing but the model's scores."""
    return map_methods(PERTURBATION)[0]
