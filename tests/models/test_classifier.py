"""build_model: layout, preprocessing inside the model, outputs per task, save and load."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from medtl.config import Config
from medtl.models import build_model, load_model
from medtl.models.backbones import BackbonePreprocessing


def make_cfg(backbone: str = "vgg16", size: int = 32, task: str = "binary", **model) -> Config:
    cfg = Config(task=task)
    cfg.data.image_size = [size, size]
    cfg.model.backbone = backbone
    cfg.model.weights = "none"
    for key, value in model.items():
        setattr(cfg.model, key, value)
    return cfg


@pytest.fixture(scope="module")
def vgg_binary() -> keras.Model:
    return build_model(make_cfg(), 1)


@pytest.fixture(scope="module")
def grey() -> np.ndarray:
    return np.random.default_rng(1).random((3, 32, 32, 1), dtype=np.float32)


def test_layout_and_frozen_backbone(vgg_binary):
    model = vgg_binary
    assert [layer.name for layer in model.layers] == ["image", "preprocess", "backbone", "pool", "dropout", "classifier"]
    assert model.input_shape == (None, 32, 32, 1)
    assert model.output_shape == (None, 1)
    assert isinstance(model.get_layer("backbone"), keras.Model)
    assert model.get_layer("classifier").activation is keras.activations.sigmoid
    # Built in the head stage: only the classifier trains.
    assert [w.path for w in model.trainable_weights] == ["classifier/kernel", "classifier/bias"]


def test_preprocessing_is_inside_the_model(vgg_binary, grey):
    model = vgg_binary
    feed = keras.Model(model.input, model.get_layer("preprocess").output)
    expected = keras.applications.vgg16.preprocess_input(np.repeat(grey, 3, axis=-1) * 255.0)
    np.testing.assert_allclose(feed.predict(grey, verbose=0), expected, atol=1e-4)
    # The backbone is fed exactly that: the whole model equals backbone(preprocessed) + head.
    base = model.get_layer("backbone")
    feats = np.asarray(base(expected, training=False)).mean(axis=(1, 2))
    dense = model.get_layer("classifier")
    manual = 1 / (1 + np.exp(-(feats @ dense.kernel.numpy() + dense.bias.numpy())))
    np.testing.assert_allclose(model.predict(grey, verbose=0), manual, atol=1e-5)


def test_multiclass_softmax_and_max_pooling():
    model = build_model(make_cfg(task="multiclass", pooling="max"), 3)
    out = model.predict(np.random.default_rng(2).random((4, 32, 32, 1), dtype=np.float32), verbose=0)
    assert out.shape == (4, 3)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)
    assert isinstance(model.get_layer("pool"), keras.layers.GlobalMaxPooling2D)


def test_multilabel_independent_sigmoids():
    model = build_model(make_cfg(task="multilabel"), 4)
    out = model.predict(np.zeros((2, 32, 32, 1), "float32"), verbose=0)
    assert out.shape == (2, 4) and np.all((out > 0) & (out < 1))
    assert not np.allclose(out.sum(axis=1), 1.0)


@pytest.mark.parametrize(
    "task, n, message",
    [("binary", 2, "binary needs n_outputs=1"), ("multiclass", 1, "multiclass needs n_outputs >= 2"), ("multilabel", 0, ">= 1")],
)
def test_output_count_must_fit_the_task(task, n, message):
    with pytest.raises(ValueError, match=message):
        build_model(make_cfg(task=task), n)


def test_unknown_backbone():
    with pytest.raises(ValueError, match="unknown backbone 'vgg19'"):
        build_model(make_cfg("vgg19"), 1)


def test_save_and_load_round_trip(vgg_binary, grey, tmp_path):
    path = tmp_path / "model.keras"
    vgg_binary.save(path)
    loaded = load_model(path)
    np.testing.assert_array_equal(loaded.predict(grey, verbose=0), vgg_binary.predict(grey, verbose=0))
    pre = loaded.get_layer("preprocess")
    assert isinstance(pre, BackbonePreprocessing) and (pre.mode, pre.backbone) == ("caffe", "vgg16")
    assert [w.path for w in loaded.trainable_weights] == ["classifier/kernel", "classifier/bias"]
    with pytest.raises(FileNotFoundError, match="model file not found"):
        load_model(tmp_path / "missing.keras")


def test_mixed_precision_output_is_float32():
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = build_model(make_cfg("mobilenetv2"), 1)
        assert model.get_layer("backbone").get_layer("Conv1").compute_dtype == "float16"
        assert model.get_layer("preprocess").compute_dtype == "float32"
        out = model(np.zeros((1, 32, 32, 1), "float32"))
        assert out.dtype == "float32"
    finally:
        keras.config.set_dtype_policy(policy)


def test_hub_backbone_classifier(hub_efficientnet_dir, tmp_path):
    cfg = make_cfg(f"hub:{hub_efficientnet_dir}", size=64)
    model = build_model(cfg, 1)
    assert [layer.name for layer in model.layers] == ["image", "preprocess", "backbone", "dropout", "classifier"]
    assert model.get_layer("preprocess").mode == "unit"
    assert len(model.trainable_weights) == 2
    x = np.random.default_rng(3).random((2, 64, 64, 1), dtype=np.float32)
    path = tmp_path / "hub_model.keras"
    model.save(path)
    np.testing.assert_array_equal(load_model(path).predict(x, verbose=0), model.predict(x, verbose=0))
