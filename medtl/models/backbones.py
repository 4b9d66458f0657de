"""Registry of Keras-application backbones: constructor, preprocessing and block structure.

Each backbone knows three things medtl needs:

* how to build it headless (``include_top=False``) with ImageNet weights, no weights or a local
  weights file;
* its own input preprocessing, done by :class:`BackbonePreprocessing` inside the saved model so
  prediction can never preprocess differently from training;
* its block structure, top block first, as layer-name prefixes of the architecture's own
  stages (VGG16 ``block5``, ``block4`` ...; ResNet50 ``conv5``, ``conv4`` ...). Staged
  fine-tuning unfreezes the top N of these blocks. Layers below the bottom block (the stem) are
  only unfrozen by ``unfreeze: all``.

Example:
    >>> from medtl.models.backbones import build_backbone, get_backbone_spec
    >>> base = build_backbone("vgg16", "none", (224, 224, 3))
    >>> [b.name for b in get_backbone_spec("vgg16").blocks]
    ['block5', 'block4', 'block3', 'block2', 'block1']
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras
from keras import ops

__all__ = [
    "BACKBONES",
    "Block",
    "BackboneSpec",
    "BackbonePreprocessing",
    "get_backbone_spec",
    "build_backbone",
    "backbone_blocks",
    "walk_layers",
    "freeze_batchnorm",
]

PREPROCESS_MODES = ("caffe", "tf", "torch", "none", "unit")
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Block:
    """One unfreezable block: the layers whose names start with one of ``prefixes``."""

    name: str
    prefixes: tuple[str, ...]

    def contains(self, layer_name: str) -> bool:
        """True when ``layer_name`` belongs to this block."""
        return layer_name.startswith(self.prefixes)


@dataclass(frozen=True)
class BackboneSpec:
    """How to build, preprocess for and unfreeze one Keras application.

    Attributes:
        name: registry name (``model.backbone`` in the config).
        constructor: the ``keras.applications`` function.
        preprocessing: a :class:`BackbonePreprocessing` mode.
        blocks: the architecture's blocks, top first.
    """

    name: str
    constructor: Callable[..., keras.Model]
    preprocessing: str
    blocks: tuple[Block, ...]


def _numbered(stem: str, top: int, bottom: int, extra_top: tuple[str, ...] = (), sep: str = "_") -> tuple[Block, ...]:
    """Blocks ``{stem}{top}`` down to ``{stem}{bottom}``; ``extra_top`` joins the top block."""
    blocks = []
    for i in range(top, bottom - 1, -1):
        prefixes = (f"{stem}{i}{sep}",) + (extra_top if i == top else ())
        blocks.append(Block(f"{stem}{i}", prefixes))
    return tuple(blocks)


_A = keras.applications


def small_cnn(include_top: bool = False, weights: str | None = None, input_shape=(128, 128, 3), **_) -> keras.Model:
    """A four-block VGG-style CNN (about 0.3 M parameters) for demos, tests and tiny data.

    It has no pretrained weights; it exists so that the demo and the test suite can train a
    real network in seconds on a CPU. Blocks are named ``cnn_block1`` .. ``cnn_block4``.
    """
    if include_top:
        raise ValueError("smallcnn: include_top is not supported (medtl adds its own head)")
    if weights not in (None, "none"):
        raise ValueError(
            "model.weights: smallcnn has no pretrained (imagenet) weights; use none or a weights file"
        )
    inputs = keras.Input(shape=tuple(input_shape))
    x = inputs
    for i, width in enumerate((16, 32, 64, 128), start=1):
        for j in (1, 2):
            x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"cnn_block{i}_conv{j}")(x)
            # momentum 0.9: moving statistics settle within the few steps of a tiny data set
            x = keras.layers.BatchNormalization(momentum=0.9, name=f"cnn_block{i}_bn{j}")(x)
            x = keras.layers.Activation("relu", name=f"cnn_block{i}_relu{j}")(x)
        if i < 4:
            x = keras.layers.MaxPooling2D(name=f"cnn_block{i}_pool")(x)
    return keras.Model(inputs, x, name="smallcnn")


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec("vgg16", _A.VGG16, "caffe", _numbered("block", 5, 1)),
        # No pretrained weights: for the demo, tests and very small data sets.
        BackboneSpec("smallcnn", small_cnn, "unit", _numbered("cnn_block", 4, 1)),
        BackboneSpec("resnet50", _A.ResNet50, "caffe", _numbered("conv", 5, 2)),
        # post_bn/post_relu follow the last pre-activation unit of conv5.
        BackboneSpec("resnet50v2", _A.ResNet50V2, "tf", _numbered("conv", 5, 2, ("post_",))),
        # A transition layer ("poolN") feeds dense block N+1, like the strided first unit of a
        # ResNet stage, so it belongs to that block. The final "bn"/"relu" join conv5.
        BackboneSpec(
            "densenet121",
            _A.DenseNet121,
            "torch",
            (
                Block("conv5", ("conv5_", "pool4_", "bn", "relu")),
                Block("conv4", ("conv4_", "pool3_")),
                Block("conv3", ("conv3_", "pool2_")),
                Block("conv2", ("conv2_",)),
            ),
        ),
        # Sub-blocks are block7a, block6a..block6d, ...: the stage number is the block.
        BackboneSpec("efficientnetb0", _A.EfficientNetB0, "none", _numbered("block", 7, 1, ("top_",), sep="")),
        # block_1 .. block_16 plus the first inverted-residual unit, named expanded_conv.
        BackboneSpec(
            "mobilenetv2",
            _A.MobileNetV2,
            "tf",
            _numbered("block_", 16, 1, ("Conv_1", "out_relu")) + (Block("expanded_conv", ("expanded_conv_",)),),
        ),
    )
}


def get_backbone_spec(name: str) -> BackboneSpec:
    """The registry entry for ``name`` (case-insensitive).

    Raises:
        ValueError: unknown name; the message lists the known ones.
    """
    spec = BACKBONES.get(str(name).lower())
    if spec is None:
        known = ", ".join(BACKBONES)
        raise ValueError(
            f"model.backbone: unknown backbone {name!r}; use one of {known} or hub:<handle or SavedModel folder>"
        )
    return spec


def _resolve_weights(name: str, weights: str | None) -> str | Path | None:
    text = "none" if weights is None else str(weights).strip()
    if text.lower() == "imagenet":
        return "imagenet"
    if text.lower() in ("none", "null", ""):
        return None
    path = Path(text).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"model.weights: {path} not found; give imagenet, none or the path of a weights file for {name}"
        )
    return path


def build_backbone(name: str, weights: str | None, input_shape: tuple[int, int, int]) -> keras.Model:
    """Build a headless Keras-application backbone, named ``"backbone"``.

    Args:
        name: a registry name, e.g. ``"resnet50"``.
        weights: ``"imagenet"`` (Keras downloads and caches them; needs the internet),
            ``"none"`` (random initialisation) or the path of a weights file saved from the same
            architecture (``.weights.h5``, Keras 2 ``.h5`` or ``.keras``).
        input_shape: ``(H, W, 3)``.

    Returns:
        The backbone, a functional ``keras.Model`` whose output is the last feature map.

    Raises:
        FileNotFoundError: the weights file does not exist.
        ValueError: unknown name, or the weights file does not match the architecture.
        RuntimeError: ImageNet weights could not be downloaded.

    Example:
        >>> base = build_backbone("mobilenetv2", "weights/mobilenet.weights.h5", (160, 160, 3))
    """
    spec = get_backbone_spec(name)
    resolved = _resolve_weights(spec.name, weights)
    if resolved == "imagenet" and spec.constructor is small_cnn:
        raise ValueError("model.weights: smallcnn has no pretrained (imagenet) weights; use none or a weights file")
    keras_weights = "imagenet" if resolved == "imagenet" else None
    try:
        base = spec.constructor(include_top=False, weights=keras_weights, input_shape=tuple(input_shape))
    except Exception as exc:  # download errors come as bare Exception, OSError or ValueError
        if isinstance(exc, ValueError) and "input" in str(exc).lower():
            raise ValueError(
                f"data.image_size {list(input_shape[:2])}: {spec.name} cannot be built for it ({exc})"
            ) from exc
        if keras_weights is None:
            raise
        raise RuntimeError(
            f"model.weights: could not get the ImageNet weights of {spec.name} ({exc}); "
            "without internet access set model.weights to a local weights file or none"
        ) from exc
    if isinstance(resolved, Path):
        _load_weights_file(base, spec, resolved)
    elif resolved is None:
        _settle_batchnorm_fast(base)
    # Renamed only now: EfficientNet derives its ImageNet weights file name from `name`.
    base.name = "backbone"
    return base


# Keras applications use momentum 0.99 (0.999 for MobileNetV2/EfficientNet): fine for ImageNet,
# but a backbone trained from scratch on a few hundred images takes only a few hundred steps,
# after which the moving statistics still sit near their initial values and the model predicts
# one constant score at inference. 0.9 settles within tens of steps.
SCRATCH_BN_MOMENTUM = 0.9


def _settle_batchnorm_fast(base: keras.Model) -> None:
    for layer in walk_layers(base):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = min(float(layer.momentum), SCRATCH_BN_MOMENTUM)


def _load_weights_file(base: keras.Model, spec: BackboneSpec, path: Path) -> None:
    try:
        with warnings.catch_warnings():
            # Keras warns once per unmatched container before raising; the error says it all.
            warnings.simplefilter("ignore")
            base.load_weights(str(path))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"model.weights: {path} does not fit backbone {spec.name} ({first}); "
            f"give a weights file saved from keras.applications {spec.constructor.__name__}(include_top=False)"
        ) from exc
    if spec.name == "efficientnetb0":
        norm = next((layer for layer in base.layers if isinstance(layer, keras.layers.Normalization)), None)
        if norm is not None and float(ops.max(ops.abs(norm.mean))) > 0:
            # Keras adds a std-dev Rescaling layer only for weights="imagenet"; a local copy of
            # those weights is built without it (tensorflow/tensorflow#49930).
            warnings.warn(
                f"model.weights: {path} carries ImageNet input statistics, but Keras only adds "
                "EfficientNet's extra ImageNet rescaling for weights=imagenet; inputs will be "
                "scaled slightly differently from the original training",
                stacklevel=3,
            )


def walk_layers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    """Every layer nested inside ``layer`` (depth first, ``layer`` itself excluded)."""
    found = []
    for sub in getattr(layer, "layers", []):
        found.append(sub)
        found.extend(walk_layers(sub))
    return found


def freeze_batchnorm(layer: keras.layers.Layer) -> None:
    """Set ``trainable = False`` on every BatchNormalization layer inside ``layer``.

    In Keras 3, a frozen BatchNormalization layer always runs in inference mode. Calling the
    backbone with ``training=False`` alone does not achieve this once the backbone is unfrozen:
    the outer model's training flag reaches the BN layers and their moving statistics drift.
    """
    for sub in walk_layers(layer):
        if isinstance(sub, keras.layers.BatchNormalization):
            # The property's setter itself: plain assignment is skipped by the TF backend when
            # the flag already reads False, even if the variables' own flags disagree.
            keras.layers.Layer.trainable.fset(sub, False)


def backbone_blocks(backbone: keras.Model, spec: BackboneSpec) -> list[tuple[Block, list[keras.layers.Layer]]]:
    """The layers of each block of ``backbone``, top block first.

    Args:
        backbone: a model built by :func:`build_backbone`.
        spec: its registry entry.

    Returns:
        ``[(block, layers), ...]`` in ``spec.blocks`` order; layers keep the model's order.
    """
    return [(block, [layer for layer in backbone.layers if block.contains(layer.name)]) for block in spec.blocks]


@keras.saving.register_keras_serializable(package="medtl")
class BackbonePreprocessing(keras.layers.Layer):
    """Grey ``[0, 1]`` images to what a backbone expects, as a layer of the saved model.

    Modes (x is the image scaled to ``[0, 255]``, grey repeated to RGB):

    * ``caffe``: RGB to BGR, minus the ImageNet mean pixel (VGG16, ResNet50);
    * ``tf``: ``x / 127.5 - 1`` (MobileNetV2, ResNet50V2);
    * ``torch``: ``(x / 255 - mean) / std`` with ImageNet statistics (DenseNet121);
    * ``none``: ``x`` itself (EfficientNetB0 rescales inside the network);
    * ``unit``: RGB in ``[0, 1]`` (TF Hub image models).

    Args:
        mode: one of the modes above.
        backbone: the ``model.backbone`` value it was made for (kept so a loaded model knows
            its backbone).
        pretrained: whether the backbone starts from pretrained weights; staged fine-tuning
            keeps BatchNormalization frozen only then (a network trained from random weights
            needs its batch statistics).

    Example:
        >>> layer = BackbonePreprocessing("caffe", backbone="vgg16")
        >>> layer(np.zeros((1, 4, 4, 1), "float32")).shape
        TensorShape([1, 4, 4, 3])
    """

    def __init__(self, mode: str, backbone: str = "", pretrained: bool = True, **kwargs):
        # Pixel arithmetic stays in float32 under mixed precision; the backbone casts after.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if mode not in PREPROCESS_MODES:
            raise ValueError(f"BackbonePreprocessing: unknown mode {mode!r}; use one of {', '.join(PREPROCESS_MODES)}")
        self.mode = mode
        self.backbone = backbone
        self.pretrained = bool(pretrained)

    def call(self, images):
        x = ops.cast(images, "float32")
        if x.shape[-1] == 1:
            x = ops.repeat(x, 3, axis=-1)
        if self.mode == "unit":
            return x
        x = x * 255.0
        if self.mode == "caffe":
            return ops.flip(x, axis=-1) - ops.array(_CAFFE_MEAN_BGR, "float32")
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            return (x / 255.0 - ops.array(_TORCH_MEAN, "float32")) / ops.array(_TORCH_STD, "float32")
        return x

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 3)

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode, "backbone": self.backbone, "pretrained": self.pretrained}
