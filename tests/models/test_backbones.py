"""Backbone registry: preprocessing equals Keras', block structures, weight loading."""

from __future__ import annotations

import h5py
import keras
import numpy as np
import pytest

from medtl.models.backbones import (
    BACKBONES,
    BackbonePreprocessing,
    backbone_blocks,
    build_backbone,
    get_backbone_spec,
)

KERAS_PREPROCESS = {
    "vgg16": keras.applications.vgg16.preprocess_input,
    "resnet50": keras.applications.resnet50.preprocess_input,
    "resnet50v2": keras.applications.resnet_v2.preprocess_input,
    "densenet121": keras.applications.densenet.preprocess_input,
    "efficientnetb0": keras.applications.efficientnet.preprocess_input,
    "mobilenetv2": keras.applications.mobilenet_v2.preprocess_input,
}

EXPECTED_BLOCKS = {
    "vgg16": ["block5", "block4", "block3", "block2", "block1"],
    "resnet50": ["conv5", "conv4", "conv3", "conv2"],
    "resnet50v2": ["conv5", "conv4", "conv3", "conv2"],
    "densenet121": ["conv5", "conv4", "conv3", "conv2"],
    "efficientnetb0": ["block7", "block6", "block5", "block4", "block3", "block2", "block1"],
    "mobilenetv2": [f"block_{i}" for i in range(16, 0, -1)] + ["expanded_conv"],
}


# Layers after the last block that must train with the top block.
TOP_LAYERS = {
    "smallcnn": {"cnn_block4_conv2"},
    "vgg16": {"block5_conv3"},
    "resnet50": {"conv5_block3_3_conv"},
    "resnet50v2": {"post_bn", "conv5_block3_3_conv"},
    "densenet121": {"bn", "conv5_block16_2_conv", "pool4_conv"},
    "efficientnetb0": {"top_conv", "top_bn", "block7a_project_conv"},
    "mobilenetv2": {"Conv_1", "Conv_1_bn", "block_16_project"},
}


def test_registry_has_the_six_applications_and_smallcnn():
    assert sorted(BACKBONES) == sorted([*KERAS_PREPROCESS, "smallcnn"])
    blocks = {n: [b.name for b in s.blocks] for n, s in BACKBONES.items()}
    assert blocks.pop("smallcnn") == ["cnn_block4", "cnn_block3", "cnn_block2", "cnn_block1"]
    assert blocks == EXPECTED_BLOCKS


def test_unknown_backbone_lists_the_known_ones():
    with pytest.raises(ValueError, match="resnet50.*vgg16|vgg16.*resnet50") as err:
        get_backbone_spec("resnet18")
    assert "'resnet18'" in str(err.value) and "hub:" in str(err.value)
    assert get_backbone_spec("VGG16").name == "vgg16"


@pytest.mark.parametrize("name", sorted(KERAS_PREPROCESS))
def test_preprocessing_matches_keras_preprocess_input(name):
    rng = np.random.default_rng(0)
    rgb = rng.random((2, 5, 7, 3), dtype=np.float32)
    layer = BackbonePreprocessing(get_backbone_spec(name).preprocessing, backbone=name)
    expected = KERAS_PREPROCESS[name](rgb.copy() * 255.0)
    np.testing.assert_allclose(np.asarray(layer(rgb)), expected, rtol=1e-5, atol=1e-4)
    # Grey input is repeated to three channels first.
    grey = rgb[..., :1]
    expected_grey = KERAS_PREPROCESS[name](np.repeat(grey, 3, axis=-1) * 255.0)
    np.testing.assert_allclose(np.asarray(layer(grey)), expected_grey, rtol=1e-5, atol=1e-4)


def test_unit_mode_keeps_zero_one_rgb():
    grey = np.linspace(0, 1, 12, dtype=np.float32).reshape(1, 3, 4, 1)
    out = np.asarray(BackbonePreprocessing("unit")(grey))
    assert out.shape == (1, 3, 4, 3)
    np.testing.assert_array_equal(out, np.repeat(grey, 3, axis=-1))


def test_preprocessing_serialises_and_rejects_bad_mode():
    layer = BackbonePreprocessing("torch", backbone="densenet121", name="preprocess")
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert (clone.mode, clone.backbone, clone.name) == ("torch", "densenet121", "preprocess")
    with pytest.raises(ValueError, match="unknown mode 'bgr'"):
        BackbonePreprocessing("bgr")


def _weighted(layer) -> bool:
    return bool(layer.weights) and not getattr(layer, "layers", None)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_block_structure_covers_the_network_top_down(name):
    spec = get_backbone_spec(name)
    base = build_backbone(name, "none", (32, 32, 3))
    assert base.name == "backbone"
    order = {id(layer): i for i, layer in enumerate(base.layers)}
    blocks = backbone_blocks(base, spec)
    seen: set[int] = set()
    for block, layers in blocks:
        ids = {id(layer) for layer in layers if _weighted(layer)}
        assert ids, f"{name}: block {block.name} matches no layer with weights"
        assert not ids & seen, f"{name}: block {block.name} overlaps another block"
        seen |= ids
    # Blocks are ordered top first: each block starts after the one below it.
    starts = [min(order[id(layer)] for layer in layers) for _, layers in blocks]
    assert starts == sorted(starts, reverse=True)
    # Everything with weights outside the blocks is the stem, below the bottom block ...
    # (VGG16 and smallcnn have none: their block1 is the first convolution).
    stem = [layer for layer in base.layers if _weighted(layer) and id(layer) not in seen]
    assert all(order[id(layer)] < starts[-1] for layer in stem)
    assert bool(stem) == (name not in ("vgg16", "smallcnn"))
    # ... and the last layer with weights (e.g. top_conv / Conv_1 / post_bn) is in the top block.
    last = [layer for layer in base.layers if _weighted(layer)][-1]
    assert id(last) in {id(layer) for layer in blocks[0][1]}
    top = {layer.name for layer in blocks[0][1]}
    assert TOP_LAYERS[name] <= top
    assert not any(n.startswith(("conv4_", "block6", "block_15_", "block4_")) for n in top)


