"""Choosing the decision threshold from validation data.

Call :func:`choose_threshold` on the validation split of a training fold only, never on
the test fold: a threshold tuned on the data it is then evaluated on flatters sensitivity
and specificity. The chosen value is saved with the model and applied unchanged to test
and new data with the medtl rule ``score >= threshold`` is positive.

The data-driven rules return a threshold midway (in logit space for probabilities) between
the two validation scores either side of the cut they choose, so re-applying it to the same
data reproduces exactly the decisions the rule was asked for.

:func:`threshold_interval` bootstraps the rule itself (resampling patients), so a cut that
small validation data cannot pin down shows a wide interval.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.special import expit, logit

from medtl.stats.bootstrap import resample_weights
from medtl.stats.metrics import as_binary_labels, as_scores

__all__ = ["RULE_FORMS", "choose_threshold", "parse_threshold_rule", "threshold_interval"]

RULE_FORMS = ("'youden', 'sensitivity:0.9', 'specificity:0.9', 'fixed:0.5', 'youden-centre', "
              "'prevalence', 'prevalence:0.2' or 'calibrated:0.5'")
_NO_VALUE = ("youden", "youden-centre", "prevalence")  # rules that may stand without ':X'
_UNIT = ("sensitivity", "specificity")  # X in [0, 1]
_OPEN_UNIT = ("prevalence", "calibrated")  # X in (0, 1): a share or a probability strictly inside
_J_TOL = 1e-9  # Youden J values a/n_pos - b/n_neg that differ by less are the same cut quality
MIN_VALID_SHARE = 0.5  # threshold_interval gives None when fewer replicates than this share are usable


def parse_threshold_rule(rule: str) -> tuple[str, float | None]:
    """Split a threshold rule into its name and value.

    Args:
        rule: ``youden``, ``youden-centre`` or ``prevalence``; ``sensitivity:X`` or
            ``specificity:X`` with X in [0, 1]; ``prevalence:Q`` or ``calibrated:P`` with Q, P
            in (0, 1); ``fixed:T`` with T any finite number.

    Returns:
        (name, value), value None for youden, youden-centre and prevalence without ``:Q``.

    Raises:
        ValueError: the rule is not one of the allowed forms (the message lists them).

    Example:
        >>> parse_threshold_rule("sensitivity:0.9")
        ('sensitivity', 0.9)
    """
    text = str(rule).strip().lower()
    name, sep, val = text.partition(":")
    name, val = name.strip(), val.strip()
    if name in _NO_VALUE and not sep:
        return name, None
    if name in ("fixed", *_UNIT, *_OPEN_UNIT) and val:
        try:
            x = float(val)
        except ValueError:
            x = float("nan")
        if name == "fixed" and np.isfinite(x):
            return name, x
        if name in _UNIT and 0.0 <= x <= 1.0:
            return name, x
        if name in _OPEN_UNIT and 0.0 < x < 1.0:
            return name, x
        what = {"fixed": "a finite number", **dict.fromkeys(_UNIT, "a number in [0, 1]"),
                **dict.fromkeys(_OPEN_UNIT, "a number strictly between 0 and 1")}[name]
        raise ValueError(f"threshold rule {rule!r}: {val!r} is not {what}; allowed forms: {RULE_FORMS}")
    raise ValueError(f"threshold rule {rule!r} is not recognised; allowed forms: {RULE_FORMS}")


def choose_threshold(y_true: Any, y_score: Any, rule: str = "youden") -> float:
    """Pick a decision threshold on validation data.

    Rules (``score >= t`` is positive):

    * ``youden``: maximise sensitivity + specificity - 1 (J); ties go to the lowest such
      threshold (the most sensitive).
    * ``youden-centre``: every cut reaching the maximum J (up to 1e-9) is equally good on
      these data; the threshold is the centre of the span from the lowest to the highest of
      them, from the validation score below the lowest to the one at the highest. With one
      best cut this is ``youden``; with several the centre may lie between them, where fewer
      films are decided right on these data, because the data cannot tell the tied cuts apart
      and the middle leaves the widest margin for scores that move under shift.
    * ``sensitivity:X``: the highest threshold whose sensitivity on these data is >= X
      (hence the best specificity that keeps that sensitivity).
    * ``specificity:X``: the lowest threshold whose specificity on these data is >= X.
    * ``prevalence``: the cut that calls as many films positive as these data hold positives
      (the (1 - prevalence) quantile of the scores); ``prevalence:Q`` calls the share Q
      positive, Q the expected prevalence of the target population (labels are then not
      needed). With tied scores the nearest achievable share is taken, ties to the lower cut.
    * ``calibrated:P``: the cut at probability P on the calibrated scale. Here, without a
      calibrator, it is ``fixed:P``: the scores are taken to be calibrated already.
      :meth:`medtl.stats.postprocess.PostProcess.fit` applies it to calibrated scores and
      maps P back to the raw scale through the calibrator.
    * ``fixed:T``: T, whatever the data.

    The data-driven rules pick the validation decisions above; of the thresholds that make
    them, the one returned lies midway between the two validation scores on either side of
    the cut (in logit space for probabilities), not on a film's own score, unless every film
    is called positive or negative.

    Args:
        y_true: 0/1 validation labels.
        y_score: validation scores (probabilities or logits; only their order matters).
        rule: see above.

    Returns:
        The threshold as a float.

    Raises:
        ValueError: bad rule, or the data lack the class the rule needs (youden,
            youden-centre and prevalence need both, sensitivity needs positives, specificity
            needs negatives, prevalence:Q neither).

    Example:
        >>> round(choose_threshold([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], "sensitivity:1.0"), 4)
        0.1965
        >>> round(choose_threshold([0, 0, 0, 1, 1], [0.01, 0.02, 0.1, 0.9, 0.95], "youden-centre"), 4)
        0.5
    """
    name, value = parse_threshold_rule(rule)
    if name in ("fixed", "calibrated"):
        return float(value)  # type: ignore[arg-type]
    y = as_binary_labels(y_true)
    s = as_scores(y_score, y.size)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    own_prevalence = name == "prevalence" and value is None
    need_pos = name in ("youden", "youden-centre", "sensitivity") or own_prevalence
    need_neg = name in ("youden", "youden-centre", "specificity") or own_prevalence
    if (need_pos and n_pos == 0) or (need_neg and n_neg == 0):
        raise ValueError(
            f"threshold rule {rule!r}: validation data have {n_pos} positive and {n_neg} negative "
            "image(s); the rule needs both classes (or at least the one it targets). "
            "Use a larger, stratified validation split or 'fixed:T'"
        )
    # Every distinct score is a candidate; one more just above the maximum calls all negative.
    cand = np.unique(s)
    cand = np.append(cand, np.nextafter(cand[-1], np.inf))
    tp = n_pos - np.searchsorted(np.sort(s[y == 1]), cand, side="left")
    fp = n_neg - np.searchsorted(np.sort(s[y == 0]), cand, side="left")
    sens = tp / n_pos if n_pos else np.zeros(cand.size)
    spec = 1.0 - fp / n_neg if n_neg else np.zeros(cand.size)
    tol = 1e-12  # so that e.g. 9/10 >= 0.9 is not lost to rounding
    if name == "youden":
        idx = int(np.argmax(sens + spec - 1.0))  # argmax takes the first (lowest) of ties
    elif name == "youden-centre":
        j = sens + spec - 1.0
        best = np.flatnonzero(j >= j.max() - _J_TOL)
        return _span_centre(cand, int(best[0]), int(best[-1]))
    elif name == "prevalence":
        share = (n_pos / y.size) if value is None else value
        called = (tp + fp) / y.size  # share called positive, falling as t rises
        idx = int(np.argmin(np.round(np.abs(called - share), 12)))  # argmin: ties go to the lower cut
    elif name == "sensitivity":
        idx = int(np.flatnonzero(sens >= value - tol)[-1])  # sensitivity falls as t rises
    else:
        idx = int(np.flatnonzero(spec >= value - tol)[0])  # specificity rises with t
    return _margin_threshold(cand, idx)


def _span_centre(cand: np.ndarray, first: int, last: int) -> float:
    """Centre of the thresholds from (cand[first - 1], cand[first]] to cand[last]: every cut in
    the candidates first..last reached the best J. In logit space for probabilities, like
    :func:`_margin_threshold`, so a temperature- or Platt-calibrated model gets the same cut."""
    if first == last:  # one best cut: its own margin midpoint
        return _margin_threshold(cand, first)
    lo, hi = float(cand[max(first - 1, 0)]), float(cand[last])
    return _midpoint(lo, hi, bool(cand[0] >= 0.0 and cand[-2] <= 1.0))


def _midpoint(lo: float, hi: float, probabilities: bool) -> float:
    """Midway between lo < hi: in logit space when both are probabilities strictly inside (0, 1)
    (logit(0) is -inf), else on the scores' own scale."""
    if probabilities and 0.0 < lo and hi < 1.0:
        return float(expit((logit(lo) + logit(hi)) / 2.0))
    return (lo + hi) / 2.0


