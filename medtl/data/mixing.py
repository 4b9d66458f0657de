"""Mixup and cutmix of training batches (``augment.mixup``, ``augment.cutmix``).

Both pair each image of a batch with another image of the same batch (a random permutation;
an image may draw itself) and draw one ``lam ~ Beta(alpha, alpha)`` per batch:

- mixup: ``x = lam * x_a + (1 - lam) * x_b``;
- cutmix: a rectangle of area share ``1 - lam`` (side ratio ``sqrt(1 - lam)``, centre uniform
  over the image, one box for the whole batch) is pasted from ``x_b``; ``lam`` is then
  recomputed as ``1 - box area / image area`` (the box is clipped at the border and its halves
  rounded to whole pixels) so the labels match the pixels exactly.

Labels are mixed with the same ``lam``: ``y = lam * y_a + (1 - lam) * y_b`` (the 0/1 target
vector for binary and multilabel, the one-hot row for multiclass). With both alphas > 0 each
batch uses one of the two, with probability 1/2 each. The losses of :mod:`medtl.train.losses`
take such soft targets as the same mixture of the two samples' class-weighted losses.

Only training batches are mixed, after per-image augmentation and batching. Every random draw
is a stateless TF op seeded from ``(cfg.seed, epoch, batch)`` (:meth:`BatchMixer.batch_seeds`),
so an epoch's batches are the same in every run, with any parallelism, and a resumed run
continues exactly. The training-set metrics of a run (``loss``, ``accuracy``, ``roc_auc`` in
history.csv, not the ``val_`` ones) are measured on mixed batches: a soft target never equals a
0/1 prediction, so training accuracy falls; the AUCs count a soft target as a fractional positive.

Example:
    >>> mixer = build_mixer(cfg.augment, cfg.seed)   # None when both alphas are 0
    >>> seeds = mixer.batch_seeds(epoch=0, n_batches=1)[0]
    >>> xm, ym = mixer(x, y, seeds)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from medtl.config import AugmentConfig

__all__ = ["BatchMixer", "build_mixer", "mixup_pair", "cutmix_pair", "cutmix_box", "batch_permutation", "sample_lambda"]

_MIX_TAG = 0x313C  # keeps the mixing streams apart from the shuffle and per-image streams
N_SEEDS = 4  # per batch: permutation, mixup-or-cutmix choice, lambda, cutmix box centre


def batch_permutation(batch: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """The partner of each image of a batch of ``batch`` images: a seeded random permutation."""
    return tf.argsort(tf.random.stateless_uniform(tf.reshape(batch, [1]), seed), stable=True)


def sample_lambda(alpha: float, seed: tf.Tensor) -> tf.Tensor:
    """One draw of ``Beta(alpha, alpha)`` (float32 scalar), from two seeded gamma draws."""
    # float64: for a small alpha both gamma draws can underflow to 0 in float32
    g = tf.random.stateless_gamma([2], seed=seed, alpha=tf.constant(alpha, tf.float64), dtype=tf.float64)
    total = g[0] + g[1]
    lam = tf.where(total > 0, g[0] / tf.maximum(total, 1e-300), tf.constant(0.5, tf.float64))
    return tf.cast(lam, tf.float32)


def mixup_pair(x: tf.Tensor, y: tf.Tensor, lam: tf.Tensor | float,
               perm: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Mixup of each image (and target row) with its partner ``perm[i]`` by ``lam``.

    Example:
        >>> xm, ym = mixup_pair(x, y, 0.3, tf.constant([1, 0]))   # xm[0] = 0.3 x[0] + 0.7 x[1]
    """
    lam_x = tf.cast(lam, x.dtype)
    lam_y = tf.cast(lam, y.dtype)
    return (lam_x * x + (1.0 - lam_x) * tf.gather(x, perm),
            lam_y * y + (1.0 - lam_y) * tf.gather(y, perm))


