"""Tests of the final model's schedule (medtl/evaluate/final.py).

The retraining itself is tested end to end through ``run_cv`` in test_cv.py.
"""

from __future__ import annotations

from medtl.evaluate.final import retrain_schedule


def test_retrain_schedule_rounds_half_up_and_trains_every_stage():
    assert retrain_schedule([0.0, 0.49, 0.5, 1.5, 2.5, 3.0]) == [1, 1, 1, 2, 3, 3]
