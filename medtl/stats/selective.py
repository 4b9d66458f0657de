"""Films to refer: per-film disagreement of an ensemble's members, and selective prediction.

Two questions a department asks before letting a model read films alone:

* **Which films should a person read?** For an ensemble (the fold models of a CV run),
  :func:`uncertain_flags` gives each film the ``spread`` of its members' decision-scale scores
  (standard deviation across members; the largest over score columns) and flags it
  ``uncertain`` when *at least one member's decision differs from the ensemble's*. That rule
  needs no tuning: a cut on the spread would have to be chosen on data scored by several
  members, and a CV run has none that is clean (each out-of-fold or validation film is scored
  by one fold model only), so any tuned cut would be chosen on the test films themselves.
* **What does referring the least certain films buy?** :func:`selective_curve` gives accuracy
  and balanced accuracy on the films kept when the least confident are referred first, for
  shares kept from 100% down to 50%. Confidence is the distance of the score from the
  threshold in logit space, ``|logit(s) - logit(t)|``, which needs one score per film (the
  out-of-fold predictions of a CV run have one model each) and treats a threshold of 0.2 as
  fairly as one of 0.5.

numpy only; binary scores are probabilities.

Example:
    >>> members = np.array([[[0.9], [0.4]], [[0.8], [0.6]]])   # 2 members, 2 films, 1 column
    >>> spread, share, flag = uncertain_flags(members, [0.5])
    >>> flag.tolist()
    [False, True]
    >>> c = selective_curve([1, 0, 1, 0], [0.9, 0.2, 0.45, 0.55], 0.5, kept=(1.0, 0.5))
    >>> c["accuracy"]
    [0.5, 1.0]
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

__all__ = ["KEPT", "SUMMARY_KEPT", "member_spread", "member_disagreement", "decides_otherwise", "uncertain_flags",
           "confidence", "selective_curve", "selective_summary"]

KEPT: tuple[float, ...] = tuple(round(1.0 - 0.05 * i, 2) for i in range(11))  # 100%, 95%, ..., 50% kept
SUMMARY_KEPT: tuple[float, ...] = (1.0, 0.9, 0.8)  # the shares metrics.json and the report quote
_EPS = 1e-6  # scores of exactly 0 or 1 get a finite logit


def _stack(members: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """Members' scores as (M, N, K) float64."""
    m = np.asarray(members, dtype=np.float64)
    if m.ndim == 2:  # (M, N): one score column
        m = m[:, :, None]
    if m.ndim != 3:
        raise ValueError(f"member scores of shape {m.shape}; expected (members, films[, columns])")
    return m


def _decide(s: np.ndarray, thresholds: Sequence[float] | None) -> np.ndarray:
    """(..., N, K) scores -> (..., N, K) 0/1 decisions, or (..., N, 1) arg-max class (thresholds None)."""
    if thresholds is None:
        return s.argmax(axis=-1)[..., None]
    return (s >= np.asarray(thresholds, dtype=np.float64)).astype(np.int8)


