"""Staged unfreezing: exactly which layers train, frozen weights stay put, BN stays in inference."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from medtl.config import Config
from medtl.models import build_model, load_model
from medtl.models.backbones import walk_layers
from medtl.train.stages import backbone_name, describe_stage, set_trainable


def make_cfg(backbone: str, size: int = 32, dropout: float = 0.2, weights: str = "none") -> Config:
    cfg = Config()
    cfg.data.image_size = [size, size]
    cfg.model.backbone = backbone
    cfg.model.weights = weights
    cfg.model.dropout = dropout
    return cfg


def stand_in_weights(name: str, tmp_path_factory, size: int = 32) -> str:
    """A weights file for ``name`` written here: stands in for ImageNet weights offline, so the
    model is built the way a pretrained backbone is fine-tuned (BatchNorm frozen)."""
    from medtl.models.backbones import build_backbone

    path = tmp_path_factory.mktemp("weights") / f"{name}.weights.h5"
    build_backbone(name, "none", (size, size, 3)).save_weights(str(path))
    return str(path)


@pytest.fixture(scope="module")
def vgg(tmp_path_factory) -> keras.Model:
    return build_model(make_cfg("vgg16", weights=stand_in_weights("vgg16", tmp_path_factory)), 1)


@pytest.fixture(scope="module")
def resnet(tmp_path_factory) -> keras.Model:
    # No dropout, so training-mode and inference-mode outputs can be compared exactly.
    return build_model(make_cfg("resnet50", dropout=0.0, weights=stand_in_weights("resnet50", tmp_path_factory)), 1)


@pytest.fixture(scope="module")
def batch() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((4, 32, 32, 1), dtype=np.float32), np.array([[0], [1], [0], [1]], "float32")


def vgg_convs(*blocks: int) -> list[str]:
    n_convs = {1: 2, 2: 2, 3: 3, 4: 3, 5: 3}
    return [f"block{b}_conv{i}" for b in sorted(blocks) for i in range(1, n_convs[b] + 1)]


def backbone_layers(model: keras.Model) -> list[keras.layers.Layer]:
    return walk_layers(model.get_layer("backbone"))


def resnet_convs(model: keras.Model, *prefixes: str) -> list[str]:
    return [
        layer.name
        for layer in backbone_layers(model)
        if isinstance(layer, keras.layers.Conv2D) and layer.name.startswith(prefixes)
    ]


def snapshot(model: keras.Model) -> dict[str, np.ndarray]:
    return {w.path: w.numpy().copy() for w in model.weights}


def one_step(model: keras.Model, batch) -> None:
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="binary_crossentropy")
    model.fit(*batch, batch_size=4, epochs=1, verbose=0, shuffle=False)


def assert_batchnorm_frozen(model: keras.Model) -> None:
    bns = [layer for layer in backbone_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
    assert all(not bn.trainable and not bn.trainable_weights for bn in bns)


def test_vgg16_trainable_layers_per_stage(vgg):
    assert set_trainable(vgg, "head") == ["classifier"]
    assert set_trainable(vgg, 1) == vgg_convs(5) + ["classifier"]
    assert set_trainable(vgg, 2) == vgg_convs(4, 5) + ["classifier"]
    assert set_trainable(vgg, "all") == vgg_convs(1, 2, 3, 4, 5) + ["classifier"]
    assert set_trainable(vgg, 5) == vgg_convs(1, 2, 3, 4, 5) + ["classifier"]
    # Going back to a smaller stage re-freezes what the larger one opened.
    assert set_trainable(vgg, 1) == vgg_convs(5) + ["classifier"]
    assert set_trainable(vgg, "head") == ["classifier"]
    assert [w.path for w in vgg.trainable_weights] == ["classifier/kernel", "classifier/bias"]


def test_resnet50_trainable_layers_per_stage(resnet):
    assert set_trainable(resnet, "head") == ["classifier"]
    assert_batchnorm_frozen(resnet)
    one = set_trainable(resnet, 1)
    assert one == resnet_convs(resnet, "conv5_") + ["classifier"]
    assert len(one) == 3 * 3 + 1 + 1  # three bottleneck units, one projection shortcut, head
    assert_batchnorm_frozen(resnet)
    assert set_trainable(resnet, 2) == resnet_convs(resnet, "conv4_", "conv5_") + ["classifier"]
    four = set_trainable(resnet, 4)
    assert four == resnet_convs(resnet, "conv2_", "conv3_", "conv4_", "conv5_") + ["classifier"]
    assert "conv1_conv" not in four  # the stem trains only with "all"
    everything = set_trainable(resnet, "all")
    assert everything == resnet_convs(resnet, "conv") + ["classifier"]
    assert "conv1_conv" in everything and len(everything) == 53 + 1
    assert_batchnorm_frozen(resnet)


def test_too_many_blocks_and_bad_values(vgg, resnet):
    with pytest.raises(ValueError, match=r"6 blocks, but vgg16 has 5 \(block5, block4, block3, block2, block1\)"):
        set_trainable(vgg, 6)
    with pytest.raises(ValueError, match=r"resnet50 has 4 \(conv5, conv4, conv3, conv2\)"):
        set_trainable(resnet, 5)
    for bad in (0, -1, "top", True, 1.5):
        with pytest.raises(ValueError, match="expected head, all or a number of blocks"):
            set_trainable(vgg, bad)
    assert set_trainable(vgg, "1") == vgg_convs(5) + ["classifier"]


def test_frozen_weights_do_not_move_in_a_training_step(resnet, batch):
    set_trainable(resnet, 1)
    before = snapshot(resnet)
    one_step(resnet, batch)
    after = snapshot(resnet)
    changed = {p for p in before if not np.array_equal(before[p], after[p])}
    trainable = {w.path for w in resnet.trainable_weights}
    assert changed == trainable  # every trainable weight moved, nothing else did
    assert any(p.startswith("conv5_block3_3_conv/") for p in changed)
    assert not any(p.startswith(("conv4_", "conv1_")) or "_bn/" in p for p in changed)


def test_vgg16_frozen_blocks_do_not_move(vgg, batch):
    set_trainable(vgg, 2)
    before = snapshot(vgg)
    one_step(vgg, batch)
    after = snapshot(vgg)
    changed = sorted({p.split("/")[0] for p in before if not np.array_equal(before[p], after[p])})
    assert changed == vgg_convs(4, 5) + ["classifier"]


def test_batchnorm_stays_in_inference_mode_when_all_is_unfrozen(resnet, batch):
    set_trainable(resnet, "all")
    bns = [layer for layer in backbone_layers(resnet) if isinstance(layer, keras.layers.BatchNormalization)]
    stats = [np.concatenate([bn.moving_mean.numpy(), bn.moving_variance.numpy()]) for bn in bns]
    kernel = resnet.get_layer("backbone").get_layer("conv1_conv").kernel.numpy().copy()
    one_step(resnet, batch)
    assert not np.array_equal(resnet.get_layer("backbone").get_layer("conv1_conv").kernel.numpy(), kernel)
    for bn, before in zip(bns, stats):
        np.testing.assert_array_equal(np.concatenate([bn.moving_mean.numpy(), bn.moving_variance.numpy()]), before)
    x = batch[0]
    np.testing.assert_array_equal(np.asarray(resnet(x, training=True)), np.asarray(resnet(x, training=False)))


def test_stage_survives_save_and_load(vgg, tmp_path):
    names = set_trainable(vgg, 1)
    path = tmp_path / "vgg.keras"
    vgg.save(path)
    loaded = load_model(path)
    assert backbone_name(loaded) == "vgg16"
    assert [w.path for w in loaded.trainable_weights] == [w.path for w in vgg.trainable_weights]
    assert set_trainable(loaded, 1) == names
    assert set_trainable(loaded, 2) == vgg_convs(4, 5) + ["classifier"]


def test_describe_stage(vgg):
    set_trainable(vgg, 2)
    text = describe_stage(vgg, 2)
    n_train = sum(int(np.prod(w.shape)) for w in vgg.trainable_weights)
    assert text.startswith("unfreeze 2: vgg16 blocks block5, block4 + head; 7 layers, ")
    assert f"{n_train:,} of " in text
    set_trainable(vgg, "head")
    assert describe_stage(vgg, "head").startswith("unfreeze head: head only; 1 layers, 513 of ")


def test_hub_backbone_supports_head_and_all_only(hub_efficientnet_dir):
    model = build_model(make_cfg(f"hub:{hub_efficientnet_dir}", size=224), 1)
    assert set_trainable(model, "head") == ["classifier"]
    assert set_trainable(model, "all") == ["backbone", "classifier"]
    assert len(model.trainable_weights) == 147 + 2
    with pytest.raises(ValueError, match="1 blocks is not possible with hub:.*use head or all"):
        set_trainable(model, 1)
    assert set_trainable(model, "head") == ["classifier"]
    assert len(model.trainable_weights) == 2


def test_random_weight_backbone_trains_its_batchnorm():
    """Frozen BatchNorm is for fine-tuning pretrained weights; from scratch it must learn."""
    from medtl.config import config_from_dict
    from medtl.models import build_model
    from medtl.train.stages import is_pretrained, set_trainable

    cfg = config_from_dict(
        {"data": {"manifest": "x.csv", "image_size": [32, 32]}, "model": {"backbone": "smallcnn", "weights": "none"},
         "train": {"stages": [{"unfreeze": "all"}]}}
    )
    model = build_model(cfg, 1)
    assert not is_pretrained(model)
    names = set_trainable(model, "all")
    assert "cnn_block1_bn1" in names and "cnn_block4_bn2" in names
    bn = model.get_layer("backbone").get_layer("cnn_block1_bn1")
    before = bn.moving_mean.numpy().copy()
    model.compile(optimizer="adam", loss="binary_crossentropy")
    x = np.random.default_rng(0).random((8, 32, 32, 1)).astype("float32")
    model.fit(x, np.ones((8, 1), "float32"), epochs=1, verbose=0)
    assert not np.allclose(before, bn.moving_mean.numpy()), "BN moving statistics did not learn"
    set_trainable(model, 1)
    assert "cnn_block4_bn1" in set_trainable(model, 1) and "cnn_block1_bn1" not in set_trainable(model, 1)
