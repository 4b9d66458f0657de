"""What turns a model's raw scores into decisions: calibration and thresholds, fitted on
validation predictions only.

A :class:`PostProcess` is fitted once per cross-validation fold, from that fold's validation
split (never its test fold), saved as ``postprocess.json`` in the fold folder and applied
unchanged to the test fold, to the ensemble and to new data.

* binary: one calibrator (optional) and one threshold;
* multilabel: the same per label (each label is its own binary problem);
* multiclass: one temperature (optional) on the probability matrix; decisions are the
  arg-max, so there is no threshold (``evaluate.threshold`` does not apply).

With calibration the threshold is chosen on the calibrated validation scores and applies to
calibrated scores; ``raw_thresholds`` are chosen on the raw scores, for a model used without
its calibrator (``medtl predict`` on a fold folder). Both calibrators are increasing maps of
the score, so the two give the same decisions up to ties. The rule ``calibrated:P`` is the
exception that needs the calibrator: its threshold is P on the calibrated scale, and its raw
threshold is the calibrator's inverse at P (P itself without calibration).

``threshold_ci`` and ``raw_threshold_ci`` hold each threshold's bootstrap interval (the rule,
and for ``calibrated:P`` the calibrator, refitted on resampled validation patients), so a cut
that the validation split cannot pin down is visible. Files written before they existed load
with None.

Example:
    >>> pp = PostProcess.fit("binary", ["normal", "lesion"], [[0], [0], [1], [1]],
    ...                      [[.1], [.4], [.35], [.8]], rule="youden")
    >>> round(pp.thresholds[0], 4), pp.decide(np.array([[.15], [.9]])).tolist()
    (0.1965, [[0], [1]])
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from scipy.special import expit, logit

from medtl.stats.calibration import calibrator_from_dict, fit_platt, fit_temperature
from medtl.stats.thresholds import choose_threshold, parse_threshold_rule, threshold_interval

__all__ = ["PostProcess"]

CALIBRATIONS = ("none", "temperature", "platt")


@dataclass
class PostProcess:
    """Calibration and thresholds of one model, fitted on its validation predictions.

    Attributes:
        task: binary, multiclass or multilabel.
        classes: class (or label) names.
        rule: the threshold rule (``evaluate.threshold``); None for multiclass.
        calibration: none, temperature or platt.
        thresholds: one per score column, on the calibrated scale when calibrated (None for
            multiclass).
        raw_thresholds: the same rule applied to the raw scores.
        calibrators: ``to_dict()`` of each fitted calibrator (one per column; one for
            multiclass), or None without calibration.
        n_val: validation images the fit used.
        threshold_ci: per column, ``[low, high]`` bootstrap interval of the threshold on the
            scale of ``thresholds`` (None where too few replicates were usable); None when
            not computed (multiclass, ``n_boot=0``, files from before it existed).
        raw_threshold_ci: the same on the scale of ``raw_thresholds``.
        extra: notes: ``warnings``; ``threshold_ci`` (n_boot, alpha, seed, unit) when computed.
        tta: the test-time augmentation (``predict.tta``) the validation scores were averaged
            over, so the scores this was fitted on; files from before it existed load as
            ``none`` (they were fitted on single-view scores).
    """

    task: str
    classes: list[str]
    rule: str | None
    calibration: str = "none"
    thresholds: list[float] | None = None
    raw_thresholds: list[float] | None = None
    calibrators: list[dict] | None = None
    n_val: int = 0
    extra: dict = field(default_factory=dict)
    threshold_ci: list[list[float] | None] | None = None
    raw_threshold_ci: list[list[float] | None] | None = None
    tta: str = "none"

    # ------------------------------------------------------------------------------------

    @classmethod
    def fit(cls, task: str, classes: list[str], y_val: Any, s_val: Any, rule: str = "youden",
            calibration: str = "none", *, groups: Any = None, n_boot: int = 1000, alpha: float = 0.05,
            seed: int = 0) -> PostProcess:
        """Fit on validation targets (N, K) and raw scores (N, K) only.

        Args:
            task: binary, multiclass or multilabel.
            classes: class (or label) names.
            y_val: validation targets (N, K) (or (N,) for binary).
            s_val: the model's raw validation scores, same shape.
            rule: ``evaluate.threshold`` (see :func:`medtl.stats.thresholds.choose_threshold`).
            calibration: none, temperature or platt.
            groups: patient id per validation image, for the threshold intervals; None
                resamples images (too narrow with several films per patient).
            n_boot: bootstrap replicates of the threshold intervals; 0 skips them.
            alpha: 0.05 gives 95% intervals.
            seed: bootstrap seed.

        Raises:
            ValueError: the validation data lack a class the rule or the calibrator needs, or
                the calibration is not possible for the task (Platt is binary only).

        Example:
            >>> pp = PostProcess.fit("binary", ["n", "p"], [0, 0, 1, 1], [.1, .4, .35, .8], "calibrated:0.5")
            >>> pp.thresholds, pp.threshold_ci
            ([0.5], [[0.5, 0.5]])
        """
        if calibration not in CALIBRATIONS:
            raise ValueError(f"evaluate.calibration: invalid value {calibration!r}; expected {', '.join(CALIBRATIONS)}")
        y = _as_2d(y_val, "y_val")
        s = _as_2d(s_val, "s_val")
        if y.shape != s.shape:
            raise ValueError(f"validation targets {y.shape} and scores {s.shape}: need the same shape (N, K)")
        pp = cls(task=task, classes=list(classes), rule=None if task == "multiclass" else rule,
                 calibration=calibration, n_val=int(y.shape[0]))
        if task == "multiclass":
            if calibration == "platt":
                raise ValueError("evaluate.calibration: platt is binary-only; use temperature for multiclass")
            if calibration == "temperature":
                pp.calibrators = [fit_temperature(y.argmax(axis=1), s).to_dict()]
            return pp
        if calibration != "none":
            pp.calibrators = [pp._fit_column(y[:, j], s[:, j], pp._name(j)) for j in range(s.shape[1])]
        name, p = parse_threshold_rule(rule)
        if name == "calibrated" and pp.calibrators:
            # P is a probability on the calibrated scale; the raw model needs the score the
            # calibrator maps to P (no rule applied to raw scores could know P's meaning).
            pp.thresholds = [float(p)] * s.shape[1]  # type: ignore[arg-type]
            pp.raw_thresholds = [_inverse_at(c, float(p)) for c in pp.calibrators]  # type: ignore[arg-type]
        else:
            cal = pp.calibrate(s)
            pp.raw_thresholds = [_threshold(y[:, j], s[:, j], rule, pp._name(j)) for j in range(s.shape[1])]
            pp.thresholds = (pp.raw_thresholds if pp.calibrators is None else
                             [_threshold(y[:, j], cal[:, j], rule, pp._name(j)) for j in range(s.shape[1])])
        if n_boot:
            pp._fit_intervals(y, s, rule, groups, int(n_boot), alpha, seed)
        return pp

    def _fit_intervals(self, y: np.ndarray, s: np.ndarray, rule: str, groups: Any, n_boot: int,
                       alpha: float, seed: int) -> None:
        """Bootstrap each column's threshold on the raw scale, then map the ends through the
        column's calibrator (increasing, so the ends of one are the ends of the other)."""
        refit = parse_threshold_rule(rule)[0] == "calibrated" and bool(self.calibrators)
        p = parse_threshold_rule(rule)[1]
        raw_ci: list[list[float] | None] = []
        for j in range(s.shape[1]):
            choose = None
            if refit:
                # The cut moves only through the calibrator: refit it, as fit() does, per replicate.
                def refit_cut(yy: np.ndarray, ss: np.ndarray) -> float:
                    return _inverse_at(_fit_calibrator(self.calibration, yy, ss)[0], float(p))  # type: ignore[arg-type]

                choose = refit_cut
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a calibrator at its bounds on one replicate is no news
                ci = threshold_interval(y[:, j], s[:, j], rule, groups, n_boot, alpha, seed, choose=choose)
            raw_ci.append(None if ci is None else [float(ci[0]), float(ci[1])])
        self.raw_threshold_ci = raw_ci
        self.threshold_ci = raw_ci if not self.calibrators else [
            None if ci is None else [float(v) for v in _apply(c, ci)] for c, ci in zip(self.calibrators, raw_ci)]
        self.extra["threshold_ci"] = {"n_boot": n_boot, "alpha": float(alpha), "seed": int(seed),
                                      "unit": "image" if groups is None else "patient", "interval": "percentile"}

    def _fit_column(self, y: np.ndarray, s: np.ndarray, name: str) -> dict:
        d, note = _fit_calibrator(self.calibration, y, s)
        if note:
            msg = f"Platt scaling for {name!r} {note}"
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
            self.extra.setdefault("warnings", []).append(msg)
        return d

    def _name(self, j: int) -> str:
        return self.classes[1] if self.task == "binary" else self.classes[j]

    # ------------------------------------------------------------------------------------

    def calibrate(self, s: Any) -> np.ndarray:
        """Calibrated scores (N, K); the raw scores when there is no calibrator."""
        s = _as_2d(s, "scores")
        if not self.calibrators:
            return s
        if self.task == "multiclass":
            return calibrator_from_dict(self.calibrators[0]).apply(s)
        return np.stack([calibrator_from_dict(c).apply(s[:, j]) for j, c in enumerate(self.calibrators)], axis=1)

    def decide(self, s_dec: Any, thresholds: list[float] | None = None) -> np.ndarray:
        """Decisions from decision-scale scores: (N, K) 0/1 (binary, multilabel) or (N,) class index."""
        s = _as_2d(s_dec, "scores")
        if self.task == "multiclass":
            return s.argmax(axis=1)
        t = np.asarray(self.thresholds if thresholds is None else thresholds, dtype=np.float64)
        return (s >= t[None, :]).astype(np.int8)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; inverse of :meth:`from_dict`."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PostProcess:
        """Rebuild from :meth:`to_dict` output."""
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


