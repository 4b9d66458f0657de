"""Tests for medtl.explain.cam: the tapped forward pass, known-answer maps and sanity checks."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from medtl.config import Config  # noqa: E402
from medtl.data.resize import letterbox  # noqa: E402
from medtl.explain.cam import (  # noqa: E402
    METHODS,
    CAMMethod,
    GradCAM,
    GradCAMPlusPlus,
    GradientCAM,
    HiResCAM,
    IntegratedGradients,
    LayerCAM,
    Occlusion,
    ScoreCAM,
    _TappedForward,
    _normalise,
    _resize,
    _target_path,
    compute_cam,
    explain_for_original,
    map_grid,
    method_for_model,
    off_film_share,
    spatial_layers,
)
from medtl.models import build_model, load_model  # noqa: E402
from medtl.registry import GRADIENT, PERTURBATION, map_methods, method_kind  # noqa: E402

# --------------------------------------------------------------------------------------------
# Models


def _medtl_shaped(backbone: keras.Model, size: int, n_out: int = 1) -> keras.Model:
    """The medtl classifier layout: grey->RGB, preprocessing, nested backbone, pooled Dense head."""
    inp = keras.Input((size, size, 1))
    x = keras.layers.Concatenate()([inp, inp, inp])
    x = keras.layers.Rescaling(255.0)(x)
    backbone.name = "backbone"
    x = backbone(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    act = "sigmoid" if n_out == 1 else "softmax"
    out = keras.layers.Dense(n_out, activation=act, name="classifier")(x)
    return keras.Model(inp, out)


# Backbone -> the default target layer: its last convolutional feature map.
_LAST_MAP = {
    "vgg16": "block5_conv3",  # block5_pool is stepped over: pooling would halve the map
    "resnet50": "conv5_block3_out",
    "mobilenetv2": "out_relu",
    "resnet50v2": "post_relu",
    "densenet121": "relu",
    "efficientnetb0": "top_activation",
}


def _app_model(name: str, size: int = 64, n_out: int = 1) -> keras.Model:
    """medtl's own classifier (build_model), untrained weights, small input."""
    cfg = Config(task="binary" if n_out == 1 else "multiclass", seed=0)
    cfg.model.backbone, cfg.model.weights = name, "none"
    cfg.data.image_size = [size, size]
    keras.utils.set_random_seed(0)
    return build_model(cfg, n_outputs=n_out)


@pytest.fixture(scope="module")
def mobilenet() -> keras.Model:
    return _app_model("mobilenetv2", n_out=3)


