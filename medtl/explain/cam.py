"""Heat maps for medtl classifiers: Grad-CAM, Grad-CAM++, HiResCAM, LayerCAM, integrated
gradients, Score-CAM and occlusion.

medtl models nest their backbone as a sub-model (a layer named ``"backbone"``). Tools that build
``keras.Model(model.input, backbone.get_layer(name).output)`` fail on that with "Graph
disconnected", because the inner layer's output belongs to the backbone's own graph. Here the
model is instead *run through its own graph*, node by node, as ``model(x)`` runs it, entering
the nested backbone the same way, with two taps: the target layer's output (the feature map) is
watched by the gradient tape the moment it is computed, and the classifier's pre-activation (the
logit) is recorded. Nothing is rebuilt or copied, so this works for any Keras-application
backbone and any target layer, and the forward output is the model's own; the tests check it
against ``model.predict``.

Maps are computed a batch at a time (one tape, one compiled graph per batch), made non-negative,
resized to the model input and normalised per image to [0, 1] (a constant map becomes zeros).
:func:`explain_for_original` takes a map back to the original film's pixel grid.

The method names, kinds and labels are in :mod:`medtl.registry`. A gradient method is a
subclass of :class:`GradientCAM` that overrides one hook: :meth:`GradientCAM.channel_weights`
(one weight per feature channel, as Grad-CAM) or :meth:`GradientCAM.pixel_map` (a map from the
activations and gradients directly, as HiResCAM), registered with :func:`register`.
Integrated gradients is a gradient method whose "feature map" is the input itself (no target
layer); Score-CAM reads a layer's feature maps but no gradient (kind ``"activation"``).
:func:`map_grid` gives the grid a method's map is computed on, before resizing to the input.

Example:
    >>> maps = compute_cam(model, x, method="gradcam")  # x: (N, H, W, 1) float32 in [0, 1]
    >>> maps.shape, float(maps.max())
    ((8, 224, 224), 1.0)
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar, Sequence

import keras
import numpy as np
import tensorflow as tf

from medtl.data.resize import Geometry
from medtl.registry import (
    DEFAULT_METHOD,
    GRADIENT,
    fallback_method,
    map_methods,
    method_info,
    takes_target_layer,
)

__all__ = [
    "CAMMethod",
    "GradientCAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "HiResCAM",
    "LayerCAM",
    "IntegratedGradients",
    "ScoreCAM",
    "Occlusion",
    "METHODS",
    "register",
    "MethodChoice",
    "compute_cam",
    "explain_for_original",
    "off_film_share",
    "method_for_model",
    "map_grid",
    "spatial_layers",
]

ClassIndex = int | str | Sequence[int] | None

_POOLING = (
    keras.layers.MaxPooling2D,
    keras.layers.AveragePooling2D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalMaxPooling2D,
)


# --------------------------------------------------------------------------------------------
# Finding the layers


def _output_rank(layer: keras.layers.Layer) -> int | None:
    try:
        return len(layer.output.shape)
    except (AttributeError, ValueError, RuntimeError):  # never called, or called more than once
        return None


def _is_container(layer: Any) -> bool:
    return isinstance(layer, keras.Model) and (
        hasattr(layer, "_nodes_by_depth") or isinstance(layer, keras.Sequential)
    )


def _backbone(model: keras.Model) -> keras.layers.Layer | None:
    try:
        return model.get_layer("backbone")
    except ValueError:
        return None


def spatial_layers(model: keras.Model) -> list[str]:
    """Names of the layers that can be a CAM target: those with a 4-D (B, H, W, C) output.

    Searched inside the nested backbone when the model has one, else in the model itself; in
    graph order, so the last name is the deepest feature map.

    Example:
        >>> spatial_layers(model)[-1]
        'out_relu'
    """
    bb = _backbone(model)
    scope = bb if bb is not None else model
    if not _is_container(scope):
        return []
    return [
        layer.name
        for layer in scope.layers
        if not isinstance(layer, keras.layers.InputLayer) and _output_rank(layer) == 4
    ]


def _default_target(scope: keras.Model) -> keras.layers.Layer | None:
    """The deepest 4-D feature map, stepping back over trailing pooling (e.g. VGG's block5_pool)
    so the map keeps the last convolution's resolution."""
    layers = [
        layer for layer in scope.layers
        if not isinstance(layer, keras.layers.InputLayer) and _output_rank(layer) == 4
    ]
    while len(layers) > 1 and isinstance(layers[-1], _POOLING):
        layers.pop()
    return layers[-1] if layers else None


def _find_path(container: keras.Model, name: str) -> list[keras.layers.Layer] | None:
    """Chain of layers from ``container`` down to the layer called ``name`` (nested models)."""
    for layer in container.layers:
        if layer.name == name:
            return [layer]
    for layer in container.layers:
        if _is_container(layer):
            sub = _find_path(layer, name)
            if sub is not None:
                return [layer, *sub]
    return None


def _target_path(model: keras.Model, target_layer: str | None) -> list[keras.layers.Layer]:
    bb = _backbone(model)
    if bb is not None and not _is_container(bb):
        raise ValueError(
            f"model {model.name!r}: its backbone ({type(bb).__name__}) exposes no spatial feature "
            "map, so gradient CAMs cannot be computed; use method='occlusion'"
        )
    if target_layer is None:
        scope = bb if bb is not None else model
        target = _default_target(scope)
        if target is None:
            raise ValueError(
                f"model {model.name!r}: no layer with a 4-D (spatial) output found; "
                "use method='occlusion'"
            )
        return [bb, target] if bb is not None else _find_path(model, target.name)
    path = None
    if bb is not None:
        path = _find_path(bb, target_layer)
        path = None if path is None else [bb, *path]
    path = path or _find_path(model, target_layer)
    if path is None or _output_rank(path[-1]) != 4:
        names = spatial_layers(model)
        why = "not found" if path is None else "has no 4-D (spatial) output"
        raise ValueError(
            f"target_layer={target_layer!r} {why} in model {model.name!r}; valid names include "
            f"{', '.join(names[-8:][::-1])} ({len(names)} in all, see medtl.explain.spatial_layers)"
        )
    return path


def _classifier(model: keras.Model) -> keras.layers.Layer | None:
    try:
        return model.get_layer("classifier")
    except ValueError:
        dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
        return dense[-1] if dense else None


# --------------------------------------------------------------------------------------------
# The tapped forward pass


def _accepts_training(op: Any) -> bool:
    call = getattr(op, "call", None)
    if call is None:
        return False
    try:
        return "training" in inspect.signature(call).parameters
    except (TypeError, ValueError):
        return False


class _TappedForward:
    """Runs ``model`` through its own graph, watching the target layer and recording logits.

    Args:
        model: A functional (or Sequential) Keras model with one output.
        path: Layers from the model down to the target layer (``[backbone, layer]`` for a nested
            backbone); empty for no target (occlusion only needs scores).
    """

    def __init__(self, model: keras.Model, path: Sequence[keras.layers.Layer]) -> None:
        if not _is_container(model) or not (
            isinstance(model, keras.Sequential) or hasattr(model, "_run_through_graph")
        ):
            raise TypeError(
                f"model {getattr(model, 'name', model)!r} ({type(model).__name__}) is not a "
                "functional or Sequential Keras model; CAMs need its layer graph"
            )
        self.model = model
        self.path = list(path)
        self.classifier = _classifier(model)
        act = getattr(getattr(self.classifier, "activation", None), "__name__", "linear")
        # Only a Dense head's pre-activation is recomputed: other heads are scored on their output.
        self.activation = act if isinstance(self.classifier, keras.layers.Dense) else "linear"
        self._training_arg: dict[int, bool] = {}

    def __call__(
        self, x: tf.Tensor, tape: tf.GradientTape | None = None
    ) -> tuple[tf.Tensor | None, tf.Tensor, tf.Tensor]:
        """Return (feature map or None, logits (B, K) float32, model output (B, K) float32)."""
        taps: dict[str, list[tf.Tensor]] = {"features": [], "logits": []}
        out = self._run(self.model, x, 0, taps, tape)
        if isinstance(out, (list, tuple)):
            if len(out) != 1:
                raise ValueError(f"model {self.model.name!r} has {len(out)} outputs; CAMs need one")
            out = out[0]
        out = tf.cast(out, tf.float32)
        if self.path and len(taps["features"]) != 1:
            raise RuntimeError(
                f"target layer {self.path[-1].name!r} ran {len(taps['features'])} times in one "
                "forward pass; choose a layer that is used once"
            )
        logits = taps["logits"][-1] if taps["logits"] else out
        return (taps["features"][0] if self.path else None), logits, out

    def _call(self, op: Any, args: tuple, kwargs: dict) -> Any:
        key = id(op)
        if key not in self._training_arg:
            self._training_arg[key] = _accepts_training(op)
        if self._training_arg[key]:
            kwargs = {**kwargs, "training": False}  # inference: BatchNorm moving stats, no dropout
        return op(*args, **kwargs)

    def _op_fn(self, depth: int, taps: dict, tape: tf.GradientTape | None) -> Callable:
        def wrap(op: Any) -> Callable:
            on_path = depth < len(self.path) and op is self.path[depth]
            if on_path and depth + 1 < len(self.path):
                return lambda *a, **k: self._run(op, a[0], depth + 1, taps, tape)
            if on_path:
                def target(*a: Any, **k: Any) -> Any:
                    y = self._call(op, a, k)
                    if tape is not None:
                        tape.watch(y)
                    taps["features"].append(y)
                    return y
                return target
            if depth == 0 and op is self.classifier and self.activation in ("sigmoid", "softmax"):
                def head(*a: Any, **k: Any) -> Any:
                    h = tf.cast(a[0], tf.float32)
                    z = tf.matmul(h, tf.cast(op.kernel, tf.float32))
                    if op.use_bias:
                        z = z + tf.cast(op.bias, tf.float32)
                    taps["logits"].append(z)
                    return self._call(op, a, k)
                return head
            return lambda *a, **k: self._call(op, a, k)
        return wrap

    def _run(self, container: keras.Model, x: Any, depth: int, taps: dict,
             tape: tf.GradientTape | None) -> Any:
        # Keras offers no public per-layer hook, so this uses the executor Functional.call itself
        # runs (_run_through_graph with an operation_fn); the tests pin its behaviour.
        op_fn = self._op_fn(depth, taps, tape)
        if isinstance(container, keras.Sequential):
            for layer in container.layers:
                x = op_fn(layer)(x)
            return x
        if hasattr(container, "_standardize_inputs"):
            x = container._standardize_inputs(x)
        out = container._run_through_graph(x, operation_fn=op_fn)
        if isinstance(out, (list, tuple)) and len(out) == 1:
            out = out[0]
        return out


# --------------------------------------------------------------------------------------------
# Which class a map is for


def _selector(class_index: ClassIndex, n: int, k: int) -> np.ndarray | None:
    """Per-image weights over the K outputs whose dot product with the logits is the target
    score; None means "the predicted class", decided from the model's output.

    With one sigmoid output the negative class is the negated logit, so its map shows evidence
    *against* the lesion."""
    named = class_index if isinstance(class_index, str) else None
    if named == "predicted" or (class_index is None and k > 1):
        return None
    if k == 1 and (class_index is None or named in ("positive", "negative")):
        class_index = 0 if named == "negative" else 1
    if isinstance(class_index, str):
        raise ValueError(
            f"class_index={class_index!r}: use an int, a list of ints (one per image), "
            "'predicted', or for binary models 'positive'/'negative'"
        )
    idx = np.broadcast_to(np.asarray(class_index), (n,)) if np.ndim(class_index) == 0 else (
        np.asarray(class_index))
    if idx.shape != (n,) or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(
            f"class_index: expected one int or {n} ints (one per image), got {class_index!r}"
        )
    top = 2 if k == 1 else k
    if idx.min() < 0 or idx.max() >= top:
        raise ValueError(f"class_index={class_index!r}: out of range for {top} classes")
    if k == 1:
        return np.where(idx == 1, 1.0, -1.0).astype(np.float32)[:, None]
    return np.eye(k, dtype=np.float32)[idx]


def _predicted_selector(out: tf.Tensor, k: int) -> tf.Tensor:
    if k == 1:
        return tf.where(out >= 0.5, 1.0, -1.0)
    return tf.one_hot(tf.argmax(out, axis=1), k, dtype=tf.float32)


# --------------------------------------------------------------------------------------------
# Methods


class CAMMethod(ABC):
    """Base class: batching, input checks, resizing to the input and per-image normalisation.

    Subclasses implement :meth:`_raw_maps`, returning non-negative maps at any resolution;
    gradient methods do so through :class:`GradientCAM` and its two hooks. ``name`` is the
    method's name in :mod:`medtl.registry`.
    """

    name: ClassVar[str] = ""

    def __init__(self, model: keras.Model) -> None:
        self.model = model
        if isinstance(model.output_shape, list) or isinstance(model.input_shape, list):
            raise ValueError(f"model {model.name!r}: CAMs need one image input and one output")
        shape = tuple(model.input_shape)
        if len(shape) != 4:
            raise ValueError(f"model {model.name!r}: expected an image input (B, H, W, C), "
                             f"got {shape}")
        self.input_hw = shape[1:3]
        self.channels = shape[3]
        self.n_outputs = int(model.output_shape[-1])

    def __call__(self, images: np.ndarray, class_index: ClassIndex = None,
                 batch_size: int = 16) -> np.ndarray:
        """Maps for ``images``: float32 (N, H, W) in [0, 1] at the model input resolution.

        Args:
            images: (N, H, W), (N, H, W, C) or one (H, W) image, float32 in [0, 1].
            class_index: For one sigmoid output: None or 1 (the positive class), 0 (evidence
                for "negative") or "predicted"; for several outputs: a class index, one index
                per image, or None / "predicted" (the top class). Lists give one per image.
            batch_size: Images per batch.
        """
        x = self._as_batch(images)
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be at least 1")
        if len(x) == 0:
            return np.zeros((0, *x.shape[1:3]), np.float32)
        sel = _selector(class_index, len(x), self.n_outputs)
        maps = []
        for i in range(0, len(x), batch_size):
            part = None if sel is None else sel[i:i + batch_size]
            raw = self._raw_maps(x[i:i + batch_size], part, batch_size)
            maps.append(_normalise(_resize(raw, x.shape[1:3])))
        return np.concatenate(maps).astype(np.float32)

    def _as_batch(self, images: np.ndarray) -> np.ndarray:
        x = np.asarray(images, dtype=np.float32)
        if x.ndim == 2:
            x = x[None]
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4 or (self.channels is not None and x.shape[-1] != self.channels):
            raise ValueError(
                f"images of shape {np.shape(images)}: expected (N, H, W) or (N, H, W, "
                f"{self.channels}) for model {self.model.name!r}"
            )
        h, w = self.input_hw
        if (h is not None and x.shape[1] != h) or (w is not None and x.shape[2] != w):
            raise ValueError(
                f"images are {x.shape[1]}x{x.shape[2]} but model {self.model.name!r} takes "
                f"{h}x{w}; resize them first (medtl.data.resize.letterbox)"
            )
        return x

    @abstractmethod
    def _raw_maps(self, x: np.ndarray, selector: np.ndarray | None, batch_size: int) -> np.ndarray:
        """Non-negative (B, h, w) maps for one batch; selector None means the predicted class."""


METHODS: dict[str, type[CAMMethod]] = {}


def register(cls: type[CAMMethod]) -> type[CAMMethod]:
    """Class decorator: make ``cls`` the implementation of the registry method ``cls.name``.

    The name must be in :mod:`medtl.registry` (so config, CLI and report know it) and the class
    must be of the kind the registry gives it; both are checked at import, not at first use.

    Example:
        >>> @register
        ... class LayerCAM(GradientCAM):
        ...     name = "layercam"  # after adding "layercam" to medtl.registry
        ...     def pixel_map(self, activations, grads):
        ...         return tf.reduce_sum(tf.nn.relu(grads) * activations, axis=-1)
    """
    kind = method_info(cls.name).kind
    if (kind == GRADIENT) != issubclass(cls, GradientCAM):
        raise TypeError(f"{cls.__name__}: registry method {cls.name!r} is of kind {kind!r}; "
                        f"{'' if kind == GRADIENT else 'do not '}subclass GradientCAM")
    METHODS[cls.name] = cls
    return cls


class GradientCAM(CAMMethod):
    """Base class of the gradient methods: feature maps and their gradients, two hooks.

    For each batch it records the target layer's activations A (B, h, w, C) and the gradients
    g = dS/dA of the target class's logit S, then calls :meth:`pixel_map`, whose default
    weighs the channels by :meth:`channel_weights`. A method overrides one of the two; the map
    is then made non-negative (ReLU), resized and normalised by :class:`CAMMethod`.

    Args:
        model: A medtl classifier (nested backbone) or any functional image model.
        target_layer: Name of a layer with a 4-D output, inside the backbone or the model;
            default: the backbone's last convolutional feature map.

    Example:
        >>> maps = GradCAM(model)(x, class_index="predicted")
    """

    def __init__(self, model: keras.Model, target_layer: str | None = None) -> None:
        super().__init__(model)
        path = self._layer_path(model, target_layer)
        self.target_layer = path[-1].name if path else None
        self._forward = _TappedForward(model, path)
        spec_x = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
        spec_s = tf.TensorSpec((None, self.n_outputs), tf.float32)
        self._fixed = tf.function(self._step, input_signature=[spec_x, spec_s])
        self._predicted = tf.function(lambda x: self._step(x, None), input_signature=[spec_x])

    def _layer_path(self, model: keras.Model, target_layer: str | None) -> list[keras.layers.Layer]:
        """The layers down to the tapped feature map; a method on the input returns []."""
        return _target_path(model, target_layer)

    def channel_weights(self, activations: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:
        """(B, C) weights of the C feature channels, from activations and gradients (B, h, w, C).

        Used by the default :meth:`pixel_map`; a method that overrides that need not define it.
        """
        raise NotImplementedError(f"{type(self).__name__} overrides neither channel_weights "
                                  "nor pixel_map")

    def pixel_map(self, activations: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:
        """(B, h, w) map before ReLU: the activations summed over channels with
        :meth:`channel_weights`."""
        return tf.einsum("bhwk,bk->bhw", activations, self.channel_weights(activations, grads))

    def _step(self, x: tf.Tensor, selector: tf.Tensor | None) -> tf.Tensor:
        with tf.GradientTape() as tape:
            feats, logits, out = self._forward(x, tape)
            if selector is None:
                selector = _predicted_selector(out, self.n_outputs)
            score = tf.reduce_sum(logits * selector, axis=1)
        # Images are independent in inference mode, so one gradient of the sum gives each
        # image's own gradient.
        grads = tape.gradient(score, feats)
        if grads is None:
            raise ValueError(f"the score does not depend on target layer {self.target_layer!r}; "
                             "name a layer on the path to the classifier")
        # Float32 whatever the policy: mixed-precision activations would lose the small terms.
        grads = tf.cast(grads, tf.float32)
        feats = tf.cast(feats, tf.float32)
        return tf.nn.relu(self.pixel_map(feats, grads))

    def _raw_maps(self, x: np.ndarray, selector: np.ndarray | None, batch_size: int) -> np.ndarray:
        if selector is None:
            return self._predicted(tf.constant(x)).numpy()
        return self._fixed(tf.constant(x), tf.constant(selector)).numpy()


@register
class GradCAM(GradientCAM):
    """Grad-CAM (Selvaraju et al. 2017): feature maps weighted by their mean gradient.

    Example:
        >>> maps = GradCAM(model, target_layer="out_relu")(x, class_index="predicted")
    """

    name = "gradcam"

    def channel_weights(self, activations: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:
        """Each channel's gradient averaged over the map (global-average-pooled)."""
        return tf.reduce_mean(grads, axis=(1, 2))


@register
class GradCAMPlusPlus(GradientCAM):
    """Grad-CAM++ (Chattopadhyay et al. 2018), closed-form weights for an exponential score.

    With Y = exp(S) and S piecewise linear in the feature map A (ReLU networks, so
    d2S/dA2 = 0), the paper's derivatives are dY/dA = Y g, d2Y/dA2 = Y g^2, d3Y/dA3 = Y g^3
    (g = dS/dA). Its pixel weights

        alpha_ij^k = d2Y/dA2 / (2 d2Y/dA2 + sum_ab A_ab^k d3Y/dA3) = g^2 / (2 g^2 + sum_ab A^k g^3)

    lose the factor Y, and the channel weight w_k = sum_ij alpha_ij^k relu(dY/dA_ij^k) keeps it
    only as one positive factor per image, which normalisation removes; it is dropped so that
    large logits cannot overflow exp. Where the denominator is 0 (g = 0), alpha is 0.
    """

    name = "gradcam++"

    def channel_weights(self, activations: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:
        """Sum over pixels of alpha times the positive gradient (see the class docstring)."""
        g2 = tf.square(grads)
        g3 = g2 * grads
        sum_a = tf.reduce_sum(activations, axis=(1, 2), keepdims=True)
        alpha = tf.math.divide_no_nan(g2, 2.0 * g2 + sum_a * g3)
        return tf.reduce_sum(alpha * tf.nn.relu(grads), axis=(1, 2))


@register
class HiResCAM(GradientCAM):
    """HiResCAM (Draelos & Carin 2020): gradient times activation at each pixel, summed over
    channels.

    Grad-CAM averages each channel's gradient over the map before weighing it, so a channel
    whose gradient is positive in one place and negative in another is credited everywhere it
    is active; HiResCAM keeps the gradient where it is, and its map is exactly each cell's
    first-order contribution to the score. Behind a global-average-pooled head the gradient is
    the same at every cell and the two methods agree.

    Example:
        >>> maps = HiResCAM(model)(x)
    """

    name = "hirescam"

    def pixel_map(self, activations: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:
        """sum_k g_ij^k A_ij^k for each pixel (i, j)."""
        return tf.reduce_sum(grads * activations, axis=-1)


@register
class LayerCAM(GradientCAM):
    """LayerCAM (Jiang et al. 2021): positive gradient times activation at each pixel, summed
    over channels; optionally fused over several layers.

    Keeping only positive gradients makes each cell's weight local, so a shallower layer (a
    finer grid) still gives a map of the class, unlike Grad-CAM, whose channel means there are
    dominated by generic edges. With several layers, each layer's map is normalised to [0, 1]
    on the finest layer's grid and the maps are averaged, so a coarse layer says *which* region
    and a fine one *where* inside it. (The paper scales each map by tanh before summing; with
    per-layer normalisation first the two differ only in how much a weak layer counts.)

    Args:
        model: A medtl classifier or any functional image model.
        target_layer: One layer name, or several to fuse (e.g. the last two blocks' outputs);
            default: the backbone's last feature map.

    Example:
        >>> maps = LayerCAM(model, target_layer=["cnn_block3_relu2", "cnn_block4_relu2"])(x)
    """

    name = "layercam"

    def __init__(self, model: keras.Model, target_layer: str | Sequence[str] | None = None) -> None:
        names = [target_layer] if target_layer is None or isinstance(target_layer, str) else list(target_layer)
        if not names:
            raise ValueError("target_layer=[]: give one layer name or several to fuse")
        super().__init__(model, names[0])
        # One LayerCAM per further layer: each taps one layer, which _TappedForward supports.
        self._fused = [LayerCAM(model, name) for name in names[1:]]
        if self._fused:
            self.target_layer = [self.target_layer, *(part.target_layer for part in self._fused)]

    def pixel_map(self, activations: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:
        """sum_k relu(g_ij^k) A_ij^k for each pixel (i, j)."""
        return tf.reduce_sum(tf.nn.relu(grads) * activations, axis=-1)

    def _raw_maps(self, x: np.ndarray, selector: np.ndarray | None, batch_size: int) -> np.ndarray:
        first = super()._raw_maps(x, selector, batch_size)
        if not self._fused:
            return first
        parts = [first, *(part._raw_maps(x, selector, batch_size) for part in self._fused)]
        grid = max((m.shape[1:3] for m in parts), key=lambda hw: hw[0] * hw[1])
        return np.mean([_normalise(_resize(m, grid)) for m in parts], axis=0)


@register
class IntegratedGradients(GradientCAM):
    """Integrated gradients (Sundararajan et al. 2017) on the input: the input's difference from
    a baseline times the gradient averaged along the straight path between them, summed over
    the colour channels. Positive parts only, as for the other maps.

    Its map is at the input resolution and it needs no target layer, so it also works where a
    backbone exposes no feature map. The attributions add up to score(x) - score(baseline)
    (completeness), up to the midpoint rule's error in ``steps``. It costs ``steps`` forward
    and backward passes per image.

    Args:
        model: Any differentiable Keras image classifier with one output.
        steps: Points on the path (midpoint rule).
        baseline: A number (0.0: a black film) or "mean" (each image's mean).

    Example:
        >>> maps = IntegratedGradients(model, steps=32)(x)
    """

    name = "intgrad"

    def __init__(self, model: keras.Model, target_layer: None = None, steps: int = 16,
                 baseline: str | float = 0.0) -> None:
        if steps < 1:
            raise ValueError(f"steps={steps}: must be at least 1")
        if baseline != "mean" and not isinstance(baseline, (int, float)):
            raise ValueError(f"baseline={baseline!r}: use 'mean' or a number")
        self.steps, self.baseline = int(steps), baseline
        super().__init__(model, target_layer)

    def _layer_path(self, model: keras.Model, target_layer: str | None) -> list[keras.layers.Layer]:
        if target_layer is not None:
            raise ValueError(f"target_layer={target_layer!r}: integrated gradients work on the "
                             "input and take no target layer; leave it None")
        return []

    def pixel_map(self, activations: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:
        """sum_c (x - x0)_ij^c * mean path gradient_ij^c: the per-pixel attribution."""
        return tf.reduce_sum(activations * grads, axis=-1)

    def _step(self, x: tf.Tensor, selector: tf.Tensor | None) -> tf.Tensor:
        if selector is None:
            selector = _predicted_selector(self._forward(x)[2], self.n_outputs)
        base = (tf.reduce_mean(x, axis=(1, 2), keepdims=True) * tf.ones_like(x)
                if self.baseline == "mean" else tf.fill(tf.shape(x), float(self.baseline)))
        diff = x - base
        total = tf.zeros_like(x)
        for i in tf.range(self.steps):  # a graph loop: one traced model whatever the steps
            point = base + (tf.cast(i, tf.float32) + 0.5) / self.steps * diff
            with tf.GradientTape() as tape:
                tape.watch(point)
                logits = self._forward(point)[1]
                score = tf.reduce_sum(logits * selector, axis=1)
            total += tf.cast(tape.gradient(score, point), tf.float32)
        return tf.nn.relu(self.pixel_map(diff, total / self.steps))


@register
class ScoreCAM(CAMMethod):
    """Score-CAM (Wang et al. 2020): the target layer's feature maps weighted by how the model
    scores the image masked by each of them; no gradients.

    Each channel's map, upsampled to the input and scaled to [0, 1], masks the image; the
    channel's weight is the softmax over channels of the target class's logit for its masked
    image. (The paper subtracts the score of a baseline image first: one constant for all
    channels, which the softmax ignores.) The map is relu(sum_k w_k A_k) on the layer's grid.
    It costs one forward pass per channel and image, so ``top_channels`` can keep only each
    image's most active channels.

    Args:
        model: A medtl classifier or any functional image model.
        target_layer: Name of a layer with a 4-D output; default the last feature map.
        top_channels: Keep only the k channels of highest mean activation per image (None: all).

    Example:
        >>> maps = ScoreCAM(model, top_channels=256)(x)
    """

    name = "scorecam"

    def __init__(self, model: keras.Model, target_layer: str | None = None,
                 top_channels: int | None = None) -> None:
        super().__init__(model)
        if top_channels is not None and top_channels < 1:
            raise ValueError(f"top_channels={top_channels}: must be at least 1 or None")
        path = _target_path(model, target_layer)
        self.target_layer, self.top_channels = path[-1].name, top_channels
        self._forward = _TappedForward(model, path)
        spec_x = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
        self._features = tf.function(self._forward, input_signature=[spec_x])
        self._logits = tf.function(lambda x: self._forward(x)[1], input_signature=[spec_x])

    def _raw_maps(self, x: np.ndarray, selector: np.ndarray | None, batch_size: int) -> np.ndarray:
        feats, _, out = self._features(tf.constant(x))
        acts = tf.cast(feats, tf.float32).numpy()
        if selector is None:
            selector = _predicted_selector(out, self.n_outputs).numpy()
        maps = np.zeros(acts.shape[:3], np.float32)
        for i, a in enumerate(acts):
            keep = np.argsort(-a.mean(axis=(0, 1)), kind="stable")[:self.top_channels]
            masks = _resize(np.moveaxis(a[..., keep], -1, 0), x.shape[1:3])
            lo = masks.min(axis=(1, 2), keepdims=True)
            span = masks.max(axis=(1, 2), keepdims=True) - lo
            # A constant channel masks nothing in particular: its mask is all zeros.
            masks = np.where(span > 0, (masks - lo) / np.where(span > 0, span, 1.0), 0.0)
            scores = np.concatenate([
                self._logits(tf.constant(x[i] * masks[j:j + batch_size, ..., None],
                                         tf.float32)).numpy() @ selector[i]
                for j in range(0, len(masks), batch_size)
            ])
            w = np.exp(scores - scores.max())
            maps[i] = np.maximum(a[..., keep] @ (w / w.sum()), 0.0)
        return maps


@register
class Occlusion(CAMMethod):
    """Occlusion sensitivity (Zeiler & Fergus 2014): the drop in the target score when a patch
    is hidden, averaged over the patches covering each pixel. Needs no feature map, so it works
    for any backbone, including TF Hub models.

    Args:
        model: Any Keras image classifier with one output.
        patch: Patch side as a fraction of the image side.
        stride: Step as a fraction of the image side (default: half the patch).
        fill: "mean" (each image's mean) or a number (e.g. 0.0) to paint the patch with.

    Example:
        >>> maps = Occlusion(model, patch=0.1)(x)
    """

    name = "occlusion"

    def __init__(self, model: keras.Model, patch: float = 0.125, stride: float | None = None,
                 fill: str | float = "mean") -> None:
        super().__init__(model)
        stride = patch / 2 if stride is None else stride
        if not (0 < patch <= 1 and 0 < stride <= 1):
            raise ValueError(f"patch={patch}, stride={stride}: both must be in (0, 1]")
        if fill != "mean" and not isinstance(fill, (int, float)):
            raise ValueError(f"fill={fill!r}: use 'mean' or a number")
        self.patch, self.stride, self.fill = patch, stride, fill
        self._forward = _TappedForward(model, [])
        spec_x = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
        self._scores = tf.function(lambda x: self._forward(x)[1:], input_signature=[spec_x])

    def _windows(self, h: int, w: int) -> list[tuple[int, int, int, int]]:
        def starts(n: int, frac_p: float, frac_s: float) -> tuple[int, list[int]]:
            p = min(n, max(1, round(frac_p * n)))
            s = max(1, round(frac_s * n))
            pos = list(range(0, n - p + 1, s))
            if pos[-1] != n - p:
                pos.append(n - p)  # the last patch reaches the edge, so every pixel is covered
            return p, pos
        ph, ys = starts(h, self.patch, self.stride)
        pw, xs = starts(w, self.patch, self.stride)
        return [(y, x, ph, pw) for y in ys for x in xs]

    def _raw_maps(self, x: np.ndarray, selector: np.ndarray | None, batch_size: int) -> np.ndarray:
        logits, out = (t.numpy() for t in self._scores(tf.constant(x)))
        if selector is None:
            selector = _predicted_selector(tf.constant(out), self.n_outputs).numpy()
        base = (logits * selector).sum(axis=1)
        n, h, w, _ = x.shape
        windows = self._windows(h, w)
        heat = np.zeros((n, h, w), np.float64)
        count = np.zeros((h, w), np.float64)
        for y, xx, ph, pw in windows:
            count[y:y + ph, xx:xx + pw] += 1
        jobs = [(i, win) for i in range(n) for win in windows]
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start:start + batch_size]
            copies = x[[i for i, _ in chunk]].copy()
            for c, (i, (y, xx, ph, pw)) in enumerate(chunk):
                value = x[i].mean(axis=(0, 1)) if self.fill == "mean" else self.fill
                copies[c, y:y + ph, xx:xx + pw] = value
            occ_logits, _ = self._scores(tf.constant(copies))
            scores = (occ_logits.numpy() * selector[[i for i, _ in chunk]]).sum(axis=1)
            for c, (i, (y, xx, ph, pw)) in enumerate(chunk):
                heat[i, y:y + ph, xx:xx + pw] += base[i] - scores[c]
        # Only drops are evidence for the class; a rise when hidden is evidence against it.
        return np.maximum(heat / count, 0.0).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Resizing and normalisation


def _resize(maps: np.ndarray, hw: Sequence[int]) -> np.ndarray:
    maps = np.asarray(maps, np.float32)
    if maps.shape[1:3] == tuple(hw):
        return maps
    # Bilinear with half-pixel centres: cell j is drawn centred at (j + 0.5) * H / h. By layer
    # geometry alone, stride-2 layers padded on one side (MobileNetV2, EfficientNet: +15.5 px at
    # 224; ResNet50: -15.5 px) put a cell's receptive field half a cell away from there, and a
    # randomly initialised network's effective receptive field does sit there. Trained kernels
    # compensate: ImageNet MobileNetV2's measured centroid is within -11..+12 px of the resize
    # centre, and a model fine-tuned on the synthetic lesions had its hot region centred on the
    # lesion with this resize but 1 radius off with the geometric shift (2026-11-29), so the
    # shift is not applied.
    return tf.image.resize(maps[..., None], tuple(hw), method="bilinear").numpy()[..., 0]


def _normalise(maps: np.ndarray) -> np.ndarray:
    """Scale each map to [0, 1]; a (numerically) constant map becomes zeros."""
    lo = maps.min(axis=(1, 2), keepdims=True)
    hi = maps.max(axis=(1, 2), keepdims=True)
    span = hi - lo
    flat = span <= 1e-6 * np.maximum(np.abs(hi), np.abs(lo))  # also true for all-zero maps
    out = np.where(flat, 0.0, (maps - lo) / np.where(flat, 1.0, span))
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Public functions


class MethodChoice(str):
    """A method name (compares equal to the plain string) that also carries ``.reason``."""

    reason: str

    def __new__(cls, method: str, reason: str) -> "MethodChoice":
        obj = super().__new__(cls, method)
        obj.reason = reason
        return obj


def method_for_model(model: keras.Model, preferred: str = DEFAULT_METHOD) -> MethodChoice:
    """The CAM method to use for ``model``, with the reason in ``.reason``.

    Gradient methods need a spatial feature map; a backbone that exposes none (a TF Hub model
    wrapped in one layer) gets the registry's perturbation method (occlusion). The default is Grad-CAM, as for ``report.cam``:
    Grad-CAM++ fails the model-randomisation check on one of the test models (test_cam.py).

    Example:
        >>> choice = method_for_model(model)
        >>> str(choice), choice.reason
        ('gradcam', "backbone feature map 'out_relu' (7x7)")
    """
    if preferred not in METHODS:
        raise ValueError(f"preferred={preferred!r}: choose one of {', '.join(map_methods())}")
    if not takes_target_layer(preferred):  # reads no feature map: any model will do
        if method_info(preferred).kind == GRADIENT:
            h, w = model.input_shape[1:3]
            return MethodChoice(preferred, f"input gradients, map at the input ({h}x{w})")
        return MethodChoice(preferred, f"{preferred} was asked for")
    fallback = fallback_method()
    bb = _backbone(model)
    if bb is not None and not _is_container(bb):
        return MethodChoice(fallback, f"backbone {bb.name!r} ({type(bb).__name__}) exposes "
                                      "no spatial feature map (e.g. a TF Hub model)")
    scope = bb if bb is not None else model
    target = _default_target(scope) if _is_container(scope) else None
    if target is None:
        return MethodChoice(fallback, f"model {model.name!r} has no layer with a 4-D output")
    h, w = target.output.shape[1:3]
    return MethodChoice(preferred, f"backbone feature map {target.name!r} ({h}x{w})")


def compute_cam(
    model: keras.Model,
    images: np.ndarray,
    method: str = "gradcam",
    target_layer: str | None = None,
    class_index: ClassIndex = None,
    batch_size: int = 16,
    **options: Any,
) -> np.ndarray:
    """Heat maps for ``images``: float32 (N, H, W) in [0, 1] at the model input resolution.

    Args:
        model: A medtl classifier (input (H, W, 1) in [0, 1]) or any functional image model.
        images: (N, H, W) or (N, H, W, 1) float32 in [0, 1], already at the input size.
        method: a name of :func:`medtl.registry.map_methods` ("gradcam", the default as for
            ``report.cam``, "gradcam++", "hirescam", "layercam", "intgrad", "scorecam",
            "occlusion") or "auto" (see :func:`method_for_model`).
        target_layer: Layer name for the methods that read a layer (default: the backbone's
            last convolutional feature map; LayerCAM also takes a list of names to fuse). Not
            used by "intgrad" (the input) or occlusion, so giving one there is an error.
        class_index: See :meth:`CAMMethod.__call__` (binary default: the positive class).
        batch_size: Images per batch (occlusion: occluded copies per forward pass).
        **options: Extra arguments for the method, e.g. ``patch=0.1`` for occlusion,
            ``steps=32`` for integrated gradients, ``top_channels=256`` for Score-CAM.

    Example:
        >>> maps = compute_cam(model, x, method="gradcam", class_index="predicted")
        >>> maps.shape == x.shape[:3]
        True

    Repeated calls on one model are faster with a method object kept, e.g. ``GradCAM(model)``.
    """
    if method == "auto":
        method = str(method_for_model(model))
    if method not in METHODS:
        raise ValueError(f"method={method!r}: choose one of auto, {', '.join(map_methods())}")
    if not takes_target_layer(method):
        if target_layer is not None:
            layered = [m for m in map_methods() if takes_target_layer(m)]
            raise ValueError(f"target_layer={target_layer!r} is not used by {method}; leave it "
                             f"None or choose a method that reads a layer ({', '.join(layered)})")
        cam = METHODS[method](model, **options)
    else:
        cam = METHODS[method](model, target_layer=target_layer, **options)
    return cam(images, class_index=class_index, batch_size=batch_size)


def map_grid(model: keras.Model, method: str = DEFAULT_METHOD,
             target_layer: str | Sequence[str] | None = None, **options: Any) -> tuple[int, int]:
    """The grid (rows, columns) a method's map is computed on, before it is resized to the input.

    This is the map's true resolution, which the report states: a layer method's target layer
    (a LayerCAM fusion: its finest layer), the input for integrated gradients, the patch
    positions for occlusion. Builds no tape and runs no image.

    Example:
        >>> map_grid(model, "gradcam"), map_grid(model, "intgrad")
        ((16, 16), (128, 128))
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r}: choose one of {', '.join(map_methods())}")
    h, w = model.input_shape[1:3]
    if method == "occlusion":
        windows = Occlusion(model, **options)._windows(h, w)
        return len({y for y, *_ in windows}), len({x for _, x, *_ in windows})
    if not takes_target_layer(method):
        return int(h), int(w)
    names = [target_layer] if target_layer is None or isinstance(target_layer, str) else list(target_layer)
    grids = [tuple(int(n) for n in _target_path(model, name)[-1].output.shape[1:3]) for name in names]
    return max(grids, key=lambda hw: hw[0] * hw[1])


def explain_for_original(map_at_input: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Take a map at the model input back to the original film: letterbox padding cropped,
    resize undone. Returns float32 (orig_h, orig_w) in [0, 1].

    Example:
        >>> x, geo = ImagePipeline(cfg).load("film.dcm")
        >>> heat = explain_for_original(compute_cam(model, x[None])[0], geo)
        >>> heat.shape == (geo.orig_h, geo.orig_w)
        True
    """
    m = np.asarray(map_at_input, np.float32)
    if m.ndim == 3 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.ndim != 2:
        raise ValueError(f"explain_for_original: expected one (H, W) map, got shape {m.shape}")
    return np.clip(geometry.unletterbox(m), 0.0, 1.0).astype(np.float32)


def off_film_share(map_at_input: np.ndarray, geometry: Geometry) -> float:
    """Share of a map's heat that lies on the letterbox padding, outside the film.

    :func:`explain_for_original` crops the padding, so an overlay cannot show this heat; a
    large share means the model's evidence sits on the padding or the film's edges.

    Args:
        map_at_input: (H, W) map at the model input (the canvas), as from :func:`compute_cam`.
        geometry: the film's placement on the canvas.

    Returns:
        A share in [0, 1]: 0.0 without padding, nan for an all-zero map (no heat anywhere).
    """
    m = np.asarray(map_at_input, np.float64)
    if m.ndim == 3 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.shape != (geometry.target_h, geometry.target_w):
        raise ValueError(f"off_film_share: expected a map at the canvas size "
                         f"{geometry.target_h}x{geometry.target_w}, got shape {m.shape}")
    m = np.clip(m, 0.0, None)
    total = m.sum()
    if total <= 0.0:
        return float("nan")
    g = geometry
    on_film = m[g.pad_top:g.pad_top + g.new_h, g.pad_left:g.pad_left + g.new_w].sum()
    return float(np.clip(1.0 - on_film / total, 0.0, 1.0))
