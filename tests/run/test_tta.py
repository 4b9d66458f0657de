"""Test-time augmentation (medtl/run/tta.py, ``predict.tta``): the identity view is the plain
prediction exactly, a flip changes nothing for a left-right symmetric model or film, and a flip
is refused for a model trained without flips."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest


def _gap_model(h: int = 32, w: int = 32):
    """A model blind to left-right order: global average pooling, then one sigmoid unit."""
    import keras

    inp = keras.Input((h, w, 1))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 1, activation="relu", kernel_initializer=keras.initializers.GlorotUniform(seed=1))(inp))
    return keras.Model(inp, keras.layers.Dense(1, activation="sigmoid", kernel_initializer=keras.initializers.GlorotUniform(seed=2))(x))


def _conv_model(h: int = 32, w: int = 32):
    """A model that does see left from right (a 3x3 convolution then a dense layer over positions)."""
    import keras

    inp = keras.Input((h, w, 1))
    x = keras.layers.Flatten()(keras.layers.Conv2D(2, 3, kernel_initializer=keras.initializers.GlorotUniform(seed=3))(inp))
    return keras.Model(inp, keras.layers.Dense(1, activation="sigmoid", kernel_initializer=keras.initializers.GlorotUniform(seed=4))(x))


def test_views_keep_the_shape_and_start_with_the_film():
    from medtl.run.tta import tta_views

    x = np.random.default_rng(0).random((3, 32, 40, 1), dtype=np.float32)
    for mode, n in (("none", 1), ("flip", 2), ("shift", 5), ("flip+shift", 6)):
        views = tta_views(mode)
        assert len(views) == n
        assert np.array_equal(views[0](x), x)
        assert all(v(x).shape == x.shape and v(x).dtype == x.dtype for v in views)
    assert not np.array_equal(tta_views("shift")[1](x), x)
    with pytest.raises(ValueError, match="flip\\+shift"):
        tta_views("rotate")


def test_identity_tta_is_the_plain_prediction_exactly():
    import tensorflow as tf

    from medtl.run.tta import predict_dataset_views, predict_views, tta_views

    model = _conv_model()
    x = np.random.default_rng(1).random((5, 32, 32, 1), dtype=np.float32)
    plain = np.asarray(model.predict_on_batch(x), dtype=np.float64)
    assert np.array_equal(predict_views(model, x, tta_views("none")), plain)
    ds = tf.data.Dataset.from_tensor_slices(x).batch(2)
    assert np.array_equal(predict_dataset_views(model, ds, tta_views("none")),
                          np.asarray(model.predict(ds, verbose=0), dtype=np.float64))
    # More views: the same numbers batch by batch or over a dataset
    np.testing.assert_allclose(predict_dataset_views(model, ds, tta_views("shift")),
                               predict_views(model, x, tta_views("shift")), atol=1e-6)


def test_flip_changes_nothing_for_a_symmetric_model_or_film():
    from medtl.run.tta import predict_views, tta_views

    x = np.random.default_rng(2).random((4, 32, 32, 1), dtype=np.float32)
    gap = _gap_model()
    np.testing.assert_allclose(predict_views(gap, x, tta_views("flip")), gap.predict_on_batch(x), atol=1e-6)
    sym = np.concatenate([x[:, :, :16], x[:, :, :16][:, :, ::-1]], axis=2)  # a left-right symmetric film
    conv = _conv_model()
    assert np.array_equal(predict_views(conv, sym, tta_views("flip")),
                          np.asarray(conv.predict_on_batch(sym), dtype=np.float64))
    assert not np.allclose(predict_views(conv, x, tta_views("flip")), conv.predict_on_batch(x))


def test_predictor_tta_none_equals_plain_and_flip_is_refused(reference_run):
    from medtl.config import ConfigError, config_from_dict
    from medtl.run.predictor import Predictor

    cfg, res = reference_run
    paths = pd.read_csv(res.run_dir / "val_predictions.csv")["path"].tolist()[:6]
    plain = Predictor(res.run_dir)
    assert plain.tta == "none"  # the run's own predict.tta: the default
    a = plain.predict_paths(paths, batch_size=4)
    b = Predictor(res.run_dir, tta="none").predict_paths(paths, batch_size=4)
    pd.testing.assert_frame_equal(a, b)
    shifted = Predictor(res.run_dir, tta="shift").predict_paths(paths, batch_size=4)
    assert shifted["score"].between(0, 1).all() and shifted["path"].tolist() == paths
    with pytest.raises(ValueError, match="augment.hflip"):
        Predictor(res.run_dir, tta="flip")
    raw = cfg.to_dict()
    raw["predict"] = {"tta": "flip"}
    with pytest.raises(ConfigError, match="predict.tta.*augment.hflip"):
        config_from_dict(raw)
    raw["augment"]["hflip"] = True
    assert config_from_dict(raw).predict.tta == "flip"


def test_each_view_scores_average_to_the_tta_scores():
    """predict_each_view keeps one score per view; their mean is predict_views, batch by batch or
    over a dataset, and one view is the plain prediction (no per-view scores kept)."""
    import tensorflow as tf

    from medtl.run.predictor import MemberScores
    from medtl.run.tta import predict_dataset_each_view, predict_each_view, predict_views, tta_views

    model = _conv_model()
    x = np.random.default_rng(3).random((5, 32, 32, 1), dtype=np.float32)
    views = tta_views("flip+shift")
    each = predict_each_view(model, x, views)
    assert each.shape == (6, 5, 1)
    assert np.array_equal(each[0], np.asarray(model.predict_on_batch(x), dtype=np.float64))
    np.testing.assert_allclose(each[-1], model.predict_on_batch(x[:, :, ::-1]), atol=1e-6)
    np.testing.assert_allclose(each.mean(axis=0), predict_views(model, x, views), rtol=0, atol=0)
    ds = tf.data.Dataset.from_tensor_slices(x).batch(2)
    np.testing.assert_allclose(predict_dataset_each_view(model, ds, views), each, atol=1e-6)
    assert predict_dataset_each_view(model, ds, tta_views("none")).shape == (1, 5, 1)

    one = MemberScores.of_views([predict_each_view(model, x, tta_views("none"))])
    assert one.views is None and np.array_equal(one[0], np.asarray(model.predict_on_batch(x), dtype=np.float64))
    many = MemberScores.of_views([each, 2 * each])
    assert len(many) == 2 and many.views[1].shape == (6, 5, 1)
    np.testing.assert_allclose(many[1], 2 * each.mean(axis=0))
    cut = MemberScores.concat([many.head(2), many.head(3)])
    assert cut[0].shape == (5, 1) and cut.views[0].shape == (6, 5, 1)
