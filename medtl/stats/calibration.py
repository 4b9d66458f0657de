"""Post-hoc calibration: temperature scaling and Platt scaling.

Fit on validation data only (like the threshold), then save ``calibrator.to_dict()`` as
JSON beside the model and rebuild it with :func:`calibrator_from_dict`.

Both work on logits. Probabilities are turned into logits after clipping to
[EPS, 1 - EPS] (a float32 sigmoid saturates to exactly 0 or 1 for large logits), so a
calibrator fitted on probabilities must also be applied to probabilities, which the
stored ``input`` field enforces.

* Temperature scaling (Guo et al. 2017) divides the logits by one number T > 0. It keeps
  the ranking, so ROC AUC is unchanged. Binary scores (N,) or multiclass (N, K).
* Platt scaling (Platt 1999) fits sigmoid(a * logit + b), binary only, with Platt's
  smoothed targets (N+ + 1) / (N+ + 2) and 1 / (N- + 2), which keep the fit finite on
  separable validation data.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import optimize, special

from medtl.stats.metrics import as_binary_labels

EPS = 1e-7
InputKind = Literal["probability", "logit"]
_T_BOUNDS = (0.01, 100.0)


def _check_input(kind: str) -> None:
    if kind not in ("probability", "logit"):
        raise ValueError(f"input: invalid value {kind!r}; expected 'probability' or 'logit'")


def _logits(scores: Any, kind: str) -> tuple[np.ndarray, bool]:
    """Scores -> float64 logits, plus whether they are multiclass (N, K >= 2)."""
    _check_input(kind)
    z = np.asarray(scores, dtype=np.float64)
    multiclass = z.ndim == 2 and z.shape[1] >= 2
    if z.ndim == 2 and z.shape[1] == 1:
        z = z[:, 0]
    if z.ndim not in (1, 2) or z.shape[0] == 0:
        raise ValueError(f"scores: expected shape (N,), (N, 1) or (N, K), got {z.shape}")
    if not np.all(np.isfinite(z)):
        raise ValueError("scores: contain NaN or inf; calibrate finite model outputs")
    if kind == "probability":
        if z.min() < 0 or z.max() > 1:
            raise ValueError(
                f"scores: values outside [0, 1] (min {z.min():.4g}, max {z.max():.4g}) with input='probability'; "
                "pass input='logit' for raw logits"
            )
        z = np.clip(z, EPS, 1.0 - EPS)
        # For softmax outputs log(p) are logits up to a per-row constant, which softmax ignores.
        z = np.log(z) if multiclass else special.logit(z)
    return z, multiclass


def _restore_shape(out: np.ndarray, scores: Any) -> np.ndarray:
    shape = np.shape(scores)
    return out.reshape(shape) if len(shape) == 2 and shape[1] == 1 else out


@dataclass(frozen=True)
class TemperatureScaling:
    """p = sigmoid(z / T) (binary) or softmax(z / T) (multiclass) on logits z.

    Attributes:
        temperature: T > 0; T > 1 softens over-confident predictions.
        input: whether :meth:`apply` receives ``probability`` or ``logit`` scores.
    """

    temperature: float
    input: InputKind = "probability"

    def __post_init__(self) -> None:
        _check_input(self.input)
        if not (np.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature: invalid value {self.temperature!r}; expected a number > 0")

    def apply(self, scores: Any) -> np.ndarray:
        """Calibrated probabilities, same shape as ``scores``."""
        z, multiclass = _logits(scores, self.input)
        if multiclass:
            return special.softmax(z / self.temperature, axis=1)
        return _restore_shape(special.expit(z / self.temperature), scores)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; inverse of :meth:`from_dict`."""
        return {"method": "temperature", "temperature": float(self.temperature), "input": self.input}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TemperatureScaling:
        """Rebuild from :meth:`to_dict` output."""
        _expect_method(d, "temperature")
        return cls(temperature=float(d["temperature"]), input=d.get("input", "probability"))


