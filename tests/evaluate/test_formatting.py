"""Tests of the console text (medtl/evaluate/formatting.py).

The CV tables are checked against real merged runs in test_cv.py.
"""

from __future__ import annotations

from medtl.evaluate.formatting import format_thresholds


def test_format_thresholds_names_multilabel_values_only():
    assert format_thresholds(None) == "arg-max"
    assert format_thresholds(0.25, ["normal", "lesion"]) == "0.2500"  # binary: one rule, no name
    assert format_thresholds([0.1, 0.33333], ["x", "y"]) == "x 0.1000, y 0.3333"
