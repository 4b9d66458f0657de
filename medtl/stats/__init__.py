"""medtl.stats: metrics, thresholds, calibration, bootstrap intervals and DeLong's test.

Everything here works on plain arrays of labels and scores, imports nothing else of medtl
and never imports TensorFlow, so every layer (config, the run folder, training, evaluation,
the report) can use it. ``medtl.evaluate`` re-exports these names.

Example:
    >>> from medtl.stats import binary_metrics, bootstrap_metrics, choose_threshold
    >>> t = choose_threshold([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], "youden")  # on validation data
    >>> binary_metrics([0, 1, 1, 0], [0.2, 0.9, 0.5, 0.3], threshold=t)["sensitivity"]
    1.0
"""

from importlib import import_module
from typing import Any

# Names resolved on first use (PEP 562): medtl.config imports medtl.stats.thresholds, and the
# eager form pulled scipy.stats and scipy.optimize into every ``import medtl.config``.
_WHERE = {
    "bootstrap": ("Interval", "bootstrap_ci", "bootstrap_metrics", "bootstrap_paired_difference",
                  "resample_weights"),
    "calibration": ("PlattScaling", "TemperatureScaling", "calibrator_from_dict", "fit_platt", "fit_temperature"),
    "compare": ("delong_auc_variance", "delong_ci", "delong_test"),
    "metrics": ("BINARY_METRICS", "average_precision", "binarize", "binary_metrics", "brier_score",
                "expected_calibration_error", "multiclass_metrics", "multilabel_metrics", "reliability_curve",
                "roc_auc", "summarize_folds"),
    "thresholds": ("choose_threshold", "parse_threshold_rule", "threshold_interval"),
}
_MODULE_OF = {name: mod for mod, names in _WHERE.items() for name in names}


def __getattr__(name: str) -> Any:
    mod = _MODULE_OF.get(name)
    if mod is None:
        raise AttributeError(f"module 'medtl.stats' has no attribute {name!r}")
    value = getattr(import_module(f"medtl.stats.{mod}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_MODULE_OF])


__all__ = [
    "BINARY_METRICS",
    "Interval",
    "PlattScaling",
    "TemperatureScaling",
    "average_precision",
    "binarize",
    "binary_metrics",
    "bootstrap_ci",
    "bootstrap_metrics",
    "bootstrap_paired_difference",
    "brier_score",
    "calibrator_from_dict",
    "choose_threshold",
    "delong_auc_variance",
    "delong_ci",
    "delong_test",
    "expected_calibration_error",
    "fit_platt",
    "fit_temperature",
    "multiclass_metrics",
    "multilabel_metrics",
    "parse_threshold_rule",
    "reliability_curve",
    "resample_weights",
    "roc_auc",
    "summarize_folds",
    "threshold_interval",
]
