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
the score, so the two give the same decisions up to ties.

Example:
    >>> pp = PostProcess.fit("binary", ["normal", "lesion"], [[0], [0], [1], [1]],
    ...                      [[.1], [.4], [.35], [.8]], rule="youden")
    >>> pp.thresholds, pp.decide(np.array([[.2], [.9]])).tolist()
    ([0.35], [[0], [1]])
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from medtl.stats.calibration import calibrator_from_dict, fit_platt, fit_temperature
from medtl.stats.thresholds import choose_threshold

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

    # ------------------------------------------------------------------------------------

    @classmethod
    def fit(cls, task: str, classes: list[str], y_val: Any, s_val: Any, rule: str = "youden",
            calibration: str = "none") -> PostProcess:
        """Fit on validation targets (N, K) and raw scores (N, K) only.

        Raises:
            ValueError: the validation data lack a class the rule or the calibrator needs, or
                the calibration is not possible for the task (Platt is binary only).
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
        cal = pp.calibrate(s)
        pp.raw_thresholds = [_threshold(y[:, j], s[:, j], rule, pp._name(j)) for j in range(s.shape[1])]
        pp.thresholds = (pp.raw_thresholds if pp.calibrators is None else
                         [_threshold(y[:, j], cal[:, j], rule, pp._name(j)) for j in range(s.shape[1])])
        return pp

    def _fit_column(self, y: np.ndarray, s: np.ndarray, name: str) -> dict:
        if self.calibration == "temperature":
            return fit_temperature(y, s).to_dict()
        platt = fit_platt(y, s)
        if platt.slope > 0:
            return platt.to_dict()
        # A slope <= 0 (weak signal on a small validation split) would reverse or erase the
        # model's ranking on new data; temperature scaling keeps the order.
        msg = (f"Platt scaling for {name!r} fitted slope {platt.slope:.3g} <= 0 on {y.size} validation "
               "images, which would invert the model's ranking; used temperature scaling instead")
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
        self.extra.setdefault("warnings", []).append(msg)
        return fit_temperature(y, s).to_dict()

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
