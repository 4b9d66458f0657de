"""Staged fine-tuning: which part of the model is trainable in a stage.

A stage's ``unfreeze`` is ``head`` (the classifier only), an integer N (the top N blocks of the
backbone, counted in the architecture's own block structure, see
:mod:`medtl.models.backbones`) or ``all``. In every stage the BatchNormalization layers stay
frozen, which in Keras 3 keeps them in inference mode: their moving statistics never move and
training-mode outputs equal inference-mode outputs (measured; calling the backbone with
``training=False`` alone is not enough once it is unfrozen). The exception is a backbone
built with ``model.weights: none``: trained from random weights, its BatchNormalization layers
train with their block and learn batch statistics, as they must.

Recompile the model after :func:`set_trainable`: Keras fixes the trainable set at compile time.

Example:
    >>> model = build_model(cfg, n_outputs=1)
    >>> set_trainable(model, 1)     # vgg16: block5 convolutions + classifier
    ['block5_conv1', 'block5_conv2', 'block5_conv3', 'classifier']
    >>> model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=loss)
"""

from __future__ import annotations

from typing import Union

import keras

from medtl.models.backbones import (
    BackboneSpec,
    BackbonePreprocessing,
    backbone_blocks,
    freeze_batchnorm,
    get_backbone_spec,
    walk_layers,
)

__all__ = ["set_trainable", "describe_stage", "backbone_name", "trainable_layer_names"]

Unfreeze = Union[str, int]

_TRAINABLE = keras.layers.Layer.trainable  # the property; see _set_all for why it is called directly


def _backbone(model: keras.Model) -> keras.layers.Layer:
    try:
        return model.get_layer("backbone")
    except ValueError:
        raise ValueError(
            f"set_trainable: model {model.name!r} has no layer named 'backbone'; "
            "use a model made by medtl.models.build_model"
        ) from None


def backbone_name(model: keras.Model) -> str:
    """The ``model.backbone`` value a medtl model was built with (e.g. ``resnet50``, ``hub:...``).

    It is kept in the config of the model's ``preprocess`` layer, so it survives save and load.
    """
    for layer in model.layers:
        if isinstance(layer, BackbonePreprocessing) and layer.backbone:
            return layer.backbone
    raise ValueError(
        f"model {model.name!r} has no 'preprocess' layer naming its backbone; "
        "use a model made by medtl.models.build_model"
    )


def _spec_or_none(model: keras.Model) -> BackboneSpec | None:
    name = backbone_name(model)
    return None if name.startswith("hub:") else get_backbone_spec(name)


def _check_unfreeze(unfreeze: Unfreeze) -> Unfreeze:
    if isinstance(unfreeze, str) and unfreeze.strip().isdigit():
        unfreeze = int(unfreeze)
    if isinstance(unfreeze, bool) or not (
        unfreeze in ("head", "all") or (isinstance(unfreeze, int) and unfreeze >= 1)
    ):
        raise ValueError(f"unfreeze: invalid value {unfreeze!r}; expected head, all or a number of blocks >= 1")
    return unfreeze


def is_pretrained(model: keras.Model) -> bool:
    """Whether the model's backbone started from pretrained weights (BatchNorm stays frozen)."""
    pre = next((layer for layer in model.layers if isinstance(layer, BackbonePreprocessing)), None)
    return True if pre is None else bool(getattr(pre, "pretrained", True))


def trainable_layer_names(model: keras.Model) -> list[str]:
    """Names of the layers (backbone layers included) that have weights and will train."""
    names = []
    for layer in model.layers:
        if not layer.trainable:
            continue
        for sub in walk_layers(layer) or [layer]:
            if not getattr(sub, "layers", None) and sub.trainable and sub.trainable_weights:
                names.append(sub.name)
    return names


def set_trainable(model: keras.Model, unfreeze: Unfreeze) -> list[str]:
    """Freeze and unfreeze a medtl model for one stage.

    Args:
        model: a model from :func:`medtl.models.build_model` (or loaded from its ``.keras``).
        unfreeze: ``"head"``, ``"all"`` or N, the number of top backbone blocks to train.
            N counts the architecture's blocks (VGG16: block5, block4, ...; ResNet50: conv5,
            conv4, ...); the stem below the bottom block trains only with ``"all"``.

    Returns:
        The names of the layers that now have trainable weights, in model order.

    Raises:
        ValueError: a bad value, N larger than the backbone's number of blocks, or a number with
            a TF Hub backbone (it has no blocks).

    Example:
        >>> set_trainable(model, "head")
        ['classifier']
    """
    unfreeze = _check_unfreeze(unfreeze)
    backbone = _backbone(model)
    if unfreeze in ("head", "all"):
        _set_all(backbone, unfreeze == "all")
    else:
        spec = _spec_or_none(model)
        if spec is None:
            raise ValueError(
                f"unfreeze: {unfreeze} blocks is not possible with {backbone_name(model)} "
                "(a TF Hub backbone has no block structure); use head or all"
            )
        blocks = backbone_blocks(backbone, spec)
        if unfreeze > len(blocks):
            listed = ", ".join(block.name for block, _ in blocks)
            raise ValueError(
                f"unfreeze: {unfreeze} blocks, but {spec.name} has {len(blocks)} ({listed}); "
                f"use at most {len(blocks)}, or all to also train the stem"
            )
        chosen = {id(layer) for _, layers in blocks[:unfreeze] for layer in layers}
        _TRAINABLE.fset(backbone, True)
        for layer in backbone.layers:
            _set_all(layer, id(layer) in chosen)
    if is_pretrained(model):
        freeze_batchnorm(backbone)
    for layer in model.layers:
        if layer is not backbone:
            _set_all(layer, True)
    return trainable_layer_names(model)


def _set_all(layer: keras.layers.Layer, value: bool) -> None:
    # With the TensorFlow backend, `layer.trainable = v` is skipped when layer.trainable is
    # already v (KerasAutoTrackable's `self.x = self.x` short cut), so it would not reach
    # sublayers frozen in an earlier stage. Call the setter itself on every layer.
    for sub in [layer, *walk_layers(layer)]:
        _TRAINABLE.fset(sub, value)


def describe_stage(model: keras.Model, unfreeze: Unfreeze) -> str:
    """One line saying what trains in the current stage (for the stage header).

    Call after :func:`set_trainable`.

    Example:
        >>> describe_stage(model, 2)
        'unfreeze 2: vgg16 blocks block5, block4 + head; 7 layers, 12,981,761 of 14,715,201 parameters train'
    """
    unfreeze = _check_unfreeze(unfreeze)
    name = backbone_name(model)
    if unfreeze == "head":
        what = "head only"
    elif unfreeze == "all":
        what = f"all of {name} + head"
    else:
        blocks = [block.name for block in get_backbone_spec(name).blocks[:unfreeze]]
        what = f"{name} blocks {', '.join(blocks)} + head"
    n_train = sum(int(keras.ops.size(w)) for w in model.trainable_weights)
    n_all = sum(int(keras.ops.size(w)) for w in model.weights)
    n_layers = len(trainable_layer_names(model))
    return f"unfreeze {unfreeze}: {what}; {n_layers} layers, {n_train:,} of {n_all:,} parameters train"