def _quadrant_model(n_out: int = 1, sequential: bool = False) -> keras.Model:
    """Hand-set 1x1 conv net: channel 0 fires only on intensity ~1 (the top-left square),
    channel 1 on anything above 0.25 (both squares). The classifier weighs channel 0 up and
    channel 1 down, so evidence for the positive class is the top-left square and evidence
    against it the bottom-right one."""
    conv = keras.layers.Conv2D(2, 1, activation="relu", name="features")
    if sequential:
        bb = keras.Sequential([keras.Input((32, 32, 1)), conv], name="backbone")
    else:
        bi = keras.Input((32, 32, 1))
        bb = keras.Model(bi, conv(bi), name="backbone")
    conv.set_weights([np.array([1.0, 1.0], np.float32).reshape(1, 1, 1, 2),
                      np.array([-0.75, -0.25], np.float32)])
    inp = keras.Input((32, 32, 1))
    x = keras.layers.Rescaling(1.0)(inp)
    x = bb(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    act = "sigmoid" if n_out == 1 else "softmax"
    head = keras.layers.Dense(n_out, activation=act, name="classifier")
    out = head(x)
    w = np.array([[128.0], [-16.0]], np.float32)
    head.set_weights([w if n_out == 1 else np.hstack([w, -w]), np.zeros(n_out, np.float32)])
    return keras.Model(inp, out)


def _quadrant_images(n: int, seed: int = 0) -> np.ndarray:
    """Dark noisy films with a bright (1.0) square in the top-left quadrant and a grey (0.5)
    square in the bottom-right one, each at a random place inside its quadrant."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 0.1, (n, 32, 32, 1)).astype(np.float32)
    for i in range(n):
        r, c = rng.integers(0, 11, 2)
        x[i, r:r + 6, c:c + 6] = 1.0
        r, c = rng.integers(16, 27, 2)
        x[i, r:r + 6, c:c + 6] = 0.5
    return x


def _peak_quadrant(maps: np.ndarray) -> list[str]:
    out = []
    for m in maps:
        r, c = np.unravel_index(np.argmax(m), m.shape)
        out.append(("top" if r < m.shape[0] // 2 else "bottom") + "-"
                   + ("left" if c < m.shape[1] // 2 else "right"))
    return out


# --------------------------------------------------------------------------------------------
# The split forward pass is the same network


@pytest.mark.parametrize("name", ["vgg16", "resnet50", "mobilenetv2"])
def test_tapped_forward_equals_predict(name: str) -> None:
    model = _app_model(name)
    x = np.random.default_rng(1).random((3, 64, 64, 1), dtype=np.float32)
    path = _target_path(model, None)
    assert path[-1].name == _LAST_MAP[name]
    feats, logits, out = _TappedForward(model, path)(tf.constant(x))
    expected = model.predict(x, verbose=0)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tf.sigmoid(logits).numpy(), expected, rtol=1e-5, atol=1e-6)
    assert feats.shape[0] == 3 and len(feats.shape) == 4


@pytest.mark.slow
def test_tapped_forward_equals_predict_other_backbones() -> None:
    x = np.random.default_rng(2).random((2, 64, 64, 1), dtype=np.float32)
    for name in ("resnet50v2", "densenet121", "efficientnetb0"):
        model = _app_model(name, n_out=3)
        path = _target_path(model, None)
        assert path[-1].name == _LAST_MAP[name], name
        _, logits, out = _TappedForward(model, path)(tf.constant(x))
        expected = model.predict(x, verbose=0)
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(tf.nn.softmax(logits).numpy(), expected, rtol=1e-5,
                                   atol=1e-6, err_msg=name)
        maps = GradCAMPlusPlus(model)(x, class_index=[0, 2])
        assert maps.shape == (2, 64, 64) and np.isfinite(maps).all(), name


def test_named_inner_layer_and_maps_at_input_resolution(mobilenet) -> None:
    model = mobilenet
    x = np.random.default_rng(3).random((4, 64, 64), dtype=np.float32)  # (N, H, W) accepted
    cam = GradCAM(model, target_layer="block_13_expand_relu")
    maps = cam(x, class_index=1)
    assert cam.target_layer == "block_13_expand_relu"
    assert maps.shape == (4, 64, 64) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    for m in maps:  # each map is either spread over [0, 1] or all zeros
        assert m.max() == 0.0 or (m.min() == 0.0 and m.max() == pytest.approx(1.0))
    _, _, out = _TappedForward(model, _target_path(model, "block_13_expand_relu"))(
        tf.constant(x[..., None]))
    np.testing.assert_allclose(out.numpy(), model.predict(x[..., None], verbose=0), atol=1e-6)


def test_wrong_target_layer_lists_valid_names(mobilenet) -> None:
    model = mobilenet
    with pytest.raises(ValueError, match=r"target_layer='conv99'.*not found.*out_relu"):
        GradCAM(model, target_layer="conv99")
    with pytest.raises(ValueError, match=r"target_layer='classifier' has no 4-D"):
        GradCAM(model, target_layer="classifier")
    assert spatial_layers(model)[-1] == "out_relu"


def test_saved_and_loaded_model_gives_the_same_maps(mobilenet, tmp_path) -> None:
    x = np.random.default_rng(5).random((2, 64, 64, 1), dtype=np.float32)
    before = GradCAM(mobilenet)(x, class_index=[0, 2])
    path = tmp_path / "model.keras"
    mobilenet.save(path)
    after = GradCAM(load_model(path))(x, class_index=[0, 2])
    np.testing.assert_allclose(after, before, atol=1e-5)


def test_mixed_precision_backbone() -> None:
    keras.utils.set_random_seed(0)
    bi = keras.Input((32, 32, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", dtype="mixed_float16")(bi)
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", dtype="mixed_float16")(h)
    model = _medtl_shaped(keras.Model(bi, h), 32)
    x = np.random.default_rng(4).random((2, 32, 32, 1), dtype=np.float32)
    _, _, out = _TappedForward(model, _target_path(model, None))(tf.constant(x))
    np.testing.assert_allclose(out.numpy(), model.predict(x, verbose=0), atol=1e-3)
    maps = GradCAMPlusPlus(model)(x)
    assert maps.dtype == np.float32 and np.isfinite(maps).all() and maps.max() <= 1.0


# --------------------------------------------------------------------------------------------
# Known answers


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam", "intgrad", "occlusion"])
def test_known_answer_peak_in_top_left(method: str) -> None:
    x = _quadrant_images(6)
    maps = compute_cam(_quadrant_model(), x, method=method)
    assert maps.shape == (6, 32, 32)
    assert _peak_quadrant(maps) == ["top-left"] * 6
    # Nothing of the positive evidence lies in the bottom-right square's quadrant.
    assert maps[:, 16:, 16:].max() < 0.05


@pytest.mark.parametrize("method", ["gradcam", "intgrad", "occlusion"])
def test_binary_negative_class_shows_evidence_against(method: str) -> None:
    model = _quadrant_model()
    x = _quadrant_images(4, seed=1)
    neg = compute_cam(model, x, method=method, class_index=0)
    assert _peak_quadrant(neg) == ["bottom-right"] * 4
    pred = model.predict(x, verbose=0)[:, 0]
    assert (pred > 0.5).all()  # so "predicted" must equal the positive-class map
    np.testing.assert_allclose(compute_cam(model, x, method=method, class_index="predicted"),
                               compute_cam(model, x, method=method), atol=1e-6)


def test_negative_evidence_absent_gives_zero_map() -> None:
    # Without the grey square nothing speaks against the lesion: a constant map becomes zeros.
    x = _quadrant_images(2, seed=2)
    x[:, 16:, 16:] = 0.05
    neg = compute_cam(_quadrant_model(), x, method="gradcam", class_index="negative")
    assert np.array_equal(neg, np.zeros_like(neg))


@pytest.mark.parametrize("method", ["gradcam", "intgrad", "occlusion"])
def test_multiclass_class_index(method: str) -> None:
    model = _quadrant_model(n_out=2)
    x = _quadrant_images(4, seed=3)
    assert _peak_quadrant(compute_cam(model, x, method=method, class_index=0)) == ["top-left"] * 4
    assert _peak_quadrant(compute_cam(model, x, method=method, class_index=1)) == (
        ["bottom-right"] * 4)
    per_image = compute_cam(model, x, method=method, class_index=[0, 1, 0, 1])
    assert _peak_quadrant(per_image) == ["top-left", "bottom-right"] * 2
    # Default for several outputs: the predicted (top) class, here class 0 for every image.
    assert model.predict(x, verbose=0).argmax(axis=1).tolist() == [0] * 4
    np.testing.assert_allclose(compute_cam(model, x, method=method),
                               compute_cam(model, x, method=method, class_index=0), atol=1e-6)


def test_every_registry_method_has_an_implementation_and_vice_versa() -> None:
    assert tuple(METHODS) == map_methods()
    for name, cls in METHODS.items():
        assert cls.name == name
        # The kind the config, CLI and report ask about is the kind of code that runs.
        assert issubclass(cls, GradientCAM) == (method_kind(name) == GRADIENT)
        assert issubclass(cls, Occlusion) == (method_kind(name) == PERTURBATION)


def test_register_checks_name_and_kind() -> None:
    from medtl.explain.cam import register

    class Unlisted(GradientCAM):
        name = "lime"

    class WrongKind(CAMMethod):
        name = "hirescam"

        def _raw_maps(self, x, selector, batch_size):  # pragma: no cover - never called
            raise AssertionError

    with pytest.raises(ValueError, match="'lime': unknown"):
        register(Unlisted)
    with pytest.raises(TypeError, match="'hirescam' is of kind 'gradient'"):
        register(WrongKind)
    assert METHODS["hirescam"] is HiResCAM


def test_hirescam_equals_gradcam_behind_a_pooled_head() -> None:
    # Behind global average pooling every cell of a channel has the same gradient, so the
    # per-pixel product is Grad-CAM's channel-mean weighting exactly.
    model, x = _quadrant_model(), _quadrant_images(4, seed=5)
    hires = compute_cam(model, x, method="hirescam")
    assert _peak_quadrant(hires) == ["top-left"] * 4
    np.testing.assert_allclose(hires, compute_cam(model, x, method="gradcam"), atol=1e-5)


def _flatten_head_model(w: np.ndarray) -> keras.Model:
    """1x1 conv with channels relu(x) and relu(0.5 - x), flattened into a Dense head whose
    weight ``w`` (8, 8, 2) differs from cell to cell, so the logit is sum(w * A)."""
    inp = keras.Input((8, 8, 1))
    conv = keras.layers.Conv2D(2, 1, activation="relu", name="features")
    head = keras.layers.Dense(1, activation="sigmoid", name="classifier")
    model = keras.Model(inp, head(keras.layers.Flatten()(conv(inp))))
    conv.set_weights([np.array([1.0, -1.0], np.float32).reshape(1, 1, 1, 2),
                      np.array([0.0, 0.5], np.float32)])
    head.set_weights([w.reshape(-1, 1).astype(np.float32), np.zeros(1, np.float32)])
    return model


def test_hirescam_known_answer_with_a_spatial_head() -> None:
    rng = np.random.default_rng(7)
    w = rng.normal(size=(8, 8, 2))
    x = rng.uniform(0.0, 1.0, (3, 8, 8, 1)).astype(np.float32)
    acts = np.concatenate([np.maximum(x, 0.0), np.maximum(0.5 - x, 0.0)], axis=-1)
    raw = np.maximum((w * acts).sum(axis=-1), 0.0)  # the gradient of sum(w * A) is w
    lo, hi = raw.min(axis=(1, 2), keepdims=True), raw.max(axis=(1, 2), keepdims=True)
    want = (raw - lo) / (hi - lo)
    model = _flatten_head_model(w)
    got = compute_cam(model, x, method="hirescam")
    np.testing.assert_allclose(got, want, atol=1e-5)
    # Grad-CAM averages the gradient over the map first, so here it gives another map.
    assert np.abs(compute_cam(model, x, method="gradcam") - want).max() > 0.1


def _want(raw: np.ndarray) -> np.ndarray:
    """Per-image [0, 1] scaling of non-negative raw maps, as CAMMethod does."""
    lo, hi = raw.min(axis=(1, 2), keepdims=True), raw.max(axis=(1, 2), keepdims=True)
    return (raw - lo) / (hi - lo)


def _acts(x: np.ndarray) -> np.ndarray:
    """The channels of _flatten_head_model's 1x1 conv: relu(x) and relu(0.5 - x)."""
    return np.concatenate([np.maximum(x, 0.0), np.maximum(0.5 - x, 0.0)], axis=-1)


def test_layercam_known_answer_with_a_spatial_head() -> None:
    # The gradient of sum(w * A) is w, so LayerCAM is sum_k relu(w_k) A_k per cell.
    rng = np.random.default_rng(8)
    w = rng.normal(size=(8, 8, 2))
    x = rng.uniform(0.0, 1.0, (3, 8, 8, 1)).astype(np.float32)
    want = _want((np.maximum(w, 0.0) * _acts(x)).sum(axis=-1))
    model = _flatten_head_model(w)
    np.testing.assert_allclose(compute_cam(model, x, method="layercam"), want, atol=1e-5)
    # HiResCAM keeps the negative gradients, so it differs here.
    assert np.abs(compute_cam(model, x, method="hirescam") - want).max() > 0.05


def test_layercam_fuses_layers_on_the_finest_grid(mobilenet) -> None:
    x = np.random.default_rng(9).random((2, 64, 64, 1), dtype=np.float32)
    layers = ["out_relu", "block_13_expand_relu"]  # 2x2 and 4x4 at 64 px
    fused = LayerCAM(mobilenet, target_layer=layers)
    assert fused.target_layer == layers and map_grid(mobilenet, "layercam", layers) == (4, 4)
    sel = np.eye(3, dtype=np.float32)[[0, 2]]
    parts = [LayerCAM(mobilenet, name)._raw_maps(x, sel, 2) for name in layers]
    want = np.mean([_normalise(_resize(m, (4, 4))) for m in parts], axis=0)
    np.testing.assert_allclose(fused._raw_maps(x, sel, 2), want, atol=1e-5)
    assert compute_cam(mobilenet, x, method="layercam", target_layer=layers,
                       class_index=[0, 2]).shape == (2, 64, 64)


def test_integrated_gradients_known_answer_on_a_linear_model() -> None:
    # Logit linear in the input: sum(v * x) + c. The path gradient is v everywhere, so the map
    # (baseline black) is relu(v * x) exactly, at the input resolution.
    rng = np.random.default_rng(10)
    inp = keras.Input((8, 8, 1))
    conv = keras.layers.Conv2D(2, 1, name="features")  # linear: no activation
    head = keras.layers.Dense(1, activation="sigmoid", name="classifier")
    model = keras.Model(inp, head(keras.layers.Flatten()(conv(inp))))
    k = np.array([1.0, -2.0], np.float32)
    conv.set_weights([k.reshape(1, 1, 1, 2), np.array([0.3, 0.1], np.float32)])
    w = rng.normal(size=(8, 8, 2))
    head.set_weights([w.reshape(-1, 1).astype(np.float32), np.zeros(1, np.float32)])
    x = rng.uniform(0.0, 1.0, (3, 8, 8, 1)).astype(np.float32)
    want = _want(np.maximum((w @ k) * x[..., 0], 0.0))
    np.testing.assert_allclose(compute_cam(model, x, method="intgrad", steps=4), want, atol=1e-5)
    assert map_grid(model, "intgrad") == (8, 8)
    # A mean-grey baseline attributes x - mean(x) instead: another, still finite, map.
    assert np.isfinite(IntegratedGradients(model, steps=2, baseline="mean")(x)).all()
    assert "input gradients" in method_for_model(model, "intgrad").reason
    with pytest.raises(ValueError, match="not used by intgrad"):
        compute_cam(model, x, method="intgrad", target_layer="features")


def test_scorecam_known_answer_with_a_spatial_head() -> None:
    # Masks are the two channels scaled to [0, 1]; channel k's weight is the softmax over
    # channels of the logit sum(w * A(x * mask_k)); the map relu(sum_k weight_k A_k).
    rng = np.random.default_rng(11)
    w = rng.normal(size=(8, 8, 2))
    x = rng.uniform(0.0, 1.0, (3, 8, 8, 1)).astype(np.float32)
    a = _acts(x)
    lo, hi = a.min(axis=(1, 2), keepdims=True), a.max(axis=(1, 2), keepdims=True)
    masks = (a - lo) / (hi - lo)
    logits = np.stack([(w * _acts(x * masks[..., c:c + 1])).sum(axis=(1, 2, 3)) for c in range(2)], axis=1)
    weights = np.exp(logits - logits.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    want = _want(np.maximum(np.einsum("bhwk,bk->bhw", a, weights), 0.0))
    got = compute_cam(_flatten_head_model(w), x, method="scorecam", batch_size=1)
    np.testing.assert_allclose(got, want, atol=1e-4)
    # On the quadrant films the bright square (the positive evidence) is the peak.
    assert _peak_quadrant(compute_cam(_quadrant_model(), _quadrant_images(4), method="scorecam")) == (
        ["top-left"] * 4)
    # top_channels=1 keeps each image's most active channel only.
    one = ScoreCAM(_flatten_head_model(w), top_channels=1)(x)
    keep = a.mean(axis=(1, 2)).argmax(axis=1)
    np.testing.assert_allclose(one, _want(np.stack([a[i, ..., c] for i, c in enumerate(keep)])), atol=1e-5)


def test_map_grid_says_the_maps_own_resolution(mobilenet) -> None:
    assert map_grid(mobilenet, "gradcam") == (2, 2)  # out_relu at 64 px
    assert map_grid(mobilenet, "scorecam", "block_13_expand_relu") == (4, 4)
    assert map_grid(mobilenet, "intgrad") == (64, 64)
    assert map_grid(mobilenet, "occlusion") == (15, 15)  # 8 px patches every 4 px
    assert map_grid(mobilenet, "occlusion", patch=0.5) == (3, 3)


def test_sequential_backbone() -> None:
    x = _quadrant_images(3, seed=4)
    model = _quadrant_model(sequential=True)
    assert _peak_quadrant(compute_cam(model, x, method="gradcam++")) == ["top-left"] * 3


def test_bad_class_index_and_images() -> None:
    model = _quadrant_model()
    x = _quadrant_images(2)
    with pytest.raises(ValueError, match="out of range"):
        compute_cam(model, x, class_index=2)
    with pytest.raises(ValueError, match="'positive'/'negative'"):
        compute_cam(model, x, class_index="lesion")
    with pytest.raises(ValueError, match="one per image"):
        compute_cam(model, x, class_index=[1, 0, 1])
    with pytest.raises(ValueError, match="64x64 but model .* takes 32x32"):
        compute_cam(model, np.zeros((1, 64, 64), np.float32))
    with pytest.raises(ValueError, match="method='nope'"):
        compute_cam(model, x, method="nope")
    with pytest.raises(ValueError, match="not used by occlusion"):
        compute_cam(model, x, method="occlusion", target_layer="features")
    with pytest.raises(ValueError, match="steps=0"):
        compute_cam(model, x, method="intgrad", steps=0)
    with pytest.raises(ValueError, match="top_channels=0"):
        compute_cam(model, x, method="scorecam", top_channels=0)


# --------------------------------------------------------------------------------------------
# Backbones without a spatial map (TF Hub style)


@keras.saving.register_keras_serializable(package="medtl_tests")
class _VectorBackbone(keras.layers.Layer):
    """Stands in for a TF Hub feature-vector model: image in, pooled vector out, no graph."""

    def build(self, input_shape: tuple) -> None:
        self.kernel = self.add_weight(shape=(1, 1, input_shape[-1], 4), initializer="ones")

    def call(self, x: tf.Tensor) -> tf.Tensor:
        h = tf.nn.relu(tf.nn.conv2d(x, self.kernel, 1, "SAME") - 0.5)
        return tf.reduce_mean(h, axis=(1, 2))


def test_hub_like_backbone_uses_occlusion() -> None:
    inp = keras.Input((32, 32, 1))
    h = _VectorBackbone(name="backbone")(inp)
    out = keras.layers.Dense(1, activation="sigmoid", name="classifier")(h)
    model = keras.Model(inp, out)
    choice = method_for_model(model)
    assert choice == "occlusion" and "no spatial feature map" in choice.reason
    with pytest.raises(ValueError, match="use method='occlusion'"):
        compute_cam(model, _quadrant_images(1), method="gradcam")
    x = np.zeros((2, 32, 32, 1), np.float32)
    x[:, 2:8, 3:9] = 1.0  # the only bright thing: the occlusion peak must be on it
    maps = compute_cam(model, x, method="auto")
    assert maps.shape == (2, 32, 32) and _peak_quadrant(maps) == ["top-left"] * 2
    assert method_for_model(_quadrant_model()) == "gradcam"  # the default, as report.cam's
    assert "'features'" in method_for_model(_quadrant_model(), preferred="gradcam++").reason


def test_real_hub_backbone_uses_occlusion(hub_efficientnet_dir) -> None:
    cfg = Config(seed=0)
    cfg.model.backbone = f"hub:{hub_efficientnet_dir}"
    cfg.data.image_size = [64, 64]
    model = build_model(cfg, n_outputs=1)
    choice = method_for_model(model)
    assert choice == "occlusion" and "HubBackbone" in choice.reason
    x = np.random.default_rng(6).random((1, 64, 64, 1), dtype=np.float32)
    maps = compute_cam(model, x, method="auto", patch=0.5)
    assert maps.shape == (1, 64, 64) and 0.0 <= maps.min() and maps.max() <= 1.0


# --------------------------------------------------------------------------------------------
# A trained model: localisation, randomisation, batching


def _lesion_data(n: int, seed: int, size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noisy films with bright bars in every image; odd images also carry a round lesion
    (row, col, radius recorded) at a random place."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    x = np.empty((n, size, size, 1), np.float32)
    y = np.zeros(n, np.float32)
    lesions = np.full((n, 3), np.nan)
    for i in range(n):
        img = 0.3 + 0.05 * rng.standard_normal((size, size))
        for _ in range(3):  # distractors: the model must learn the round shape
            r, c = rng.integers(0, size - 12, 2)
            if rng.random() < 0.5:
                img[r:r + 12, c:c + 3] += 0.3
            else:
                img[r:r + 3, c:c + 12] += 0.3
        if i % 2:
            rad = rng.uniform(5, 8)
            cy, cx = rng.uniform(rad + 1, size - rad - 1, 2)
            img[np.hypot(yy - cy, xx - cx) <= rad] += 0.5
            y[i], lesions[i] = 1.0, (cy, cx, rad)
        x[i, ..., 0] = np.clip(img, 0, 1)
    return x, y, lesions


def _lesion_model(seed: int = 0) -> keras.Model:
    """A tiny nested-backbone classifier. The stem is shallow (one 3x3 conv, receptive field
    3 px) so that, as in a fine-tuned pretrained backbone, the shape of the lesion can only be
    learned in the top block, the part the randomisation test re-initialises."""
    keras.utils.set_random_seed(seed)
    bi = keras.Input((64, 64, 1))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(bi)
    h = keras.layers.MaxPooling2D(4)(h)
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="block3_conv1")(h)
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="block3_conv2")(h)
    bb = keras.Model(bi, h, name="backbone")
    inp = keras.Input((64, 64, 1))
    z = bb(inp, training=False)
    z = keras.layers.GlobalAveragePooling2D()(z)
    out = keras.layers.Dense(1, activation="sigmoid", name="classifier")(z)
    return keras.Model(inp, out)


@pytest.fixture(scope="module")
def trained() -> tuple[keras.Model, np.ndarray, np.ndarray]:
    """A tiny model trained to find the lesion; test films of its true positives, lesions."""
    x, y, _ = _lesion_data(512, seed=0)
    model = _lesion_model(seed=1)
    model.compile(keras.optimizers.Adam(3e-3), "binary_crossentropy")
    model.fit(x, y, epochs=10, batch_size=32, verbose=0)
    xt, yt, lt = _lesion_data(80, seed=1)
    p = model.predict(xt, verbose=0)[:, 0]
    assert ((p > 0.5) == (yt == 1)).mean() >= 0.9, "the tiny model did not learn the task"
    tp = (p > 0.5) & (yt == 1)
    return model, xt[tp], lt[tp]


def _hits(maps: np.ndarray, lesions: np.ndarray) -> np.ndarray:
    hits = []
    for m, (cy, cx, rad) in zip(maps, lesions):
        r, c = np.unravel_index(np.argmax(m), m.shape)
        hits.append(np.hypot(r + 0.5 - cy, c + 0.5 - cx) <= rad)
    return np.array(hits)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_localisation_peak_inside_lesion(trained, method: str) -> None:
    model, x, lesions = trained
    assert len(x) >= 30
    assert _hits(compute_cam(model, x, method=method), lesions).mean() >= 0.9


def _randomised_top(model: keras.Model, seed: int) -> keras.Model:
    """A copy of ``model`` with the classifier and the last conv block re-initialised."""
    copy = _lesion_model(seed=123)
    copy.set_weights(model.get_weights())
    bb = copy.get_layer("backbone")
    for layer in (copy.get_layer("classifier"), bb.get_layer("block3_conv2"),
                  bb.get_layer("block3_conv1")):
        layer.kernel.assign(keras.initializers.GlorotUniform(seed=seed)(layer.kernel.shape))
        layer.bias.assign(np.zeros(layer.bias.shape, np.float32))
    return copy


def _mean_spearman(a: np.ndarray, b: np.ndarray) -> float:
    rho = [spearmanr(u.ravel(), v.ravel())[0] for u, v in zip(a, b)]
    return float(np.mean(np.nan_to_num(rho)))  # a constant (all-zero) map shares no ranking


@pytest.mark.parametrize("method", [
    "gradcam",
    pytest.param("gradcam++", marks=pytest.mark.xfail(strict=True, reason=(
        "measured (4 training seeds x 6 re-initialisations): mean Spearman 0.57-0.79. "
        "Grad-CAM++ keeps only positive gradients, so behind a pooled Dense head its map is a "
        "positive sum of the last block's ReLU channels, and random channels also fire on the "
        "bright lesion. On the model trained on the sample data it passes (test_localisation.py)"))),
    "intgrad",
    pytest.param("layercam", marks=pytest.mark.xfail(strict=True, reason=(
        "measured (training seed 1 x 6 re-initialisations, 2026-12-04): mean Spearman 0.71, "
        "0.70-0.72 for each. LayerCAM keeps only positive gradients, so as Grad-CAM++ its map "
        "is a positive sum of the last block's ReLU channels, which also fire on the bright "
        "lesion when random"))),
    pytest.param("scorecam", marks=pytest.mark.xfail(strict=True, reason=(
        "measured (training seed 1 x 6 re-initialisations, 2026-12-04): mean Spearman 0.76, "
        "0.76-0.77 for each. Its weights are a softmax (all positive) over channels, so its map "
        "is a positive sum of the last block's ReLU channels, as Grad-CAM++'s"))),
])
def test_model_randomisation_changes_maps(trained, method: str) -> None:
    """Adebayo et al. 2018: maps must depend on the learned top layers.

    One re-initialisation is a coin toss (a random head weighs the lesion channels up or down,
    giving Spearman from about -0.2 to 0.8), so the expected correlation is estimated over six
    draws. Measured for Grad-CAM over 4 training seeds: 0.18-0.39; integrated gradients 0.37
    (one training seed)."""
    model, x, _ = trained
    maps = compute_cam(model, x, method=method)
    rho = [_mean_spearman(maps, compute_cam(_randomised_top(model, s), x, method=method))
           for s in range(6)]
    assert np.mean(rho) < 0.5, rho


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam", "intgrad", "scorecam",
                                    "occlusion"])
