"""Tests of the deployed threshold chosen on pooled out-of-fold scores (medtl/evaluate/pooling.py,
``evaluate.ensemble_threshold: pooled``), with the fake fold trainer of tests/evaluate/_cv_helpers.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medtl.evaluate.cv import merge_cv, run_cv
from medtl.evaluate.pooling import pooled_thresholds
from medtl.io.atomic import read_json, write_json
from medtl.run.files import deployed_ensemble_thresholds, read_postprocess
from medtl.stats.thresholds import choose_threshold, threshold_interval
from tests.evaluate._cv_helpers import install_fakes, make_cfg, make_png_set


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_png_set(tmp_path / "ds", n_patients=30)


def _folds(run: Path) -> list:
    return [read_postprocess(run / f"fold_{f}") for f in range(3)]


def test_pooled_threshold_is_the_rule_on_all_out_of_fold_scores(data, tmp_path, monkeypatch):
    install_fakes(monkeypatch)
    cfg = make_cfg(data, tmp_path / "work", ensemble_threshold="pooled", final_model="retrain")
    run = tmp_path / "run"
    for f in range(3):  # fold jobs, then a merge: nothing is retrained
        run_cv(cfg, run_dir=run, fold=f, progress=False)
    merge_cv(run)
    oof = pd.read_csv(run / "oof_predictions.csv")
    y, s = oof["label"].to_numpy(), oof["score"].to_numpy()
    t = choose_threshold(y, s, "youden")
    ens = read_json(run / "ensemble.json")
    assert ens["threshold_source"] == "pooled" and ens["thresholds"] == [pytest.approx(t)]
    low, high = threshold_interval(y, s, "youden", groups=oof["patient"].to_numpy(dtype=object), n_boot=50, seed=3)
    assert ens["threshold_ci"] == [[pytest.approx(low), pytest.approx(high)]]
    assert f"pooled out-of-fold scores of all {len(oof)} films (30 patients) of folds 0, 1, 2" in ens["threshold_rule"]
    # the CV figures still decide each film at its own fold's validation threshold
    m = read_json(run / "metrics.json")
    assert [m["thresholds"][str(f)] for f in range(3)] == [[oof[oof["fold"] == f]["threshold"].iloc[0]]
                                                         for f in range(3)]
    # the retrained model (not trained by a merge) is planned with the same cut on raw scores
    assert m["final"]["thresholds"] == [pytest.approx(t)] and "pooled" in m["final"]["threshold_rule"]
    # prediction uses it
    thresholds, source = deployed_ensemble_thresholds(run, [0, 1, 2], _folds(run))
    assert thresholds == [pytest.approx(t)] and source == ens["threshold_rule"]


def test_median_is_the_default_and_a_stale_pooled_file_is_not_used(data, tmp_path, monkeypatch):
    install_fakes(monkeypatch)
    run = run_cv(make_cfg(data, tmp_path / "work"), progress=False)
    median = float(np.median([pp.thresholds[0] for pp in _folds(run)]))
    ens = read_json(run / "ensemble.json")
    assert ens["threshold_source"] == "median" and ens["thresholds"] == [pytest.approx(median)]
    assert deployed_ensemble_thresholds(run, [0, 1, 2], _folds(run))[0] == [pytest.approx(median)]
    # a pooled ensemble.json written for other folds (a fold added since the merge) is ignored
    write_json(run / "ensemble.json", {**ens, "threshold_source": "pooled", "thresholds": [0.123],
                                       "threshold_rule": "pooled", "members": ["fold_0", "fold_1"]})
    thresholds, source = deployed_ensemble_thresholds(run, [0, 1, 2], _folds(run))
    assert thresholds == [pytest.approx(median)] and "medtl cv --merge" in source
    merge_cv(run)
    assert read_json(run / "ensemble.json")["thresholds"] == [pytest.approx(median)]


def test_pooled_calibrated_threshold_is_a_probability_on_calibrated_scores():
    """calibrated:0.5 on pooled calibrated scores cuts them at 0.5; on raw scores the run's
    calibrator is fitted to the pooled scores and the cut mapped back to the raw scale."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 60)
    raw = 1 / (1 + np.exp(-(rng.normal(size=120) + 2 * y - 1 - 2)))  # over-confident negatives
    oof = pd.DataFrame({"file": [f"f{i}" for i in range(120)], "patient": [f"p{i // 2}" for i in range(120)],
                        "fold": np.arange(120) % 3, "label": y, "score": raw, "score_calibrated": raw})
    cal = pooled_thresholds(oof, "binary", ["n", "p"], "_calibrated", "calibrated:0.5", "none", 0, 0)
    assert cal["thresholds"] == [0.5]
    got = pooled_thresholds(oof, "binary", ["n", "p"], "", "calibrated:0.5", "platt", 0, 0)
    from medtl.stats.calibration import fit_platt

    platt = fit_platt(y, raw)
    r = got["raw_thresholds"][0]
    assert float(platt.apply(np.array([r]))[0]) == pytest.approx(0.5, abs=1e-6)
