"""Mixup and cutmix of training batches (medtl.data.mixing) and their place in the pipeline."""

from __future__ import annotations

import math

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from medtl.config import AugmentConfig, ConfigError  # noqa: E402
from medtl.data.manifest import load_manifest  # noqa: E402
from medtl.data.mixing import (  # noqa: E402
    BatchMixer, batch_permutation, build_mixer, cutmix_box, cutmix_pair, mixup_pair, sample_lambda,
)
from medtl.data.pipeline import ImagePipeline  # noqa: E402
from tests.data._helpers import make_cfg  # noqa: E402


def _images(b=4, h=6, w=5, seed=0):
    return np.random.default_rng(seed).random((b, h, w, 1)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Known answers on tiny tensors


def test_mixup_pair_is_the_convex_combination_of_images_and_targets():
    a = np.full((1, 2, 2, 1), 0.2, np.float32)
    b = np.array([[[[1.0], [0.0]], [[0.5], [0.25]]]], np.float32)
    x = tf.constant(np.concatenate([a, b]))
    y = tf.constant([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # multiclass one-hot rows
    xm, ym = mixup_pair(x, y, 0.3, tf.constant([1, 0]))
    np.testing.assert_allclose(xm.numpy()[0], 0.3 * a[0] + 0.7 * b[0], rtol=1e-6)
    np.testing.assert_allclose(xm.numpy()[1], 0.3 * b[0] + 0.7 * a[0], rtol=1e-6)
    np.testing.assert_allclose(ym.numpy(), [[0.3, 0.0, 0.7], [0.7, 0.0, 0.3]], rtol=1e-6)
    # binary / multilabel targets mix the same way
    _, yb = mixup_pair(x, tf.constant([[1.0, 0.0], [0.0, 0.0]]), 0.3, tf.constant([1, 0]))
    np.testing.assert_allclose(yb.numpy(), [[0.3, 0.0], [0.7, 0.0]], rtol=1e-6)


@pytest.mark.parametrize("lam, centre", [(0.75, (0.5, 0.5)), (0.5, (0.0, 0.0)), (0.3, (0.95, 0.1)),
                                         (0.9, (0.4, 0.99)), (0.0, (0.5, 0.5)), (1.0, (0.5, 0.5))])
def test_cutmix_label_lambda_is_the_pasted_box_area(lam, centre):
    h, w = 10, 8
    x = tf.constant(np.stack([np.zeros((h, w, 1)), np.ones((h, w, 1))]).astype(np.float32))
    y = tf.constant([[0.0], [1.0]])
    xm, ym = cutmix_pair(x, y, lam, tf.constant([1, 0]), tf.constant(centre, tf.float32))
    pasted = xm.numpy()[0, :, :, 0]  # ones where image 1's box was pasted into image 0
    area = pasted.sum()
    assert ym.numpy()[0, 0] == pytest.approx(area / (h * w), abs=1e-7)
    assert ym.numpy()[1, 0] == pytest.approx(1.0 - area / (h * w), abs=1e-7)
    if area:  # the pasted pixels form one rectangle
        rows, cols = np.nonzero(pasted)
        assert area == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    # image 1 received image 0's pixels in the same box
    np.testing.assert_array_equal(xm.numpy()[1, :, :, 0], 1.0 - pasted)


def test_cutmix_box_has_the_asked_area_when_it_fits():
    top, bottom, left, right = (int(v) for v in cutmix_box(10, 8, 0.75, tf.constant([0.5, 0.5])))
    # side ratio sqrt(0.25) = 0.5: a 5 x 4 box, halves rounded down -> 4 x 4 around (5, 4)
    assert (top, bottom, left, right) == (3, 7, 2, 6)
    top, bottom, left, right = (int(v) for v in cutmix_box(12, 12, 0.75, tf.constant([0.5, 0.5])))
    assert (bottom - top) * (right - left) == 36  # exactly 1 - lam of 144


def test_alpha_zero_is_the_identity():
    assert build_mixer(AugmentConfig(), seed=1) is None
    assert build_mixer(AugmentConfig(mixup=0.0, cutmix=0.0), seed=1) is None
    x, y = tf.constant(_images()), tf.constant([[1.0], [0.0], [1.0], [0.0]])
    seeds = BatchMixer(0.0, 0.0, 3).batch_seeds(0, 1)[0]
    xm, ym = BatchMixer(0.0, 0.0, 3)(x, y, seeds)
    np.testing.assert_array_equal(xm.numpy(), x.numpy())
    np.testing.assert_array_equal(ym.numpy(), y.numpy())
    xm, ym = mixup_pair(x, y, 1.0, tf.constant([3, 2, 1, 0]))  # lam 1 keeps every image
    np.testing.assert_array_equal(xm.numpy(), x.numpy())
    np.testing.assert_array_equal(ym.numpy(), y.numpy())


def test_mixer_pairs_each_image_with_its_permutation_partner():
    x, y = _images(b=5), np.array([[1.0], [0.0], [0.0], [1.0], [0.0]], np.float32)
    mixer = BatchMixer(0.2, 0.0, seed=5)
    seeds = mixer.batch_seeds(epoch=2, n_batches=3)[1]
    perm = batch_permutation(tf.constant(5), tf.constant(seeds[0])).numpy()
    assert sorted(perm.tolist()) == list(range(5))
    xm, ym = mixer(tf.constant(x), tf.constant(y), seeds, lam=0.3)  # lambda fixed: the seam
    np.testing.assert_allclose(xm.numpy(), 0.3 * x + 0.7 * x[perm], rtol=1e-6)
    np.testing.assert_allclose(ym.numpy(), 0.3 * y + 0.7 * y[perm], rtol=1e-6)


def test_mixer_draws_one_beta_lambda_per_batch_from_its_seeds():
    x, y = _images(b=6), np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1, 2]]
    mixer = BatchMixer(0.4, 0.0, seed=9)
    seeds = mixer.batch_seeds(0, 1)[0]
    perm = batch_permutation(tf.constant(6), tf.constant(seeds[0])).numpy()
    lam = float(sample_lambda(0.4, tf.constant(seeds[2])))
    xm, ym = mixer(tf.constant(x), tf.constant(y), seeds)
    np.testing.assert_allclose(xm.numpy(), lam * x + (1 - lam) * x[perm], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ym.numpy(), lam * y + (1 - lam) * y[perm], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ym.numpy().sum(axis=1), 1.0, rtol=1e-6)  # still a distribution
    # same seeds, same batch (reproducible); other seeds, another lambda
    np.testing.assert_array_equal(mixer(tf.constant(x), tf.constant(y), seeds)[0].numpy(), xm.numpy())
    other = mixer.batch_seeds(1, 1)[0]
    assert float(sample_lambda(0.4, tf.constant(other[2]))) != lam


def test_beta_draws_have_the_beta_mean_and_variance():
    a = 0.4
    lams = np.array([float(sample_lambda(a, tf.constant([i, 17], tf.int64))) for i in range(400)])
    assert lams.min() >= 0.0 and lams.max() <= 1.0
    assert lams.mean() == pytest.approx(0.5, abs=0.05)
    assert lams.var() == pytest.approx(1.0 / (4 * (2 * a + 1)), abs=0.03)  # Beta(a, a): 1/(4(2a+1))
    tiny = [float(sample_lambda(0.01, tf.constant([i, 3], tf.int64))) for i in range(20)]
    assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in tiny)  # no 0/0 for a small alpha


