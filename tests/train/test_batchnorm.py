"""Re-estimated BatchNormalization statistics for backbones trained from random weights."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from medtl.train.batchnorm import recalibrate_batchnorm, trainable_batchnorm
from tests.train.conftest import tiny_config


def _bn_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inp)
    x = keras.layers.BatchNormalization(momentum=0.99, name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(2, 3, padding="same")(x)
    x = keras.layers.BatchNormalization(momentum=0.99, name="bn2")(x)
    out = keras.layers.Dense(1)(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inp, out)


def test_statistics_are_the_size_weighted_average_of_the_batch_statistics():
    model = _bn_model()
    rng = np.random.default_rng(1)
    batches = [rng.normal(3.0, 2.0, (n, 8, 8, 1)).astype("float32") for n in (8, 8, 5)]
    conv = keras.Model(model.input, model.get_layer("conv").output)
    feats = [keras.ops.convert_to_numpy(conv(b)) for b in batches]
    sizes = np.array([len(b) for b in batches], float)
    want_mean = sum(n * f.mean(axis=(0, 1, 2)) for n, f in zip(sizes, feats)) / sizes.sum()
    want_var = sum(n * f.var(axis=(0, 1, 2)) for n, f in zip(sizes, feats)) / sizes.sum()
    seen = recalibrate_batchnorm(model, [(b, np.zeros(len(b))) for b in batches])
    bn = model.get_layer("bn")
    assert seen == 21
    np.testing.assert_allclose(bn.moving_mean.numpy(), want_mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), want_var, rtol=1e-4)
    assert bn.momentum == 0.99  # restored
    # The deeper layer got statistics too (away from the initial mean 0 / variance 1).
    assert not np.allclose(model.get_layer("bn2").moving_variance.numpy(), 1.0)
    # max_batches: only the first batch counts.
    assert recalibrate_batchnorm(model, batches, max_batches=1) == 8
    np.testing.assert_allclose(bn.moving_mean.numpy(), feats[0].mean(axis=(0, 1, 2)),
                               rtol=1e-4, atol=1e-5)


def test_frozen_batchnorm_is_left_alone_and_empty_data_is_an_error():
    model = _bn_model()
    model.get_layer("bn").trainable = False
    assert [layer.name for layer in trainable_batchnorm(model)] == ["bn2"]
    before = model.get_layer("bn").moving_variance.numpy().copy()
    recalibrate_batchnorm(model, [np.ones((4, 8, 8, 1), np.float32)])
    np.testing.assert_array_equal(model.get_layer("bn").moving_variance.numpy(), before)
    model.trainable = False
    assert recalibrate_batchnorm(model, []) == 0  # nothing to do, so no data needed
    model.trainable = True
    with pytest.raises(ValueError, match="no batches"):
        recalibrate_batchnorm(model, [])


def test_mobilenet_from_random_weights_gives_informative_scores(tiny_data, tmp_path):
    """Kermany, MobileNetV2 from random weights: training ROC AUC 0.99 while every film got the
    same score at inference, from moving statistics far from the weights' own. Here the best
    model's scores on the validation films must differ."""
    from medtl.train.trainer import train

    cfg = tiny_config(
        tiny_data, tmp_path, augment={"preset": "none"},
        model={"backbone": "mobilenetv2", "weights": "none", "dropout": 0.0},
        train={"stages": [{"unfreeze": "all", "epochs": 2, "lr": 1e-3}]},
    )
    res = train(cfg, progress=False)
    scores = res.val_predictions["score"].to_numpy()
    assert np.ptp(scores) > 1e-3, f"every validation film got (nearly) the same score: {scores[:5]}"


def test_partly_frozen_random_backbone_is_warned_about(tiny_data, tmp_path):
    from medtl.train.trainer import train

    cfg = tiny_config(
        tiny_data, tmp_path, augment={"preset": "none"},
        model={"backbone": "smallcnn", "weights": "none", "dropout": 0.0},
        train={"stages": [{"unfreeze": "head", "epochs": 1, "lr": 1e-3}]},
    )
    with pytest.warns(RuntimeWarning, match=r"stages\[0\].unfreeze is 'head' but model.weights is none"):
        train(cfg, progress=False)