def test_batched_equals_one_at_a_time(trained, method: str) -> None:
    model, x, _ = trained
    x = x[:4]
    cam = METHODS[method](model)
    batched = cam(x, batch_size=16)
    single = np.concatenate([cam(x[i:i + 1], batch_size=1) for i in range(len(x))])
    assert batched.max() == pytest.approx(1.0)  # non-trivial maps are being compared
    np.testing.assert_allclose(batched, single, atol=1e-4)
    # Several batches (with a short last one) give the same maps too.
    np.testing.assert_allclose(cam(x, batch_size=2), batched, atol=1e-4)


# --------------------------------------------------------------------------------------------
# Back to the original film


def test_explain_for_original_undoes_letterbox() -> None:
    original = np.zeros((100, 50), np.float32)
    _, geo = letterbox(original, (64, 64))
    ty, tx = geo.to_target(80.0, 10.0)  # a spot on the original film, seen on the canvas
    yy, xx = np.mgrid[0:64, 0:64] + 0.5
    at_input = np.exp(-((yy - ty) ** 2 + (xx - tx) ** 2) / 4.0).astype(np.float32)
    back = explain_for_original(at_input, geo)
    assert back.shape == (100, 50) and back.dtype == np.float32
    assert 0.0 <= back.min() and back.max() <= 1.0
    r, c = np.unravel_index(np.argmax(back), back.shape)
    assert abs(r - 80) <= 2 and abs(c - 10) <= 2
    with pytest.raises(ValueError, match="one \\(H, W\\) map"):
        explain_for_original(np.zeros((2, 64, 64)), geo)


def test_off_film_share_counts_the_heat_on_the_letterbox_padding() -> None:
    _, geo = letterbox(np.zeros((100, 50), np.float32), (64, 64))  # content 64x32, 16 px each side
    assert (geo.pad_left, geo.new_w) == (16, 32)
    uniform = np.ones((64, 64), np.float32)
    assert off_film_share(uniform, geo) == pytest.approx(0.5)  # half the canvas is padding
    on_film = np.zeros((64, 64), np.float32)
    on_film[10:20, 20:40] = 1.0
    assert off_film_share(on_film, geo) == 0.0
    off = on_film.copy()
    off[:, :16] = 0.5  # the left padding: 64*16*0.5 = 512 against 200 on the film
    assert off_film_share(off, geo) == pytest.approx(512 / 712)
    assert np.isnan(off_film_share(np.zeros((64, 64)), geo))  # no heat anywhere
    _, square = letterbox(np.zeros((40, 40), np.float32), (64, 64))
    assert off_film_share(uniform, square) == 0.0  # nothing padded
    with pytest.raises(ValueError, match="canvas size 64x64"):
        off_film_share(np.ones((7, 7)), geo)
