"""The classifier: grey image in, class scores out, preprocessing included.

Layers of the model built by :func:`build_model`::

    image (H, W, 1) float32 in [0, 1]
    preprocess   BackbonePreprocessing: grey -> RGB, the backbone's own scaling
    backbone     a nested keras.Model (Keras application) or HubBackbone, called training=False
    pool         global average/max pooling (absent for hub feature vectors)
    dropout
    classifier   Dense, sigmoid (binary, multilabel) or softmax (multiclass), float32 output

Example:
    >>> from medtl.models import build_model
    >>> model = build_model(cfg, n_outputs=1)
    >>> model.predict(np.zeros((1, 224, 224, 1), "float32")).shape
    (1, 1)
"""

from __future__ import annotations

from pathlib import Path

import keras

from medtl.config import Config
from medtl.models.backbones import BackbonePreprocessing, build_backbone, freeze_batchnorm, get_backbone_spec
from medtl.models.hub import HubBackbone

__all__ = ["build_model", "load_model", "HUB_PREFIX"]

HUB_PREFIX = "hub:"


def _check_outputs(task: str, n_outputs: int) -> None:
    least = {"binary": 1, "multiclass": 2, "multilabel": 1}[task]
    if task == "binary" and n_outputs != 1:
        raise ValueError(f"build_model: task binary needs n_outputs=1 (one sigmoid), got {n_outputs}")
    if n_outputs < least:
        raise ValueError(f"build_model: task {task} needs n_outputs >= {least}, got {n_outputs}")


def build_model(cfg: Config, n_outputs: int) -> keras.Model:
    """Build the classifier for ``cfg``, with the backbone frozen (the ``head`` stage).

    Args:
        cfg: the run config; uses ``model.*``, ``data.image_size``, ``task`` and ``seed``.
        n_outputs: 1 for binary, the number of classes (multiclass) or labels (multilabel).

    Returns:
        A functional ``keras.Model`` taking ``(H, W, 1)`` float32 images in ``[0, 1]``. All its
        custom layers are registered, so ``keras.models.load_model`` needs no custom_objects
        (a hub backbone re-loads its SavedModel from the handle).

    Raises:
        ValueError: unknown backbone, bad weights file or an output count unfit for the task.

    Example:
        >>> cfg = load_config("configs/demo.yaml")
        >>> model = build_model(cfg, n_outputs=1)
        >>> [layer.name for layer in model.layers]
        ['image', 'preprocess', 'backbone', 'pool', 'dropout', 'classifier']
    """
    _check_outputs(cfg.task, n_outputs)
    h, w = (int(s) for s in cfg.data.image_size)
    name = cfg.model.backbone.strip()
    if name.startswith(HUB_PREFIX):
        backbone = HubBackbone(name[len(HUB_PREFIX):].strip(), name="backbone")
        mode = "unit"
    else:
        spec = get_backbone_spec(name)
        backbone = build_backbone(spec.name, cfg.model.weights, (h, w, 3))
        name, mode = spec.name, spec.preprocessing

    # A backbone trained from random weights needs its BatchNormalization to learn batch
    # statistics; a pretrained one is fine-tuned with BatchNormalization frozen in inference mode.
    pretrained = name.startswith(HUB_PREFIX) or str(cfg.model.weights).strip().lower() not in ("none", "null", "")
    inputs = keras.Input((h, w, 1), dtype="float32", name="image")
    x = BackbonePreprocessing(mode, backbone=name, pretrained=pretrained, name="preprocess")(inputs)
    x = backbone(x, training=False) if pretrained else backbone(x)
    if len(x.shape) == 4:
        pool = keras.layers.GlobalAveragePooling2D if cfg.model.pooling == "avg" else keras.layers.GlobalMaxPooling2D
        x = pool(name="pool")(x)
    x = keras.layers.Dropout(cfg.model.dropout, seed=cfg.seed, name="dropout")(x)
    outputs = keras.layers.Dense(
        n_outputs,
        activation="softmax" if cfg.task == "multiclass" else "sigmoid",
        kernel_initializer=keras.initializers.GlorotUniform(seed=cfg.seed),
        dtype="float32",  # probabilities in float32 even under mixed precision
        name="classifier",
    )(x)
    model = keras.Model(inputs, outputs, name="medtl_classifier")
    backbone.trainable = False
    if pretrained:
        freeze_batchnorm(backbone)
    return model


def load_model(path: str | Path, compile: bool = False) -> keras.Model:
    """Load a model saved by medtl (``.keras``), with medtl's custom layers registered.

    Keras finds registered classes only once their module is imported; importing this module
    does that, so prefer this to calling ``keras.models.load_model`` directly.

    Args:
        path: the ``.keras`` file.
        compile: also restore the optimizer and loss. medtl's losses and its per-block
            learning-rate optimizers (``train.block_lr_decay``) live in the layer above
            (:mod:`medtl.train.losses`, :mod:`medtl.train.block_lr`); import them first so
            Keras finds them.

    Raises:
        FileNotFoundError: no such file.

    Example:
        >>> model = load_model("runs/demo/20240101-120000/model.keras")
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file not found; give the model.keras of a medtl run")
    return keras.models.load_model(path, compile=compile)
