"""Test-time augmentation (``predict.tta``): a model's raw scores averaged over fixed views.

Modes:

- ``none``: the film as it is (one view; the plain prediction, exactly).
- ``flip``: the film and its left-right mirror. Allowed only with ``augment.hflip: true``
  (the model was trained on mirrored films); chest films are not left-right symmetric.
- ``shift``: the film, two diagonal shifts of 3% of the side, and zooms of 0.95x and 1.05x
  about the centre (5 views), padded with black like the letterbox.
- ``flip+shift``: the ``shift`` views plus the mirrored film (6 views).

Why raw scores are averaged before calibration: the fold calibrators and thresholds are
functions of one model's raw score; the mean over views is a smoother estimate of that same
score, so it stays on the scale they were fitted on, and the ensemble code (calibrate each
member, then average members) is unchanged. The trainer scores the validation split with the
same views (:func:`predict_dataset_views`), so a run's threshold and calibrator are chosen on
the scores they are applied to (averaging pulls uncertain scores towards the middle, which
moved a single-view threshold off its mark: ``benchmarks/bench_shift_proxy.py``).

The views' own scores (:func:`predict_each_view`) tell whether the views disagree on a film
(the ``spread`` and ``uncertain`` columns of :class:`medtl.run.predictor.Predictor`).

Example:
    >>> views = tta_views("shift")
    >>> raw = predict_views(model, x_batch, views)   # (N, K) mean over 5 views
    >>> predict_each_view(model, x_batch, views).shape   # (5, N, K): one score per view
"""

from __future__ import annotations

from typing import Callable, Sequence

import cv2
import numpy as np

__all__ = ["TTA_MODES", "tta_views", "predict_views", "predict_dataset_views", "predict_each_view",
           "predict_dataset_each_view", "view_mean"]

TTA_MODES = ("none", "flip", "shift", "flip+shift")
View = Callable[[np.ndarray], np.ndarray]
# (shift x, shift y as a fraction of the side, zoom): small enough to keep the anatomy in frame.
_SHIFTS = ((0.03, 0.03, 1.0), (-0.03, -0.03, 1.0), (0.0, 0.0, 0.95), (0.0, 0.0, 1.05))


def _identity(x: np.ndarray) -> np.ndarray:
    return x


def _hflip(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x[:, :, ::-1])


def _affine(dx: float, dy: float, zoom: float) -> View:
    """A view that zooms by ``zoom`` about the centre, then shifts by (dx, dy) of the side."""

    def view(x: np.ndarray) -> np.ndarray:
        n, h, w = x.shape[:3]
        m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), 0.0, zoom)
        m[0, 2] += dx * w
        m[1, 2] += dy * h
        out = np.empty_like(x)
        for i in range(n):
            img = cv2.warpAffine(x[i], m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                 borderValue=0)
            out[i] = img.reshape(x.shape[1:])  # cv2 drops a trailing channel of 1
        return out

    view.__name__ = f"shift({dx:+.2f},{dy:+.2f})x{zoom:.2f}"
    return view


def tta_views(mode: str) -> list[View]:
    """The views of a ``predict.tta`` mode; each maps a batch (N, H, W[, C]) to the same shape.

    The first view is always the identity. Whether flips are allowed is checked by the config
    (``predict.tta`` with a flip needs ``augment.hflip: true``), not here.

    Raises:
        ValueError: an unknown mode.

    Example:
        >>> len(tta_views("none")), len(tta_views("flip+shift"))
        (1, 6)
    """
    if mode not in TTA_MODES:
        raise ValueError(f"predict.tta: invalid value {mode!r}; expected one of {' | '.join(TTA_MODES)}")
    views: list[View] = [_identity]
    if "shift" in mode:
        views += [_affine(*s) for s in _SHIFTS]
    if "flip" in mode:
        views.append(_hflip)
    return views


def predict_each_view(model, x: np.ndarray, views: Sequence[View]) -> np.ndarray:
    """Raw scores (V, N, K) of ``model`` on a batch ``x``, one slice per view.

    Example:
        >>> predict_each_view(model, x, tta_views("flip")).shape
        (2, 16, 1)
    """
    return np.stack([np.asarray(model.predict_on_batch(v(x)), dtype=np.float64) for v in views])


def predict_views(model, x: np.ndarray, views: Sequence[View]) -> np.ndarray:
    """Raw scores (N, K) of ``model`` on a batch ``x``, averaged over ``views``.

    With the identity view alone this is ``model.predict_on_batch(x)`` exactly.

    Example:
        >>> predict_views(model, x, tta_views("none")).shape
        (16, 1)
    """
    return view_mean(predict_each_view(model, x, views))


def predict_dataset_each_view(model, xs, views: Sequence[View]) -> np.ndarray:
    """Raw scores (V, N, K) of ``model`` over a ``tf.data`` dataset of image batches, one slice
    per view; one view is ``model.predict(xs)`` itself (the same numbers as without TTA).

    Example:
        >>> predict_dataset_each_view(model, ds.map(lambda x, y: x), tta_views("shift")).shape
        (5, 40, 1)
    """
    if len(views) == 1:
        return np.asarray(model.predict(xs, verbose=0), dtype=np.float64)[None]
    parts = [predict_each_view(model, np.asarray(b), views) for b in xs.as_numpy_iterator()]
    return np.concatenate(parts, axis=1) if parts else np.zeros((len(views), 0, model.outputs[0].shape[-1]))


def predict_dataset_views(model, xs, views: Sequence[View]) -> np.ndarray:
    """Raw scores (N, K) of ``model`` over a ``tf.data`` dataset of image batches, averaged over
    ``views``; one view is ``model.predict(xs)`` itself (the same numbers as without TTA).

    The trainer scores the validation split with this (``predict.tta``), as the CV test folds
    and :class:`medtl.run.predictor.Predictor` score films, so thresholds fit their scores.

    Example:
        >>> raw = predict_dataset_views(model, ds.map(lambda x, y: x), tta_views("shift"))
    """
    return view_mean(predict_dataset_each_view(model, xs, views))


def view_mean(each: np.ndarray) -> np.ndarray:
    """(N, K) mean over the views of (V, N, K) raw scores; one view is returned as it is."""
    return each[0] if len(each) == 1 else each.mean(axis=0)
