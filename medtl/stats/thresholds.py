"""Choosing the decision threshold from validation data.

Call :func:`choose_threshold` on the validation split of a training fold only, never on
the test fold: a threshold tuned on the data it is then evaluated on flatters sensitivity
and specificity. The chosen value is saved with the model and applied unchanged to test
and new data with the medtl rule ``score >= threshold`` is positive.

The returned threshold is always one of the observed scores (or, when every image must be
called negative, the next float above the largest score), so re-applying it to the same
data reproduces exactly the sensitivity/specificity the rule was asked for.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import expit, logit

from medtl.stats.metrics import as_binary_labels, as_scores

RULE_FORMS = "'youden', 'sensitivity:0.9', 'specificity:0.9' or 'fixed:0.5'"


def parse_threshold_rule(rule: str) -> tuple[str, float | None]:
    """Split a threshold rule into its name and value.

    Args:
        rule: ``youden``; ``sensitivity:X`` or ``specificity:X`` with X in [0, 1];
            ``fixed:T`` with T any finite number.

    Returns:
        (name, value), value None for youden.

    Raises:
        ValueError: the rule is not one of the allowed forms (the message lists them).

    Example:
        >>> parse_threshold_rule("sensitivity:0.9")
        ('sensitivity', 0.9)
    """
    text = str(rule).strip().lower()
    name, sep, val = text.partition(":")
    name, val = name.strip(), val.strip()
    if name == "youden" and not sep:
        return "youden", None
    if name in ("sensitivity", "specificity", "fixed") and val:
        try:
            x = float(val)
        except ValueError:
            x = float("nan")
        if name == "fixed" and np.isfinite(x):
            return name, x
        if 0.0 <= x <= 1.0:
            return name, x
        what = "a finite number" if name == "fixed" else "a number in [0, 1]"
        raise ValueError(f"threshold rule {rule!r}: {val!r} is not {what}; allowed forms: {RULE_FORMS}")
    raise ValueError(f"threshold rule {rule!r} is not recognised; allowed forms: {RULE_FORMS}")


def choose_threshold(y_true: Any, y_score: Any, rule: str = "youden") -> float:
    """Pick a decision threshold on validation data.

    Rules (``score >= t`` is positive):

    * ``youden``: maximise sensitivity + specificity - 1; ties go to the lowest such
      threshold (the most sensitive).
    * ``sensitivity:X``: the highest threshold whose sensitivity on these data is >= X
      (hence the best specificity that keeps that sensitivity).
    * ``specificity:X``: the lowest threshold whose specificity on these data is >= X.
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
        ValueError: bad rule, or the data lack the class the rule needs (youden needs both,
            sensitivity needs positives, specificity needs negatives).

    Example:
        >>> round(choose_threshold([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], "sensitivity:1.0"), 4)
        0.1965
    """
    name, value = parse_threshold_rule(rule)
    if name == "fixed":
        return float(value)  # type: ignore[arg-type]
    y = as_binary_labels(y_true)
    s = as_scores(y_score, y.size)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    need_pos = name in ("youden", "sensitivity")
    need_neg = name in ("youden", "specificity")
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
    elif name == "sensitivity":
        idx = int(np.flatnonzero(sens >= value - tol)[-1])  # sensitivity falls as t rises
    else:
        idx = int(np.flatnonzero(spec >= value - tol)[0])  # specificity rises with t
    return _margin_threshold(cand, idx)


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
    if 0.0 < lo and hi < 1.0 and cand[0] >= 0.0 and cand[-2] <= 1.0:
        mid = float(expit((logit(lo) + logit(hi)) / 2.0))
    else:
        mid = (lo + hi) / 2.0
    return mid if lo < mid <= hi else hi
