"""HubBackbone: a real TF Hub-style SavedModel (EfficientNet-Lite0) inside Keras 3."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from medtl.models.hub import HubBackbone, load_hub_module


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).random((2, 224, 224, 3), dtype=np.float32)


def _head_model(layer: HubBackbone, seed: int = 0) -> keras.Model:
    inputs = keras.Input((224, 224, 3))
    outputs = keras.layers.Dense(1, activation="sigmoid", kernel_initializer=keras.initializers.GlorotUniform(seed))(
        layer(inputs)
    )
    return keras.Model(inputs, outputs)


def _values(variables) -> dict[str, np.ndarray]:
    return {v.name: v.numpy().copy() for v in variables}


def _one_step(model: keras.Model, x: np.ndarray) -> None:
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy")
    model.fit(x, np.array([[0.0], [1.0]], "float32"), batch_size=2, epochs=1, verbose=0)


def test_variables_are_registered_with_keras_names(hub_efficientnet_dir, images):
    layer = HubBackbone(str(hub_efficientnet_dir))
    assert layer.input_size == (224, 224)
    assert len(layer.weights) == 245
    assert len(layer.trainable_weights) == 147
    assert all("/" not in v.name and ":" not in v.name for v in layer.weights)
    assert any(v.name == "head_bn_moving_mean" for v in layer.non_trainable_weights)
    out = np.asarray(layer(images))
    assert out.shape == (2, 1280)
    raw = tf.saved_model.load(str(hub_efficientnet_dir))
    np.testing.assert_allclose(out, raw(images, training=False).numpy(), atol=1e-6)


def test_other_sizes_are_resized_to_the_fixed_input(hub_efficientnet_dir, images):
    layer = HubBackbone(str(hub_efficientnet_dir))
    small = images[:, ::4, ::4, :]
    expected = layer(tf.image.resize(small, (224, 224), method="bilinear"))
    np.testing.assert_allclose(np.asarray(layer(small)), np.asarray(expected), atol=1e-5)


@pytest.mark.slow  # one fit step through EfficientNet-Lite0 at 224 px: 15-30 s on 2 CPU cores
def test_trainable_step_changes_weights_but_not_batchnorm_statistics(hub_efficientnet_dir, images, tmp_path):
    layer = HubBackbone(str(hub_efficientnet_dir), name="backbone")
    model = _head_model(layer)
    before_train = _values(layer.trainable_weights)
    before_stats = _values(layer.non_trainable_weights)
    before_pred = model.predict(images, verbose=0)
    _one_step(model, images)

    changed = [n for n, v in _values(layer.trainable_weights).items() if not np.array_equal(v, before_train[n])]
    assert len(changed) == 147
    after_stats = _values(layer.non_trainable_weights)
    assert len(after_stats) == 98
    assert all(np.array_equal(after_stats[n], before_stats[n]) for n in before_stats)
    # The Keras variables are the SavedModel's own: its output moves with them.
    assert not np.allclose(model.predict(images, verbose=0), before_pred)

    # Save and load: the handle is re-loaded, then the trained values are restored.
    path = tmp_path / "hub.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), model.predict(images, verbose=0))
    hub_layer = next(lay for lay in loaded.layers if isinstance(lay, HubBackbone))
    assert hub_layer.handle == str(hub_efficientnet_dir)
    trained = _values(layer.weights)
    assert all(np.array_equal(v.numpy(), trained[v.name]) for v in hub_layer.weights)


def test_frozen_step_changes_nothing_in_the_backbone(hub_efficientnet_dir, images):
    layer = HubBackbone(str(hub_efficientnet_dir), trainable=False)
    model = _head_model(layer)
    assert len(model.trainable_weights) == 2  # the Dense kernel and bias
    before = _values(layer.weights)
    dense_before = model.layers[-1].kernel.numpy().copy()
    _one_step(model, images)
    after = _values(layer.weights)
    assert all(np.array_equal(after[n], before[n]) for n in before)
    assert not np.array_equal(model.layers[-1].kernel.numpy(), dense_before)


def test_not_a_savedmodel_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a SavedModel folder"):
        load_hub_module(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="hub:./missing"):
        load_hub_module("./missing")