def test_with_both_on_each_batch_is_mixup_or_cutmix_about_half_each():
    x = tf.constant(_images(b=4, h=8, w=8))
    y = tf.constant([[1.0], [0.0], [1.0], [0.0]])
    mixer = BatchMixer(1.0, 1.0, seed=21)
    kinds = []
    for seeds in mixer.batch_seeds(0, 40):
        xm = mixer(x, y, seeds)[0].numpy()
        perm = batch_permutation(tf.constant(4), tf.constant(seeds[0])).numpy()
        # cutmix: every pixel is its own or the partner's, unchanged
        kinds.append(bool(np.all((xm == x.numpy()) | (xm == x.numpy()[perm]))))
    assert 10 <= sum(kinds) <= 30


# --------------------------------------------------------------------------------------------
# In the pipeline


def _cfg(csv_path, tmp_path, **augment):
    return make_cfg(csv_path, cache_dir=tmp_path / "cache", seed=11, augment={"preset": "none", **augment},
                    data={"image_size": [24, 20]}, train={"batch_size": 8})


def _collect(ds):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(xs), np.concatenate(ys)


def test_validation_batches_are_never_mixed(png_csv, tmp_path):
    plain = ImagePipeline(_cfg(png_csv, tmp_path))
    m = plain.prepare(load_manifest(plain.cfg))
    mixed = ImagePipeline(_cfg(png_csv, tmp_path, mixup=1.0, cutmix=1.0))
    assert mixed.mixer is not None
    x0, y0 = _collect(plain.dataset(m, training=False))
    x1, y1 = _collect(mixed.dataset(m, training=False))
    np.testing.assert_array_equal(x1, x0)
    np.testing.assert_array_equal(y1, y0)
    assert set(np.unique(y1)) <= {0.0, 1.0}