def test_weights_from_a_file_written_here(tmp_path):
    src = build_backbone("vgg16", "none", (32, 32, 3))
    path = tmp_path / "vgg16.weights.h5"
    src.save_weights(path)
    loaded = build_backbone("vgg16", str(path), (32, 32, 3))
    for a, b in zip(src.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    fresh = build_backbone("vgg16", "none", (32, 32, 3))
    assert not np.array_equal(fresh.get_weights()[0], src.get_weights()[0])


def test_real_mobilenet_imagenet_weights(mobilenet_weights):
    base = build_backbone("mobilenetv2", str(mobilenet_weights), (64, 64, 3))
    # Keras 3 .weights.h5 files key layers by class and position: conv2d, conv2d_1, ...
    convs = [layer for layer in base.layers if type(layer) is keras.layers.Conv2D]
    assert (convs[0].name, convs[-1].name) == ("Conv1", "Conv_1")
    with h5py.File(mobilenet_weights, "r") as f:
        for i in (0, len(convs) - 2, len(convs) - 1):
            stored = f[f"layers/conv2d{'_' + str(i) if i else ''}/vars/0"][()]
            np.testing.assert_array_equal(convs[i].kernel.numpy(), stored)


def test_missing_weights_file(tmp_path):
    missing = tmp_path / "nope.weights.h5"
    with pytest.raises(FileNotFoundError, match="model.weights: .*nope.weights.h5 not found"):
        build_backbone("resnet50", str(missing), (32, 32, 3))


def test_weights_file_of_another_architecture(tmp_path):
    path = tmp_path / "vgg16.weights.h5"
    build_backbone("vgg16", "none", (32, 32, 3)).save_weights(path)
    with pytest.raises(ValueError, match=r"vgg16.weights.h5 does not fit backbone resnet50"):
        build_backbone("resnet50", str(path), (32, 32, 3))


@pytest.mark.parametrize("name, file", [("vgg16", "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"), ("efficientnetb0", "efficientnetb0_notop.h5")])
def test_imagenet_asks_keras_for_its_own_file_and_explains_failure(monkeypatch, name, file):
    from keras.src.utils import file_utils

    asked = []

    def offline(fname, *args, **kwargs):
        asked.append(fname)
        raise Exception("URL fetch failure: no network")  # what Keras raises offline

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(RuntimeError, match=f"ImageNet weights of {name}.*local weights file or none"):
        build_backbone(name, "imagenet", (32, 32, 3))
    assert asked == [file]


def test_too_small_input_names_the_image_size():
    with pytest.raises(ValueError, match=r"data.image_size \[16, 16\]: vgg16"):
        build_backbone("vgg16", "none", (16, 16, 3))


def test_efficientnet_imagenet_statistics_from_a_file_warn(tmp_path):
    src = build_backbone("efficientnetb0", "none", (32, 32, 3))
    norm = next(layer for layer in src.layers if isinstance(layer, keras.layers.Normalization))
    norm.adapt_mean.assign(np.array([0.485, 0.456, 0.406], "float32"))
    path = tmp_path / "effb0.weights.h5"
    src.save_weights(path)
    with pytest.warns(UserWarning, match="extra ImageNet rescaling"):
        build_backbone("efficientnetb0", str(path), (32, 32, 3))


def test_smallcnn_builds_with_four_blocks_and_refuses_imagenet():
    from medtl.models.backbones import backbone_blocks, build_backbone, get_backbone_spec

    base = build_backbone("smallcnn", "none", (64, 48, 3))
    assert base.name == "backbone"
    assert base.output.shape[1:] == (8, 6, 128)
    blocks = backbone_blocks(base, get_backbone_spec("smallcnn"))
    assert [b.name for b, _ in blocks] == ["cnn_block4", "cnn_block3", "cnn_block2", "cnn_block1"]
    assert all(len(layers) >= 6 for _, layers in blocks)
    with pytest.raises(ValueError, match="smallcnn has no pretrained"):
        build_backbone("smallcnn", "imagenet", (64, 64, 3))


def test_scratch_backbone_batchnorm_statistics_settle_within_tens_of_steps():
    # With Keras' momentum (0.999 for MobileNetV2) a backbone trained from scratch on a small
    # data set keeps its initial moving statistics and predicts a constant at inference.
    scratch = build_backbone("mobilenetv2", "none", (32, 32, 3))
    bns = [layer for layer in scratch.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and all(layer.momentum == pytest.approx(0.9) for layer in bns)
    x = np.random.default_rng(0).uniform(1.0, 3.0, (8, 32, 32, 3)).astype("float32")
    first = bns[0]
    for _ in range(30):
        scratch(x, training=True)
    before_bn = keras.Model(scratch.input, first.input)
    batch_mean = keras.ops.convert_to_numpy(before_bn(x)).mean(axis=(0, 1, 2))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(first.moving_mean), batch_mean, rtol=0.05, atol=1e-3)


def test_pretrained_backbone_keeps_the_momentum_it_was_trained_with(mobilenet_weights):
    pretrained = build_backbone("mobilenetv2", str(mobilenet_weights), (32, 32, 3))
    assert {layer.momentum for layer in pretrained.layers if isinstance(layer, keras.layers.BatchNormalization)} == {0.999}
