"""medtl.evaluate: cross-validation, external tests and run comparison, on top of the run layer.

The statistics themselves (metrics, bootstrap intervals, thresholds, calibration, DeLong's
test, post-processing) live in :mod:`medtl.stats`, below the run layer, and are re-exported
here so that ``from medtl.evaluate import roc_auc`` keeps working. Nothing here imports
TensorFlow at import time.

Example:
    >>> from medtl.evaluate import binary_metrics, bootstrap_metrics, choose_threshold
    >>> t = choose_threshold([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], "youden")  # on validation data
    >>> binary_metrics([0, 1, 1, 0], [0.2, 0.9, 0.5, 0.3], threshold=t)["sensitivity"]
    1.0
"""

from medtl.stats import *  # noqa: F403  (the statistics, re-exported: see the docstring)
from medtl.stats import __all__  # noqa: F401
