"""Losses and class weights: hand-worked values, scikit-learn and Keras as references."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from sklearn.metrics import log_loss

from medtl.config import LossConfig
from medtl.train.losses import BinaryLoss, CategoricalLoss, compute_class_weights, infer_task, make_loss


def value(loss, y, p) -> float:
    return float(loss(np.asarray(y, "float32"), np.asarray(p, "float32")))


# --- class weights -------------------------------------------------------------------------


def test_balanced_binary_weights():
    y = np.array([[0]] * 8 + [[1]] * 2, "float32")
    w = compute_class_weights(y, "balanced", ["NORMAL", "PNEUMONIA"])
    # n / (2 * count): 10 / 16 for the 8 negatives, 10 / 4 for the 2 positives.
    np.testing.assert_allclose(w, [[0.625], [2.5]])
    assert w.dtype == np.float32


def test_balanced_multiclass_weights():
    y = np.eye(3, dtype="float32")[[0] * 5 + [1] * 3 + [2] * 2]
    w = compute_class_weights(y, "balanced", ["a", "b", "c"])
    np.testing.assert_allclose(w, [10 / 15, 10 / 9, 10 / 6], rtol=1e-6)


def test_balanced_multilabel_weights_are_per_label():
    y = np.array([[1, 0], [1, 1], [0, 0], [0, 0], [0, 0], [1, 0], [0, 0], [0, 0]], "float32")
    w = compute_class_weights(y, "balanced", ["effusion", "nodule"], task="multilabel")
    # effusion: 3 present / 5 absent of 8; nodule: 1 present / 7 absent.
    np.testing.assert_allclose(w, [[8 / 10, 8 / 14], [8 / 6, 8 / 2]], rtol=1e-6)


def test_none_and_mapping_weights():
    y = np.array([[0], [1]], "float32")
    assert compute_class_weights(y, "none", ["neg", "pos"]) is None
    assert compute_class_weights(y, None, ["neg", "pos"]) is None
    np.testing.assert_allclose(compute_class_weights(y, {"pos": 4.0}, ["neg", "pos"]), [[1.0], [4.0]])
    np.testing.assert_allclose(compute_class_weights(y, {"0": 0.5, 1: 3}, ["neg", "pos"]), [[0.5], [3.0]])
    y3 = np.eye(3, dtype="float32")
    np.testing.assert_allclose(compute_class_weights(y3, {"c": 2.0}, ["a", "b", "c"]), [1.0, 1.0, 2.0])
    ml = compute_class_weights(np.array([[1, 0], [1, 1]], "float32"), {"nodule": 5}, ["effusion", "nodule"])
    np.testing.assert_allclose(ml, [[1.0, 1.0], [1.0, 5.0]])


def test_mapping_errors_name_the_classes():
    y = np.array([[0], [1]], "float32")
    with pytest.raises(ValueError, match="unknown class 'PNEUMONIA'; classes are normal, pneumonia"):
        compute_class_weights(y, {"PNEUMONIA": 2.0}, ["normal", "pneumonia"])
    with pytest.raises(ValueError, match=r"class_weight.pneumonia: invalid value -1"):
        compute_class_weights(y, {"pneumonia": -1}, ["normal", "pneumonia"])
    with pytest.raises(ValueError, match="expected balanced, none or a mapping"):
        compute_class_weights(y, "inverse", ["normal", "pneumonia"])


def test_balanced_needs_every_class_in_the_training_split():
    with pytest.raises(ValueError, match="no samples of pneumonia"):
        compute_class_weights(np.zeros((5, 1), "float32"), "balanced", ["normal", "pneumonia"])
    y = np.array([[1, 0], [1, 0]], "float32")
    with pytest.raises(ValueError, match=r"effusion \(absent\), nodule \(present\)"):
        compute_class_weights(y, "balanced", ["effusion", "nodule"], task="multilabel")


def test_infer_task():
    assert infer_task(np.zeros((3, 1))) == "binary"
    assert infer_task(np.eye(3)) == "multiclass"
    assert infer_task(np.array([[1, 1, 0], [0, 0, 0]])) == "multilabel"


# --- losses --------------------------------------------------------------------------------

Y_BIN = np.array([[0], [0], [0], [0], [0], [0], [1], [1]], "float32")
P_BIN = np.array([[0.1], [0.3], [0.2], [0.6], [0.05], [0.4], [0.7], [0.35]], "float32")


def test_weighted_bce_equals_sklearn_log_loss_with_sample_weight():
    w = compute_class_weights(Y_BIN, "balanced", ["neg", "pos"])
    loss = make_loss(LossConfig(name="bce"), "binary", w)
    sample_w = np.where(Y_BIN[:, 0] == 1, w[1, 0], w[0, 0])
    # Balanced weights sum to n, so the weighted mean and Keras' sum / n coincide.
    assert sample_w.sum() == pytest.approx(len(Y_BIN))
    expected = log_loss(Y_BIN[:, 0], P_BIN[:, 0], sample_weight=sample_w)
    assert value(loss, Y_BIN, P_BIN) == pytest.approx(expected, rel=1e-5)
    # Any other weights: medtl's value is sum(w * l) / n.
    loss = make_loss(LossConfig(name="bce"), "binary", np.array([[1.0], [5.0]]))
    sample_w = np.where(Y_BIN[:, 0] == 1, 5.0, 1.0)
    expected = log_loss(Y_BIN[:, 0], P_BIN[:, 0], sample_weight=sample_w) * sample_w.sum() / len(Y_BIN)
    assert value(loss, Y_BIN, P_BIN) == pytest.approx(expected, rel=1e-5)


def test_unweighted_losses_equal_keras():
    assert value(make_loss(LossConfig(name="bce"), "binary", None), Y_BIN, P_BIN) == pytest.approx(
        float(keras.losses.BinaryCrossentropy()(Y_BIN, P_BIN)), rel=1e-5
    )
    y = np.eye(3, dtype="float32")[[0, 2, 1, 2]]
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4], [0.5, 0.25, 0.25]], "float32")
    assert value(make_loss(LossConfig(name="cce"), "multiclass", None), y, p) == pytest.approx(
        float(keras.losses.CategoricalCrossentropy()(y, p)), rel=1e-5
    )


def test_weighted_cce_hand_worked():
    y = np.eye(2, dtype="float32")[[0, 1]]
    p = np.array([[0.8, 0.2], [0.4, 0.6]], "float32")
    loss = make_loss(LossConfig(name="cce"), "multiclass", np.array([1.0, 3.0]))
    expected = (1.0 * -np.log(0.8) + 3.0 * -np.log(0.6)) / 2
    assert value(loss, y, p) == pytest.approx(expected, rel=1e-5)


def test_focal_with_gamma_zero_is_cross_entropy():
    w = np.array([[0.7], [2.0]])
    bce = make_loss(LossConfig(name="bce"), "binary", w)
    focal = make_loss(LossConfig(name="focal", gamma=0.0), "binary", w)
    assert value(focal, Y_BIN, P_BIN) == pytest.approx(value(bce, Y_BIN, P_BIN), rel=1e-6)
    y = np.eye(3, dtype="float32")[[0, 2, 1]]
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]], "float32")
    cce = make_loss(LossConfig(name="cce"), "multiclass", np.array([1.0, 2.0, 3.0]))
    cfocal = make_loss(LossConfig(name="focal", gamma=0.0), "multiclass", np.array([1.0, 2.0, 3.0]))
    assert value(cfocal, y, p) == pytest.approx(value(cce, y, p), rel=1e-6)


def test_focal_equals_keras_focal_losses():
    ours = make_loss(LossConfig(name="focal", gamma=2.0, alpha=0.25), "binary", None)
    ref = keras.losses.BinaryFocalCrossentropy(apply_class_balancing=True, alpha=0.25, gamma=2.0)
    assert value(ours, Y_BIN, P_BIN) == pytest.approx(float(ref(Y_BIN, P_BIN)), rel=1e-5)
    # Hand-worked, one positive at p = 0.9: (1 - 0.9)^2 * -log(0.9) * 0.25.
    assert value(ours, [[1.0]], [[0.9]]) == pytest.approx(0.01 * -np.log(0.9) * 0.25, rel=1e-5)
    y = np.eye(3, dtype="float32")[[0, 2, 1]]
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]], "float32")
    cours = make_loss(LossConfig(name="focal", gamma=2.0, alpha=0.25), "multiclass", None)
    cref = keras.losses.CategoricalFocalCrossentropy(alpha=0.25, gamma=2.0)
    assert value(cours, y, p) == pytest.approx(float(cref(y, p)), rel=1e-5)


def test_label_smoothing():
    loss = make_loss(LossConfig(name="bce", label_smoothing=0.2), "binary", None)
    # The target 1 becomes 0.9: -(0.9 log 0.8 + 0.1 log 0.2).
    assert value(loss, [[1.0]], [[0.8]]) == pytest.approx(-(0.9 * np.log(0.8) + 0.1 * np.log(0.2)), rel=1e-5)
    ref = keras.losses.BinaryCrossentropy(label_smoothing=0.2)
    assert value(loss, Y_BIN, P_BIN) == pytest.approx(float(ref(Y_BIN, P_BIN)), rel=1e-5)
    closs = make_loss(LossConfig(name="cce", label_smoothing=0.3), "multiclass", None)
    y = np.eye(3, dtype="float32")[[0, 2]]
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], "float32")
    cref = keras.losses.CategoricalCrossentropy(label_smoothing=0.3)
    assert value(closs, y, p) == pytest.approx(float(cref(y, p)), rel=1e-5)


def test_multilabel_weights_apply_per_label():
    y = np.array([[1, 0], [0, 1]], "float32")
    p = np.array([[0.9, 0.2], [0.3, 0.6]], "float32")
    w = np.array([[1.0, 2.0], [3.0, 4.0]])  # rows: absent, present; columns: labels
    loss = make_loss(LossConfig(name="bce"), "multilabel", w)
    first = (3.0 * -np.log(0.9) + 2.0 * -np.log(0.8)) / 2
    second = (1.0 * -np.log(0.7) + 4.0 * -np.log(0.6)) / 2
    assert value(loss, y, p) == pytest.approx((first + second) / 2, rel=1e-5)


def test_losses_serialise():
    for loss in (
        BinaryLoss("focal", weights=[[0.5, 1.0], [2.0, 3.0]], gamma=1.5, alpha=0.3, label_smoothing=0.1),
        CategoricalLoss("cce", weights=[1.0, 2.0, 0.5], label_smoothing=0.05),
    ):
        clone = keras.losses.deserialize(keras.losses.serialize(loss))
        assert type(clone) is type(loss)
        k = 2 if isinstance(loss, BinaryLoss) else 3
        y = np.eye(k, dtype="float32")[[0, 1, 1]][:, :k]
        p = np.full((3, k), 0.3, "float32")
        assert value(clone, y, p) == pytest.approx(value(loss, y, p), rel=1e-6)


def test_make_loss_rejects_misfits():
    with pytest.raises(ValueError, match="cce needs task multiclass"):
        make_loss(LossConfig(name="cce"), "binary", None)
    with pytest.raises(ValueError, match="bce is for binary/multilabel"):
        make_loss(LossConfig(name="bce"), "multiclass", None)
    with pytest.raises(ValueError, match=r"shape \(3,\) do not fit task multilabel"):
        make_loss(LossConfig(name="bce"), "multilabel", np.ones(3))
    with pytest.raises(ValueError, match=r"shape \(2, 3\) do not fit task multiclass"):
        make_loss(LossConfig(name="cce"), "multiclass", np.ones((2, 3)))


def test_loss_trains_a_model_with_class_weights():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype("float32")
    y = (x[:, :1] > 1.0).astype("float32")  # about 1 in 6 positive
    w = compute_class_weights(y, "balanced", ["neg", "pos"])
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.Adam(0.1), loss=make_loss(LossConfig(name="focal"), "binary", w))
    history = model.fit(x, y, epochs=20, batch_size=64, verbose=0).history["loss"]
    assert np.isfinite(history).all() and history[-1] < history[0] / 2