@dataclass(frozen=True)
class PlattScaling:
    """p = sigmoid(slope * z + intercept) on binary logits z.

    Attributes:
        slope: multiplies the logit (< 1 softens over-confident predictions).
        intercept: shifts the logit (corrects a prevalence offset).
        input: whether :meth:`apply` receives ``probability`` or ``logit`` scores.
    """

    slope: float
    intercept: float
    input: InputKind = "probability"

    def __post_init__(self) -> None:
        _check_input(self.input)

    def apply(self, scores: Any) -> np.ndarray:
        """Calibrated probabilities, same shape as ``scores``."""
        z, multiclass = _logits(scores, self.input)
        if multiclass:
            raise ValueError(
                "PlattScaling: is binary-only; got (N, K) scores. Use temperature scaling for multiclass"
            )
        return _restore_shape(special.expit(self.slope * z + self.intercept), scores)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; inverse of :meth:`from_dict`."""
        return {
            "method": "platt",
            "slope": float(self.slope),
            "intercept": float(self.intercept),
            "input": self.input,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PlattScaling:
        """Rebuild from :meth:`to_dict` output."""
        _expect_method(d, "platt")
        return cls(slope=float(d["slope"]), intercept=float(d["intercept"]), input=d.get("input", "probability"))


Calibrator = TemperatureScaling | PlattScaling


def _expect_method(d: dict[str, Any], method: str) -> None:
    if d.get("method") != method:
        raise ValueError(f"calibrator dict: method is {d.get('method')!r}, expected {method!r}")


def calibrator_from_dict(d: dict[str, Any]) -> Calibrator:
    """Rebuild a calibrator saved with ``to_dict()``.

    Example:
        >>> calibrator_from_dict({"method": "temperature", "temperature": 2.0}).apply([0.5]).tolist()
        [0.5]
    """
    kinds = {"temperature": TemperatureScaling, "platt": PlattScaling}
    method = d.get("method") if isinstance(d, dict) else None
    if method not in kinds:
        raise ValueError(f"calibrator dict: method {method!r} is unknown; expected one of {sorted(kinds)}")
    return kinds[method].from_dict(d)


def _binary_nll(z: np.ndarray, target: np.ndarray) -> float:
    # mean of log(1 + e^z) - t z, the logistic loss written stably.
    return float(np.mean(np.logaddexp(0.0, z) - target * z))


def _multiclass_nll(z: np.ndarray, y: np.ndarray) -> float:
    logp = special.log_softmax(z, axis=1)
    return float(-np.mean(logp[np.arange(y.size), y]))


def fit_temperature(y_true: Any, scores: Any, input: InputKind = "probability") -> TemperatureScaling:
    """Fit temperature scaling by minimising the negative log-likelihood.

    Args:
        y_true: 0/1 labels (binary), or class indices (N,) / one-hot (N, K) (multiclass).
        scores: validation probabilities or logits, (N,), (N, 1) or (N, K).
        input: ``probability`` or ``logit``.

    Returns:
        The fitted :class:`TemperatureScaling`. If T hits its search bounds [0.01, 100]
        (e.g. perfectly separated validation data) a warning says so.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> z = rng.normal(0, 2, 5000); y = rng.random(5000) < 1 / (1 + np.exp(-z))
        >>> t = fit_temperature(y, 1 / (1 + np.exp(-3 * z)))  # over-confident by 3x
        >>> round(t.temperature)
        3
    """
    z, multiclass = _logits(scores, input)
    if multiclass:
        y = _class_targets(y_true, z.shape)

        def loss(log_t: float) -> float:
            return _multiclass_nll(z / np.exp(log_t), y)
    else:
        yb = _binary_targets(y_true, z.size).astype(np.float64)

        def loss(log_t: float) -> float:
            return _binary_nll(z / np.exp(log_t), yb)

    lo, hi = np.log(_T_BOUNDS[0]), np.log(_T_BOUNDS[1])
    res = optimize.minimize_scalar(loss, bounds=(lo, hi), method="bounded", options={"xatol": 1e-6})
    t = float(np.exp(res.x))
    if min(abs(res.x - lo), abs(res.x - hi)) < 1e-3:
        warnings.warn(
            f"fit_temperature: T = {t:.3g} is at its search bound {_T_BOUNDS}; validation data may be "
            "separable or too small to calibrate on",
            RuntimeWarning,
            stacklevel=2,
        )
    return TemperatureScaling(temperature=t, input=input)


def fit_platt(y_true: Any, scores: Any, input: InputKind = "probability") -> PlattScaling:
    """Fit Platt scaling (binary) by minimising the NLL against Platt's smoothed targets.

    Args:
        y_true: 0/1 labels.
        scores: validation probabilities or logits, (N,) or (N, 1).
        input: ``probability`` or ``logit``.

    Returns:
        The fitted :class:`PlattScaling`.

    Example:
        >>> p = fit_platt([0, 0, 1, 1, 1], [0.1, 0.6, 0.4, 0.8, 0.9])
        >>> p.apply([0.5]).shape
        (1,)
    """
    z, multiclass = _logits(scores, input)
    if multiclass:
        raise ValueError("fit_platt: is binary-only; got (N, K) scores. Use fit_temperature for multiclass")
    y = _binary_targets(y_true, z.size)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    target = np.where(y == 1, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))

    def loss_grad(ab: np.ndarray) -> tuple[float, np.ndarray]:
        a, b = ab
        u = a * z + b
        r = special.expit(u) - target  # d loss / d u, per sample
        return _binary_nll(u, target), np.array([np.mean(r * z), np.mean(r)])

    res = optimize.minimize(loss_grad, x0=np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
    if not res.success:
        warnings.warn(f"fit_platt: optimiser did not converge ({res.message})", RuntimeWarning, stacklevel=2)
    return PlattScaling(slope=float(res.x[0]), intercept=float(res.x[1]), input=input)


def _binary_targets(y_true: Any, n: int) -> np.ndarray:
    y = as_binary_labels(y_true)
    if y.size != n:
        raise ValueError(f"y_true: has {y.size} labels but scores have {n} rows; pass matching arrays")
    return y


def _class_targets(y_true: Any, shape: tuple[int, ...]) -> np.ndarray:
    n, k = shape
    y = np.asarray(y_true)
    if y.ndim == 2 and y.shape == (n, k):
        y = y.argmax(axis=1)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.number) or y.min() < 0 or y.max() >= k:
        raise ValueError(f"y_true: expected class indices in [0, {k - 1}] of shape ({n},) or one-hot ({n}, {k})")
    return y.astype(np.int64)