def member_spread(members: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """(N,) standard deviation of the members' scores per film, the largest over columns.

    Example:
        >>> member_spread([[0.2, 0.5], [0.4, 0.5]]).round(3).tolist()
        [0.1, 0.0]
    """
    return _stack(members).std(axis=0).max(axis=-1)


def member_disagreement(members: Sequence[np.ndarray] | np.ndarray,
                        thresholds: Sequence[float] | None) -> np.ndarray:
    """(N,) share of members whose decision differs from the ensemble's (the mean score's)
    decision; a multilabel member differs when any label does; multiclass (``thresholds``
    None) compares arg-max classes.

    Example:
        >>> member_disagreement([[0.6, 0.1], [0.3, 0.2], [0.7, 0.3]], [0.5]).round(3).tolist()
        [0.333, 0.0]
    """
    m = _stack(members)
    ens = _decide(m.mean(axis=0), thresholds)
    each = _decide(m, thresholds)
    return (each != ens[None]).any(axis=-1).mean(axis=0)


def decides_otherwise(reference: np.ndarray, voters: Sequence[np.ndarray] | np.ndarray,
                      thresholds: Sequence[float] | None) -> np.ndarray:
    """(N,) True where at least one voter's decision differs from the decision of the
    ``reference`` scores (N, K): the rule of :func:`uncertain_flags` with the reference given,
    e.g. a model's score averaged over test-time views, its voters the single views.

    Example:
        >>> decides_otherwise(np.array([[0.6], [0.7]]), [[[0.45], [0.8]], [[0.75], [0.6]]], [0.5]).tolist()
        [True, False]
    """
    ref = _decide(np.asarray(reference, dtype=np.float64), thresholds)
    return (_decide(_stack(voters), thresholds) != ref[None]).any(axis=-1).any(axis=0)


def uncertain_flags(members: Sequence[np.ndarray] | np.ndarray, thresholds: Sequence[float] | None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(spread, share of members disagreeing, uncertain) per film; ``uncertain`` is True when
    at least one member decides otherwise than the ensemble ("the fold models disagree").

    Example:
        >>> uncertain_flags([[[0.9], [0.4]], [[0.8], [0.6]]], [0.5])[2].tolist()
        [False, True]
    """
    share = member_disagreement(members, thresholds)
    return member_spread(members), share, share > 0


def confidence(scores: Sequence[float] | np.ndarray, thresholds: float | Sequence[float] | np.ndarray
               ) -> np.ndarray:
    """``|logit(s) - logit(t)|``: how far each binary score lies from its threshold.

    Example:
        >>> confidence([0.5, 0.9], 0.5).round(3).tolist()
        [0.0, 2.197]
    """
    def logit(p: np.ndarray) -> np.ndarray:
        p = np.clip(p, _EPS, 1 - _EPS)
        return np.log(p) - np.log1p(-p)

    s = np.asarray(scores, dtype=np.float64)
    t = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), s.shape)
    return np.abs(logit(s) - logit(t))


def selective_curve(y_true: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray,
                    thresholds: float | Sequence[float] | np.ndarray,
                    kept: Sequence[float] = KEPT) -> dict[str, list]:
    """Accuracy against the share of films kept, referring the least confident first.

    For each share ``q`` the ``ceil(q * N)`` films with the highest :func:`confidence` are
    kept (ties keep the earlier row) and decided at their threshold (``s >= t`` positive).

    Args:
        y_true: (N,) 0/1 labels.
        scores: (N,) positive-class probabilities (the decision scale).
        thresholds: one threshold, or one per film (a CV run's own fold thresholds).
        kept: shares of films kept, each in (0, 1].

    Returns:
        ``kept``, ``n_kept``, ``accuracy`` and ``balanced_accuracy`` (None where the kept films
        lack a class), one entry per share.

    Example:
        >>> selective_curve([1, 0, 1, 0], [0.9, 0.2, 0.45, 0.55], 0.5, kept=(1.0, 0.5))["n_kept"]
        [4, 2]
    """
    y = np.asarray(y_true).astype(np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape or not len(y):
        raise ValueError(f"labels {y.shape} and scores {s.shape}: expected the same non-zero length")
    t = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), s.shape)
    order = np.argsort(-confidence(s, t), kind="stable")
    right = ((s >= t).astype(np.int64) == y)[order]
    yo = y[order]
    out: dict[str, list] = {"kept": [], "n_kept": [], "accuracy": [], "balanced_accuracy": []}
    for q in kept:
        if not 0 < q <= 1:
            raise ValueError(f"kept share {q}: expected a value in (0, 1]")
        n = max(1, math.ceil(q * len(y) - 1e-9))  # the tolerance: 0.9 * 10 is 9.000000000000002
        r, yy = right[:n], yo[:n]
        pos, neg = yy == 1, yy == 0
        bal = float((r[pos].mean() + r[neg].mean()) / 2) if pos.any() and neg.any() else None
        out["kept"].append(float(q))
        out["n_kept"].append(int(n))
        out["accuracy"].append(float(r.mean()))
        out["balanced_accuracy"].append(bal)
    return out


def selective_summary(y_true: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray,
                      thresholds: float | Sequence[float] | np.ndarray) -> dict[str, Any]:
    """Accuracy and balanced accuracy at 100%, 90% and 80% of films kept, for ``metrics.json``.

    Example:
        >>> selective_summary([1, 0], [0.9, 0.2], 0.5)["accuracy"]
        {'100': 1.0, '90': 1.0, '80': 1.0}
    """
    c = selective_curve(y_true, scores, thresholds, kept=SUMMARY_KEPT)
    keys = [str(round(q * 100)) for q in c["kept"]]
    return {"kept_percent": keys, "n_kept": dict(zip(keys, c["n_kept"])),
            "accuracy": dict(zip(keys, c["accuracy"])),
            "balanced_accuracy": dict(zip(keys, c["balanced_accuracy"])),
            "confidence": "|logit(score) - logit(threshold)|; the least confident films are referred first"}