def cutmix_box(height: tf.Tensor, width: tf.Tensor, lam: tf.Tensor | float,
               centre: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """The pasted rectangle ``(top, bottom, left, right)`` (half-open, clipped to the image).

    Args:
        height, width: the image size.
        lam: the share of the image kept; the box side ratio is ``sqrt(1 - lam)``.
        centre: ``(row, column)`` of the box centre as fractions in [0, 1).
    """
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    ratio = tf.sqrt(1.0 - tf.clip_by_value(tf.cast(lam, tf.float32), 0.0, 1.0))
    half_h = tf.cast(tf.round(h * ratio), tf.int32) // 2
    half_w = tf.cast(tf.round(w * ratio), tf.int32) // 2
    cy = tf.cast(tf.floor(tf.cast(centre[0], tf.float32) * h), tf.int32)
    cx = tf.cast(tf.floor(tf.cast(centre[1], tf.float32) * w), tf.int32)
    height, width = tf.cast(height, tf.int32), tf.cast(width, tf.int32)
    return (tf.clip_by_value(cy - half_h, 0, height), tf.clip_by_value(cy + half_h, 0, height),
            tf.clip_by_value(cx - half_w, 0, width), tf.clip_by_value(cx + half_w, 0, width))


def cutmix_pair(x: tf.Tensor, y: tf.Tensor, lam: tf.Tensor | float, perm: tf.Tensor,
                centre: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Cutmix: paste the partner's box (see :func:`cutmix_box`) into each image of ``x``
    (``[B, H, W, C]``) and mix the targets by the share of the image left unchanged.

    Example:
        >>> xm, ym = cutmix_pair(x, y, 0.75, tf.constant([1, 0]), tf.constant([0.5, 0.5]))
    """
    shape = tf.shape(x)
    top, bottom, left, right = cutmix_box(shape[1], shape[2], lam, centre)
    rows = tf.range(shape[1])
    cols = tf.range(shape[2])
    in_rows = (rows >= top) & (rows < bottom)
    in_cols = (cols >= left) & (cols < right)
    box = (in_rows[:, None] & in_cols[None, :])[None, :, :, None]
    x_out = tf.where(box, tf.gather(x, perm), x)
    area = tf.cast((bottom - top) * (right - left), tf.float32)
    lam_box = 1.0 - area / tf.cast(shape[1] * shape[2], tf.float32)
    lam_y = tf.cast(lam_box, y.dtype)
    return x_out, lam_y * y + (1.0 - lam_y) * tf.gather(y, perm)


@dataclass(frozen=True)
class BatchMixer:
    """Mixes training batches by mixup and/or cutmix (see the module docstring).

    Args:
        mixup: alpha of the mixup Beta distribution; 0 = off.
        cutmix: alpha of the cutmix Beta distribution; 0 = off.
        seed: the run seed (``cfg.seed``).
    """

    mixup: float
    cutmix: float
    seed: int

    def batch_seeds(self, epoch: int, n_batches: int) -> np.ndarray:
        """int64 ``(n_batches, 4, 2)`` stateless seeds of the batches of ``epoch``."""
        out = np.empty((n_batches, N_SEEDS, 2), np.int64)
        for b in range(n_batches):
            ss = np.random.SeedSequence([int(self.seed) & 0xFFFFFFFF, int(epoch), b, _MIX_TAG])
            out[b] = ss.generate_state(2 * N_SEEDS).reshape(N_SEEDS, 2)
        return out

    def __call__(self, x: tf.Tensor, y: tf.Tensor, seeds: tf.Tensor,
                 lam: float | None = None) -> tuple[tf.Tensor, tf.Tensor]:
        """Mix one batch ``x [B, H, W, C]``, ``y [B, K]`` with its ``seeds`` (one row of
        :meth:`batch_seeds`); ``lam`` fixes lambda instead of drawing it (for tests)."""
        seeds = tf.convert_to_tensor(seeds, tf.int64)
        perm = batch_permutation(tf.shape(x)[0], seeds[0])

        def mix() -> tuple[tf.Tensor, tf.Tensor]:
            return mixup_pair(x, y, sample_lambda(self.mixup, seeds[2]) if lam is None else lam, perm)

        def cut() -> tuple[tf.Tensor, tf.Tensor]:
            centre = tf.random.stateless_uniform([2], seeds[3])
            return cutmix_pair(x, y, sample_lambda(self.cutmix, seeds[2]) if lam is None else lam, perm, centre)

        if self.mixup > 0 and self.cutmix > 0:
            return tf.cond(tf.random.stateless_uniform([], seeds[1]) < 0.5, cut, mix)
        if self.cutmix > 0:
            return cut()
        if self.mixup > 0:
            return mix()
        return x, y


def build_mixer(cfg: AugmentConfig, seed: int) -> BatchMixer | None:
    """The batch mixer of ``augment.mixup`` / ``augment.cutmix``, or None when both are 0.

    Example:
        >>> build_mixer(AugmentConfig(mixup=0.2), seed=42)
        BatchMixer(mixup=0.2, cutmix=0.0, seed=42)
    """
    if cfg.mixup <= 0 and cfg.cutmix <= 0:
        return None
    return BatchMixer(float(cfg.mixup), float(cfg.cutmix), int(seed))
