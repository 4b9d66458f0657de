"""The linear probe (medtl/evaluate/probe.py): a logistic regression on pooled features that
separates separable features perfectly and finds nothing in noise."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medtl.evaluate.probe import PROBE_COLUMN, fit_probe, format_probe, linear_probe, probe_summary


def _data(n: int, d: int, signal: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)  # imbalanced, as clinical sets are
    x = rng.normal(size=(n, d))
    x[:, 0] += signal * y
    groups = np.repeat(np.arange(n // 2), 2)  # two films per patient
    return x, y, groups


def test_separable_features_give_auc_one():
    x, y, g = _data(300, 64, 6.0, seed=0)
    r = linear_probe(x[:200], y[:200], x[200:], y[200:], groups=g[:200], seed=0)
    assert r["roc_auc"] == 1.0
    assert r["scores"].shape == (100,) and r["n_train"] == 200 and r["C"] > 0


def test_noise_gives_auc_near_one_half():
    x, y, g = _data(600, 64, 0.0, seed=1)
    r = linear_probe(x[:300], y[:300], x[300:], y[300:], groups=g[:300], seed=0)
    assert 0.35 < r["roc_auc"] < 0.65


def test_inner_folds_keep_patients_together_and_need_two_per_class():
    x, y, _ = _data(40, 4, 3.0, seed=2)
    est = fit_probe(x, y, groups=np.arange(40) // 2)
    assert est.predict_proba(x).shape == (40, 2)
    y1 = np.zeros(40, int)
    y1[:2] = 1
    with pytest.raises(ValueError, match="1 patient"):
        fit_probe(x, y1, groups=np.r_[[0, 0], np.arange(1, 39)])


def test_summary_pools_the_folds_and_the_console_line():
    x, y, _ = _data(200, 4, 3.0, seed=3)
    oof = pd.DataFrame({"fold": np.arange(200) % 2, "label": y, "score": x[:, 0], PROBE_COLUMN: -x[:, 1]})
    s = probe_summary(oof)
    assert s["pooled"]["fine_tuned_roc_auc"] > 0.9 and 0.3 < s["pooled"]["probe_roc_auc"] < 0.7
    assert set(s["per_fold"]) == {"0", "1"}
    assert probe_summary(oof.drop(columns=[PROBE_COLUMN])) is None
    assert format_probe({"fine_tuned_roc_auc": 0.97, "probe_roc_auc": 0.95}) == \
        "fine-tuning vs linear probe: AUC 0.970 vs 0.950"


@pytest.mark.slow  # two folds of MobileNetV2 plus the probe's backbone pass: ~1 min on 2 cores
def test_cv_reports_the_probe_beside_fine_tuning(tmp_path, capsys):
    """evaluate.linear_probe: per-fold probe blocks, probe_score in the test predictions, pooled AUCs."""
    import json

    from medtl.config import config_from_dict
    from medtl.data.synthetic import make_sample_data
    from medtl.evaluate.cv import run_cv
    from tests.train.conftest import tiny_raw

    data = make_sample_data(tmp_path / "data", n_patients=16, seed=3, image_size=(64, 64), prevalence=0.5)
    raw = tiny_raw(data, tmp_path, evaluate={"folds": 2, "bootstrap": 20, "linear_probe": True})
    raw["train"]["stages"] = [{"unfreeze": "head", "epochs": 1, "lr": 1e-2}]
    run = run_cv(config_from_dict(raw), progress=True)
    out = capsys.readouterr().out
    assert "fine-tuning vs linear probe: AUC" in out and "Pooled fine-tuning vs linear probe" in out
    m = json.loads((run / "metrics.json").read_text())
    assert set(m["probe"]["pooled"]) == {"fine_tuned_roc_auc", "probe_roc_auc"}
    assert set(m["probe"]["per_fold"]) == {"0", "1"}
    fold = json.loads((run / "fold_0" / "metrics.json").read_text())["probe"]
    assert fold["C"] > 0 and fold["n_test"] > 0 and fold["features"] == 1280
    assert "probe_score" in (run / "fold_0" / "test_predictions.csv").read_text().splitlines()[0]
