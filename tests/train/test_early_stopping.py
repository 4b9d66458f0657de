"""Early stopping on a sequence of logged values, without training."""

from __future__ import annotations

import math

import pytest

from medtl.config import ConfigError
from medtl.train.early_stopping import EarlyStopping, better, monitor_mode
from medtl.train.state import RunState


def _feed(stopper: EarlyStopping, state: RunState, s: int, values: list[dict], summary: dict | None = None,
          planned: int | None = None) -> list[tuple[bool, bool]]:
    """Feed one stage's epochs as the loop does (global_epoch moves on after each)."""
    stopper.on_stage_start(state)
    out = []
    for e, logs in enumerate(values):
        v = stopper.on_epoch_end(state, s, e, logs, summary, planned)
        state.global_epoch += 1
        out.append((v.improved, v.stop))
        if v.stop:
            break
    return out


def test_stops_after_patience_epochs_without_improvement():
    stopper, state = EarlyStopping("val_roc_auc", patience=2), RunState()
    aucs = [0.60, 0.70, 0.69, 0.70, 0.90]  # 0.70 again is not better (no val_loss to break the tie)
    got = _feed(stopper, state, 0, [{"val_roc_auc": a} for a in aucs])
    assert got == [(True, False), (True, False), (False, False), (False, True)]
    assert state.best_at == {"stage": 1, "epoch": 2, "global_epoch": 2}
    assert state.best_logs == {"val_roc_auc": 0.70} and state.wait == 2


def test_best_is_over_all_stages_and_patience_within_a_stage():
    stopper, state = EarlyStopping("val_loss", patience=1), RunState()
    assert stopper.mode == "min"
    _feed(stopper, state, 0, [{"val_loss": 0.5}, {"val_loss": 0.4}])
    summary = {"best": None, "improved_overall": False, "stopped_early": False}
    # Stage 2 starts worse than stage 1's best: no improvement, and patience 1 stops it at once.
    got = _feed(stopper, state, 1, [{"val_loss": 0.45}, {"val_loss": 0.1}], summary, planned=3)
    assert got == [(False, True)]
    assert state.best_at["stage"] == 1 and state.best == [0.4, 0.4]
    assert summary == {"best": 0.45, "improved_overall": False, "stopped_early": True}


def test_ties_are_broken_by_the_lower_validation_loss_and_nan_never_wins():
    stopper, state = EarlyStopping("val_roc_auc", patience=5), RunState()
    got = _feed(stopper, state, 0, [{"val_roc_auc": 0.8, "val_loss": 0.5},
                                    {"val_roc_auc": 0.8, "val_loss": 0.4},
                                    {"val_roc_auc": math.nan, "val_loss": 0.1}])
    assert [g[0] for g in got] == [True, True, False]
    assert state.best_logs["val_loss"] == 0.4
    assert better([0.9, -0.3], [0.9, -0.4], "max") and not better([math.nan, 0.0], [0.5, 0.0], "max")
    assert monitor_mode("loss") == "min" and monitor_mode("roc_auc") == "max"


def test_a_resumed_stage_keeps_its_patience_count():
    stopper, state = EarlyStopping("val_roc_auc", patience=2), RunState()
    _feed(stopper, state, 0, [{"val_roc_auc": 0.8}, {"val_roc_auc": 0.7}])
    state.epoch = 2  # resumed mid-stage: the wait of 1 must survive on_stage_start
    stopper.on_stage_start(state)
    assert state.wait == 1
    assert stopper.on_epoch_end(state, 0, 2, {"val_roc_auc": 0.7}).stop


def test_a_monitor_that_is_not_logged_is_a_config_error():
    with pytest.raises(ConfigError, match="train.monitor: 'val_pr_auc' is not a logged metric"):
        EarlyStopping("val_pr_auc", patience=1).on_epoch_end(RunState(), 0, 0, {"val_loss": 0.3})
