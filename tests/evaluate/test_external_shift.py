"""evaluate_external's shift figures and unlabelled films (issue 20), with the fake models of
tests/evaluate/_cv_helpers.py and synthetic pooled features: no TensorFlow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medtl.evaluate import external
from medtl.evaluate.external import EXTERNAL_KEYS, evaluate_external, format_external
from medtl.evaluate.cv import run_cv
from medtl.io.atomic import read_json
from medtl.run.files import write_feature_summary
from medtl.run.layout import fold_dir
from medtl.stats.shift import build_summary
from tests.evaluate._cv_helpers import FakePredict, FakeTrainer, fake_scores, install_fakes, make_cfg, make_png_set

D = 12


def _run_with_summary(tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    data = make_png_set(tmp_path / "ds")
    cfg = make_cfg(data, tmp_path / "w")
    install_fakes(monkeypatch, FakeTrainer(1.0), FakePredict(1.0))
    run = run_cv(cfg, run_dir=tmp_path / "run", progress=False)
    # The ensemble's shift is measured against the first fold's summary.
    write_feature_summary(fold_dir(run, 0), build_summary(np.random.default_rng(0).normal(size=(200, D)), seed=0))
    return run, data


def _fake_score(monkeypatch, shift: float):
    """The scoring step with the fake model, giving pooled features ``shift`` away from training's."""

    def score(pred, cfg, manifest):
        raw = [fake_scores(manifest.df.assign(label=manifest.df["label"].clip(lower=0)), "binary",
                           manifest.classes, salt=f"member{i}") for i in range(len(pred.members))]
        feats = np.random.default_rng(1).normal(size=(len(manifest), D)) + shift
        return manifest, raw, [], feats

    monkeypatch.setattr(external, "_score", score)


def test_same_source_films_give_figures_and_no_warning(tmp_path, monkeypatch):
    run, data = _run_with_summary(tmp_path, monkeypatch)
    _fake_score(monkeypatch, shift=0.0)
    m = evaluate_external(run, data, tmp_path / "ext", progress=False)
    assert list(m) == list(EXTERNAL_KEYS) and m["labelled"] is True and m["selective"]["n_kept"]["100"] == m["n"]
    sh = m["shift"]
    assert sh["n"] == m["n"] and sh["reliable"] and sh["warning"] is None
    assert 0.3 < sh["domain_auc"] < 0.7 and sh["share_ood"] < 0.2
    assert not any("differ from the training films" in w for w in m["warnings"])
    pred = pd.read_csv(tmp_path / "ext" / "predictions.csv")
    assert {"ood", "ood_percentile"} <= set(pred.columns) and pred["ood"].mean() == pytest.approx(sh["share_ood"])
    assert "shift from the training films: domain AUC" in format_external(m)


def test_shifted_films_warn_in_metrics_and_console(tmp_path, monkeypatch):
    run, data = _run_with_summary(tmp_path, monkeypatch)
    _fake_score(monkeypatch, shift=4.0)
    m = evaluate_external(run, data, tmp_path / "ext", progress=False)
    assert m["shift"]["domain_auc"] > 0.95 and m["shift"]["share_ood"] == 1.0
    line = [w for w in m["warnings"] if "differ from the training films" in w]
    assert len(line) == 1 and "100% of films lie outside the training range" in line[0]
    assert read_json(tmp_path / "ext" / "metrics.json")["warnings"] == m["warnings"]
    assert f"WARNING {line[0]}" in format_external(m)
    assert pd.read_csv(tmp_path / "ext" / "predictions.csv")["ood"].all()


def test_unlabelled_csv_gives_shift_and_score_distribution(tmp_path, monkeypatch):
    run, data = _run_with_summary(tmp_path, monkeypatch)
    df = pd.read_csv(data)
    nolab = data.parent / "unlabelled.csv"
    df[["file"]].to_csv(nolab, index=False)  # no label, no patient column
    _fake_score(monkeypatch, shift=4.0)
    m = evaluate_external(run, nolab, tmp_path / "ext", progress=False)
    assert m["labelled"] is False and m["roc_auc"] is None and m["n"] == len(df) == m["n_patients"]
    assert m["selective"] is None and m["intervals"] == {}  # no labels: no accuracy, kept or not
    assert m["shift"]["share_ood"] == 1.0
    dist = m["score_distribution"]["score"]
    s = pd.read_csv(tmp_path / "ext" / "predictions.csv")["score"].to_numpy()
    assert dist["q50"] == pytest.approx(np.median(s)) and dist["share_positive"] == pytest.approx(
        float((s >= m["threshold"]).mean()))
    assert "label" not in pd.read_csv(tmp_path / "ext" / "predictions.csv").columns
    assert any("no label column 'label'" in w for w in m["warnings"])
    text = format_external(m)
    assert "roc_auc" not in text and "q50" in text and "domain AUC" in text


def test_runs_without_a_summary_have_no_shift(tmp_path, monkeypatch):
    data = make_png_set(tmp_path / "ds")
    install_fakes(monkeypatch, FakeTrainer(1.0), FakePredict(1.0))
    run = run_cv(make_cfg(data, tmp_path / "w"), run_dir=tmp_path / "run", progress=False)
    _fake_score(monkeypatch, shift=4.0)
    m = evaluate_external(run, data, tmp_path / "ext", progress=False)
    assert m["shift"] is None and "ood" not in pd.read_csv(tmp_path / "ext" / "predictions.csv").columns
