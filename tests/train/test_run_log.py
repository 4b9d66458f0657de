"""The run log: console lines, stage summaries and history files, without training."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd

from medtl.train.run_log import RunLog
from medtl.train.state import RunState

_STAGE = SimpleNamespace(unfreeze="head", lr=1e-3, optimizer="adam", schedule="constant")


def test_stage_header_and_summary_survive_a_resume(tmp_path, capsys):
    log, state = RunLog(tmp_path, progress=True), RunState()
    summary = log.on_stage_start(state, 0, _STAGE, 2, 3, 1234, cached=True, monitored=True)
    assert capsys.readouterr().out == \
        "Stage 1/2: head only, lr 0.001, 3 epochs, 1,234 trainable params, cached features\n"
    assert list(summary) == ["stage", "unfreeze", "lr", "optimizer", "schedule", "epochs_planned", "epochs_run",
                             "stopped_early", "best", "improved_overall", "trainable_params", "feature_cache",
                             "seconds"]
    log.on_epoch_end(state, 0, 0, {"loss": 0.5}, summary, lr=1e-3, seconds=1.23456, fit_seconds=1.0, best=True)
    state.epoch = 1
    again = log.on_stage_start(state, 0, _STAGE, 2, 3, 1234, cached=True, monitored=True)
    assert again is summary and again["epochs_run"] == 1 and again["seconds"] == 1.235
    assert capsys.readouterr().out.endswith(", resuming at epoch 2\n")
    assert state.history == [{"stage": 1, "epoch": 1, "global_epoch": 1, "loss": 0.5, "lr": 1e-3,
                              "seconds": 1.235, "fit_seconds": 1.0, "best": True}]


def test_a_fixed_run_has_no_monitor_fields_and_a_quiet_log_prints_only_notes(tmp_path, capsys):
    log, state = RunLog(tmp_path, progress=False), RunState()
    summary = log.on_stage_start(state, 0, _STAGE, 1, 2, 10, cached=False, monitored=False)
    assert "best" not in summary and "stopped_early" not in summary
    log.on_epoch_end(state, 0, 0, {"loss": 0.5}, summary, lr=1e-3, seconds=1.0, fit_seconds=1.0, best=None)
    assert "best" not in state.history[0]
    log("hidden")
    log.note("said anyway")
    out = capsys.readouterr()
    assert out.out == "" and out.err == "said anyway\n"


def test_histories_are_written_per_stage_and_together(tmp_path):
    log = RunLog(tmp_path, progress=False)
    log.write_histories([])
    assert not (tmp_path / "history.csv").exists()
    rows = [{"stage": s, "epoch": e, "loss": 0.1 * e} for s in (1, 2) for e in (1, 2)]
    log.write_histories(rows)
    assert len(pd.read_csv(tmp_path / "history.csv")) == 4
    part = pd.read_csv(tmp_path / "history_stage2.csv")
    assert list(part.columns) == ["epoch", "loss"] and part["epoch"].tolist() == [1, 2]
