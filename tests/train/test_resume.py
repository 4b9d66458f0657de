"""A run killed at any point resumes from its last completed epoch to the same final weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.train.conftest import crash_after_epoch

REPO = Path(__file__).resolve().parents[2]


def _assert_same_run(a: Path, b: Path) -> None:
    from medtl.models.classifier import load_model

    wa, wb = load_model(a / "model.keras").get_weights(), load_model(b / "model.keras").get_weights()
    assert len(wa) == len(wb)
    for x, y in zip(wa, wb):
        np.testing.assert_allclose(x, y, atol=1e-5)
    ha, hb = pd.read_csv(a / "history.csv"), pd.read_csv(b / "history.csv")
    assert ha[["stage", "epoch"]].values.tolist() == hb[["stage", "epoch"]].values.tolist()
    cols = [c for c in ha.columns if c not in ("seconds", "fit_seconds")]
    np.testing.assert_allclose(ha[cols].astype(float), hb[cols].astype(float), atol=1e-5)
    for name in ("history_stage1.csv", "history_stage2.csv"):
        assert len(pd.read_csv(a / name)) == len(pd.read_csv(b / name))
    np.testing.assert_allclose(pd.read_csv(a / "val_predictions.csv")["score"],
                               pd.read_csv(b / "val_predictions.csv")["score"], atol=1e-5)
    ma, mb = (json.loads((p / "metrics.json").read_text()) for p in (a, b))
    assert ma["best"] == pytest.approx(mb["best"]) and ma["epochs_run"] == mb["epochs_run"]


def _state(run: Path) -> dict | None:
    try:
        return json.loads((run / "ckpt" / "state.json").read_text())
    except (OSError, ValueError):
        return None


@pytest.mark.slow
def test_sigkilled_subprocess_resumes_to_the_same_weights(reference_run, tmp_path):
    from medtl.config import save_config
    from medtl.train.trainer import train

    cfg, ref = reference_run
    cfg_path = tmp_path / "config.yaml"
    save_config(cfg, cfg_path)
    run = tmp_path / "killed"
    code = (
        "from medtl.config import load_resolved\n"
        "from medtl.train.trainer import train\n"
        f"train(load_resolved({str(cfg_path)!r}), run_dir={str(run)!r}, progress=False)\n"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    with open(tmp_path / "child.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + 300
        try:
            # Kill right after the first epoch's checkpoint: mid-stage, so the optimizer state
            # (Adam moments, iteration count) must come back from the checkpoint too.
            while (st := _state(run)) is None or st["global_epoch"] < 1:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"child ended or hung: {(tmp_path / 'child.log').read_text()[-2000:]}")
                time.sleep(0.05)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    st = _state(run)
    assert proc.returncode == -signal.SIGKILL and not st["finished"]
    assert (st["stage"], st["epoch"]) == (0, 1) and st["optimizer"]

    res = train(cfg, resume=run, progress=False)
    assert res.run_dir == run
    _assert_same_run(ref.run_dir, run)


@pytest.mark.slow
def test_crash_at_a_stage_boundary_resumes_to_the_same_weights(reference_run, monkeypatch, tmp_path):
    from medtl.train import trainer

    cfg, ref = reference_run
    with crash_after_epoch(monkeypatch, 2):
        trainer.train(cfg, run_dir=tmp_path / "run", progress=False)
    st = _state(tmp_path / "run")
    assert (st["stage"], st["epoch"], st["optimizer"]) == (1, 0, None)
    assert len(pd.read_csv(tmp_path / "run" / "history.csv")) == 2

    trainer.train(cfg, resume=tmp_path / "run", progress=False)
    _assert_same_run(ref.run_dir, tmp_path / "run")


def test_resuming_a_finished_run_returns_its_result(reference_run):
    from medtl.train.trainer import train

    cfg, ref = reference_run
    again = train(cfg, resume=ref.run_dir, progress=False)
    assert again.metrics == ref.metrics
    assert len(again.history) == len(ref.history)
    np.testing.assert_allclose(again.val_predictions["score"], ref.val_predictions["score"])