def _margin_threshold(cand: np.ndarray, idx: int) -> float:
    """Every threshold in (cand[idx - 1], cand[idx]] makes the same validation decisions. Its
    upper end sits on a validation film's own score, so a new film scoring a hair below that film
    flips; the midpoint keeps a margin on both sides. Probabilities are split midway in logit
    space, where temperature and Platt scaling are affine, so a calibrated model's threshold
    decides exactly as the raw model's does."""
    hi = float(cand[idx])
    if idx == 0 or idx == cand.size - 1:  # all called positive, or all called negative
        return hi
    lo = float(cand[idx - 1])
    mid = _midpoint(lo, hi, bool(cand[0] >= 0.0 and cand[-2] <= 1.0))
    return mid if lo < mid <= hi else hi


def threshold_interval(
    y_true: Any,
    y_score: Any,
    rule: str = "youden",
    groups: Any = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    *,
    choose: Callable[[np.ndarray, np.ndarray], float] | None = None,
) -> tuple[float, float] | None:
    """Bootstrap percentile interval of the threshold a rule picks: how far the cut would move
    on another validation sample of the same kind.

    Each replicate draws patients with replacement (images, without ``groups``) with
    :func:`medtl.stats.bootstrap.resample_weights`, takes all their films along and applies the
    rule afresh. Like the metric intervals, when the data hold both classes a replicate that
    drew one class only is skipped (it is not a validation set of the same kind), and so is
    one where the rule raises ValueError.

    Args:
        y_true: 0/1 labels (N,).
        y_score: scores (N,), the scale the threshold applies to.
        rule: a rule of :func:`choose_threshold`; ``fixed:T`` and ``calibrated:P`` (which is
            fixed here) give (T, T) without resampling.
        groups: patient id per image, or None to resample images (right only with one image
            per patient; otherwise the interval is too narrow).
        n_boot: replicates.
        alpha: 0.05 gives a 95% interval.
        seed: random seed; the same seed gives the same interval.
        choose: ``choose(y, s) -> threshold`` used instead of ``choose_threshold(y, s, rule)``
            (e.g. to refit a calibrator per replicate); ``rule`` is then only checked.

    Returns:
        (low, high), the alpha/2 and 1 - alpha/2 percentiles of the replicate thresholds, or
        None when fewer than half of the replicates were usable (e.g. two patients).

    Raises:
        ValueError: bad rule, n_boot or alpha, or the rule fails on the full data.

    Example:
        >>> y = [0] * 5 + [1] * 5
        >>> s = [0.05, 0.1, 0.15, 0.2, 0.3, 0.7, 0.8, 0.85, 0.9, 0.95]
        >>> low, high = threshold_interval(y, s, "youden", n_boot=200)
        >>> 0.2 < low < 0.5 < high < 0.8
        True
    """
    name, value = parse_threshold_rule(rule)
    if int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"n_boot: invalid value {n_boot!r}; expected an integer >= 1 (1000 is usual)")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha: invalid value {alpha!r}; expected 0 < alpha < 1 (0.05 for 95% intervals)")
    if choose is None:
        if name in ("fixed", "calibrated"):
            return float(value), float(value)  # type: ignore[arg-type]

        def choose(yy: np.ndarray, ss: np.ndarray) -> float:
            return choose_threshold(yy, ss, rule)

    y = as_binary_labels(y_true)
    s = as_scores(y_score, y.size)
    choose(y, s)  # unguarded: a rule that cannot work on the data fails here, loudly
    both = bool(y.any() and not y.all())
    reps: list[float] = []
    for weights in resample_weights(y.size, groups, int(n_boot), seed):
        for w in weights.astype(np.int64):
            idx = np.repeat(np.arange(y.size), w)  # the replicate as a data set; a film drawn twice is in it twice
            n_pos = int(y[idx].sum())
            if both and n_pos in (0, idx.size):
                continue
            try:
                reps.append(float(choose(y[idx], s[idx])))
            except ValueError:
                continue
    ok = np.asarray(reps, dtype=np.float64)
    ok = ok[np.isfinite(ok)]
    if ok.size < max(1, MIN_VALID_SHARE * n_boot):
        return None
    low, high = np.quantile(ok, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)
