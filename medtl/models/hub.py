"""TF Hub image models as a Keras 3 layer.

``tensorflow_hub.KerasLayer`` is a Keras 2 (tf_keras) layer that Keras 3 models refuse, and
``keras.layers.TFSMLayer`` breaks Adam (variable names with '/' and ':0'). :class:`HubBackbone`
loads the SavedModel itself and registers every variable of it as a ``keras.Variable`` that
shares the loaded ``tf.Variable``, so Keras sees, trains, saves and loads them.

The SavedModel is always called in inference mode (``training=False``): its BatchNorm moving
statistics never move, even when the backbone is fine-tuned.

Example:
    >>> layer = HubBackbone("../shared/weights/efficientnet_lite0_feature_vector")
    >>> layer(np.zeros((2, 224, 224, 3), "float32")).shape
    TensorShape([2, 1280])
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf
from keras import ops

__all__ = ["HubBackbone", "load_hub_module"]


class _Opaque:
    """Holds the loaded SavedModel out of Keras' and TensorFlow's object tracking.

    Its variables are tracked once, as the layer's ``keras.Variable`` objects; tracking the
    SavedModel object too would make it a second owner of the same variables.
    """

    def __init__(self, obj: Any):
        self.obj = obj


def load_hub_module(handle: str) -> Any:
    """Load a TF2 SavedModel from a local folder, a tfhub.dev/Kaggle handle or a URL.

    Args:
        handle: the part after ``hub:`` in ``model.backbone``.

    Returns:
        The loaded, callable SavedModel object.

    Raises:
        FileNotFoundError: a local path that does not exist or is not a SavedModel.
        ValueError: the handle could not be loaded, or the object is not callable.
    """
    where = f"model.backbone: hub:{handle}"
    path = Path(handle).expanduser()
    looks_local = path.exists() or handle.startswith(("/", ".", "~")) or (len(handle) > 1 and handle[1] == ":")
    if looks_local:
        if not (path / "saved_model.pb").is_file():
            raise FileNotFoundError(
                f"{where}: {path} is not a SavedModel folder (no saved_model.pb); "
                "give a TF2 SavedModel folder, a tfhub.dev/Kaggle handle or a URL"
            )
        obj = tf.saved_model.load(str(path))
    else:
        try:
            import tensorflow_hub as hub  # loads tf_keras (Keras 2, 0.3 s): only hub handles need it
        except ImportError as exc:
            raise ImportError(f"{where}: tensorflow-hub is needed for hub handles; pip install tensorflow-hub") from exc
        try:
            obj = hub.load(handle)
        except Exception as exc:
            raise ValueError(
                f"{where}: could not load ({exc}); without internet access download the model "
                "elsewhere and give its local SavedModel folder"
            ) from exc
    if not callable(obj):
        raise ValueError(
            f"{where}: the SavedModel is not callable (a TF1 hub.Module?); use a TF2 reusable SavedModel"
        )
    return obj


def _call_signatures(obj: Any) -> list[tuple[tuple, dict]]:
    functions = getattr(getattr(obj, "__call__", None), "concrete_functions", None) or []
    return [fn.structured_input_signature for fn in functions]


def _fixed_input_size(obj: Any) -> tuple[int, int] | None:
    """The (H, W) the SavedModel's call requires, or None when any size is accepted."""
    for sig in _call_signatures(obj):
        for spec in tf.nest.flatten(sig):
            if isinstance(spec, tf.TensorSpec) and spec.shape.rank == 4:
                h, w = spec.shape[1], spec.shape[2]
                return (int(h), int(w)) if h and w else None
    return None


def _accepts_training(obj: Any) -> bool:
    signatures = _call_signatures(obj)
    if not signatures:
        return True  # the TF Hub reusable-SavedModel API promises the argument
    return any(len(args) > 1 or "training" in kwargs for args, kwargs in signatures)


def _sanitise(name: str) -> str:
    """A Keras-safe variable name: no ':0' suffix and no '/' (Keras and its optimizers refuse them)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", re.sub(r":\d+$", "", name))


@keras.saving.register_keras_serializable(package="medtl")
class HubBackbone(keras.layers.Layer):
    """A TF Hub image model (feature vector) whose variables Keras trains and saves.

    Input: float32 RGB images in ``[0, 1]``; they are resized to the model's fixed input size
    when it has one. Output: whatever the SavedModel returns (``[batch, features]`` for a
    feature-vector model).

    Saving stores the handle and the variable values; loading re-loads the SavedModel from the
    handle (so it must still be reachable) and then restores the saved values.

    Args:
        handle: local SavedModel folder, tfhub.dev/Kaggle handle or URL.
        input_size: ``(H, W)`` to resize to; by default read from the SavedModel's signature.

    Example:
        >>> backbone = HubBackbone("https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5")
    """

    def __init__(self, handle: str, input_size: tuple[int, int] | list[int] | None = None, **kwargs):
        # The SavedModel computes in float32 whatever the global policy says.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.handle = str(handle)
        obj = load_hub_module(self.handle)
        self._module = _Opaque(obj)
        self._training_arg = _accepts_training(obj)
        size = input_size if input_size is not None else _fixed_input_size(obj)
        self.input_size = tuple(int(s) for s in size) if size is not None else None
        names = [_sanitise(v.name) for v in obj.variables]
        names = [n if names.count(n) == 1 else f"{n}_{i}" for i, n in enumerate(names)]
        self._hub_variables = [
            keras.Variable(v, trainable=v.trainable, name=n) for v, n in zip(obj.variables, names)
        ]
        # Models read each variable's own flag, and these were made after Layer.__init__ had
        # stored trainable=False (e.g. when loading a frozen model): pass it on.
        if not self.trainable:
            for v in self._hub_variables:
                v.trainable = False
        self.built = True

    def build(self, input_shape=None):
        self.built = True

    def call(self, images):
        x = ops.cast(images, "float32")
        if self.input_size is not None and tuple(x.shape[1:3]) != self.input_size:
            x = ops.image.resize(x, self.input_size, interpolation="bilinear")
        fn = self._module.obj
        return fn(x, training=False) if self._training_arg else fn(x)

    def save_own_variables(self, store) -> None:
        # By name, not by position, so a handle that now points elsewhere fails loudly.
        for v in self._hub_variables:
            store[v.name] = v.numpy()

    def load_own_variables(self, store) -> None:
        saved = set(store.keys())
        missing = [v.name for v in self._hub_variables if v.name not in saved]
        if missing or len(saved) != len(self._hub_variables):
            raise ValueError(
                f"hub:{self.handle}: the saved model holds {len(saved)} values but this SavedModel has "
                f"{len(self._hub_variables)} variables (missing e.g. {missing[:3]}); the handle now "
                "points to a different model; load it with the SavedModel it was trained from"
            )
        for v in self._hub_variables:
            v.assign(store[v.name])

    def get_config(self) -> dict:
        return {**super().get_config(), "handle": self.handle, "input_size": self.input_size}