def test_training_batches_are_mixed_after_batching_by_seed_epoch_and_batch(png_csv, tmp_path):
    plain = ImagePipeline(_cfg(png_csv, tmp_path))
    m = plain.prepare(load_manifest(plain.cfg))
    pipe = ImagePipeline(_cfg(png_csv, tmp_path, mixup=0.4))
    seeds = pipe.mixer.batch_seeds(3, 5)
    batches = list(pipe.dataset(m, training=True, epoch=3))
    unmixed = list(plain.dataset(m, training=True, epoch=3))
    assert len(batches) == len(unmixed) == 5
    soft = 0
    for (x, y), (ux, uy), s in zip(batches, unmixed, seeds):
        perm = batch_permutation(tf.constant(len(ux)), tf.constant(s[0])).numpy()
        lam = float(sample_lambda(0.4, tf.constant(s[2])))
        np.testing.assert_allclose(x.numpy(), lam * ux.numpy() + (1 - lam) * ux.numpy()[perm], atol=1e-5)
        np.testing.assert_allclose(y.numpy(), lam * uy.numpy() + (1 - lam) * uy.numpy()[perm], atol=1e-5)
        soft += int(np.any((y.numpy() > 1e-4) & (y.numpy() < 1 - 1e-4)))
    assert soft >= 1  # 1:3 positives: some batch pairs a positive with a negative


def test_mixed_epochs_are_reproducible_and_resume_exactly(png_csv, tmp_path):
    pipe = ImagePipeline(_cfg(png_csv, tmp_path, mixup=0.4, cutmix=1.0))
    m = pipe.prepare(load_manifest(pipe.cfg))
    x4, y4 = _collect(pipe.dataset(m, training=True, epoch=4))
    again = ImagePipeline(_cfg(png_csv, tmp_path, mixup=0.4, cutmix=1.0))
    np.testing.assert_array_equal(_collect(again.dataset(m, training=True, epoch=4))[0], x4)
    # an epoch chained after another is the epoch built alone (what a resumed run builds)
    xc, yc = _collect(pipe.dataset(m, training=True, epoch=3, epochs=2))
    np.testing.assert_array_equal(xc[len(m):], x4)
    np.testing.assert_array_equal(yc[len(m):], y4)
    assert not np.array_equal(xc[:len(m)], x4)


# --------------------------------------------------------------------------------------------
# Config


def test_config_defaults_and_validation(png_csv, tmp_path):
    cfg = _cfg(png_csv, tmp_path)
    assert cfg.augment.mixup == 0.0 and cfg.augment.cutmix == 0.0
    assert _cfg(png_csv, tmp_path, mixup="2e-1").augment.mixup == pytest.approx(0.2)
    for key, value in (("mixup", -0.1), ("cutmix", -1), ("mixup", float("nan")), ("cutmix", float("inf"))):
        with pytest.raises(ConfigError, match=rf"augment\.{key}: invalid value .*alpha >= 0") as err:
            _cfg(png_csv, tmp_path, **{key: value})
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"augment\.cutmix: invalid value 'lots'"):
        _cfg(png_csv, tmp_path, cutmix="lots")