def _fit_calibrator(method: str, y: np.ndarray, s: np.ndarray) -> tuple[dict, str | None]:
    """(calibrator dict, note): temperature, or Platt unless its slope is <= 0."""
    if method == "temperature":
        return fit_temperature(y, s).to_dict(), None
    platt = fit_platt(y, s)
    if platt.slope > 0:
        return platt.to_dict(), None
    # A slope <= 0 (weak signal on a small validation split) would reverse or erase the
    # model's ranking on new data; temperature scaling keeps the order.
    note = (f"fitted slope {platt.slope:.3g} <= 0 on {y.size} validation images, which would invert "
            "the model's ranking; used temperature scaling instead")
    return fit_temperature(y, s).to_dict(), note


def _inverse_at(cal: dict, p: float) -> float:
    """The raw score a binary calibrator maps to probability p.

    Both calibrators are affine in logit space: temperature logit(p) = z / T, Platt
    logit(p) = a z + b, so z = T logit(p) or (logit(p) - b) / a, returned as a probability
    when the calibrator takes probabilities.

    Example:
        >>> round(_inverse_at({"method": "platt", "slope": 2.0, "intercept": -1.0}, 0.5), 4)  # z = 0.5
        0.6225
    """
    c = calibrator_from_dict(cal)
    q = float(logit(p))
    if cal["method"] == "temperature":
        z = q * c.temperature  # type: ignore[union-attr]
    else:
        if not c.slope > 0:  # type: ignore[union-attr]
            raise ValueError(f"Platt calibrator with slope {c.slope} has no increasing inverse")  # type: ignore[union-attr]
        z = (q - c.intercept) / c.slope  # type: ignore[union-attr]
    return float(expit(z)) if c.input == "probability" else float(z)


def _apply(cal: dict, values: Any) -> np.ndarray:
    """A binary calibrator applied to raw thresholds (clipped into [0, 1] for probability input:
    the 'call all negative' threshold sits a float above a top score of 1)."""
    v = np.asarray(values, dtype=np.float64)
    if cal.get("input", "probability") == "probability":
        v = np.clip(v, 0.0, 1.0)
    return calibrator_from_dict(cal).apply(v)


def _threshold(y: np.ndarray, s: np.ndarray, rule: str, name: str) -> float:
    try:
        return float(choose_threshold(y, s, rule))
    except ValueError as exc:
        raise ValueError(f"threshold for {name!r} on the validation split: {exc}") from None


def _as_2d(a: Any, name: str) -> np.ndarray:
    x = np.asarray(a, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"{name}: expected shape (N,) or (N, K), got {x.shape}")
    return x
