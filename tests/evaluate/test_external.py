"""Tests of medtl/evaluate/external.py: external test sets and paired run comparison.

The runs are cross-validation runs of the fake model (tests/evaluate/_cv_helpers.py), and the
external scoring step is replaced by the fake model too, so no TensorFlow is needed; the slow
end-to-end test in test_cv.py runs the real models through the same code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medtl.config import ConfigError
from medtl.evaluate import binary_metrics, bootstrap_paired_difference, delong_test, roc_auc
from medtl.evaluate import external
from medtl.evaluate.cv import run_cv
from medtl.evaluate.external import EXTERNAL_KEYS, compare_runs, evaluate_external, format_compare, format_external
from medtl.stats.postprocess import PostProcess
from medtl.io.atomic import read_json
from medtl.run.predictor import Predictor
from tests.evaluate._cv_helpers import FakePredict, FakeTrainer, fake_scores, install_fakes, make_cfg, make_png_set


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_png_set(tmp_path / "ds")


def _cv_run(cfg, monkeypatch, run_dir: Path, quality: float = 1.0, salt: str = "") -> Path:
    install_fakes(monkeypatch, FakeTrainer(quality, salt=salt), FakePredict(quality, salt=salt))
    return run_cv(cfg, run_dir=run_dir, progress=False)


def _fake_score(monkeypatch, skipped=()):
    """The external scoring step with the fake model, a different one per fold member."""

    def score(pred, cfg, manifest):
        keep = manifest.subset([i for i, p in enumerate(manifest.paths) if p not in dict(skipped)])
        cols = keep.label_columns if keep.task == "multilabel" else keep.classes
        raw = [fake_scores(keep.df, keep.task, cols, salt=f"member{i}") for i in range(len(pred.members))]
        return keep, raw, list(skipped)

    monkeypatch.setattr(external, "_score", score)


def test_external_metrics_have_exactly_the_keys_and_right_values(data, tmp_path, monkeypatch):
    cfg = make_cfg(data, tmp_path / "w", calibration="temperature")
    run = _cv_run(cfg, monkeypatch, tmp_path / "run")
    _fake_score(monkeypatch)
    out = tmp_path / "ext"
    m = evaluate_external(run, data, out, progress=False)
    assert list(m) == list(EXTERNAL_KEYS)
    assert read_json(out / "metrics.json") == m
    # selective and intervals are in the pinned keys on purpose (issue 20): films to refer, and
    # the interval of every binary metric for the evaluation report
    assert m["selective"]["kept_percent"] == ["100", "90", "80"]
    assert set(m["intervals"]) == set(external.INTERVAL_METRICS) and m["intervals"]["roc_auc"] == m["roc_auc_ci"]
    # recompute: mean over folds of each fold's calibrated score, median fold threshold
    pred = pd.read_csv(out / "predictions.csv")
    df = pd.read_csv(data)
    assert len(pred) == len(df) == m["n"] and m["n_patients"] == df["patient_id"].nunique()
    pps = [PostProcess.from_dict(read_json(run / f"fold_{f}" / "postprocess.json")) for f in range(3)]
    from medtl.data.manifest import load_manifest

    man = load_manifest(cfg)
    raw = [fake_scores(man.df, "binary", man.classes, salt=f"member{i}") for i in range(3)]
    s = np.mean([pp.calibrate(r) for pp, r in zip(pps, raw)], axis=0)[:, 0]
    t = float(np.median([pp.thresholds[0] for pp in pps]))
    y = man.df["label"].to_numpy()
    assert np.allclose(pred["score"], s)
    assert m["threshold"] == pytest.approx(t)
    ref = binary_metrics(y, s, t)
    for k in ("roc_auc", "pr_auc", "sensitivity", "specificity", "ppv", "npv", "f1", "brier", "ece",
              "accuracy", "balanced_accuracy"):
        if np.isnan(ref[k]):  # e.g. no film called positive: ppv undefined, stored as null
            assert m[k] is None, k
        else:
            assert m[k] == pytest.approx(ref[k]), k
    low, high = m["roc_auc_ci"]
    assert low <= m["roc_auc"] <= high
    assert (pred["prediction"] == (s >= t).astype(int)).all()
    assert {"score_fold0", "score_fold1", "score_fold2"} <= set(pred.columns)
    text = format_external(m)
    assert "roc_auc" in text and "95% CI" in text


def test_selective_block_matches_a_hand_count_of_the_predictions(data, tmp_path, monkeypatch):
    """metrics.json's films to refer, recounted from predictions.csv: the films farthest from the
    threshold in logit space kept first (ties: the earlier row), ceil(share x N) of them."""
    import math

    run = _cv_run(make_cfg(data, tmp_path / "w"), monkeypatch, tmp_path / "run")
    _fake_score(monkeypatch)
    m = evaluate_external(run, data, tmp_path / "ext", progress=False)
    pred = pd.read_csv(tmp_path / "ext" / "predictions.csv")
    t = m["threshold"]

    def logit(p: float) -> float:
        return math.log(p / (1 - p))

    rows = list(zip(pred["score"], pred["label"], pred["prediction"]))
    order = sorted(range(len(rows)), key=lambda i: -abs(logit(rows[i][0]) - logit(t)))
    sel = m["selective"]
    for share, key in ((1.0, "100"), (0.9, "90"), (0.8, "80")):
        n = math.ceil(round(share * len(rows), 6))
        kept = [rows[i] for i in order[:n]]
        right = [lab == dec for _, lab, dec in kept]
        assert sel["n_kept"][key] == n
        assert sel["accuracy"][key] == pytest.approx(sum(right) / n)
        pos = [r for r, (_, lab, _) in zip(right, kept) if lab == 1]
        neg = [r for r, (_, lab, _) in zip(right, kept) if lab == 0]
        bal = (sum(pos) / len(pos) + sum(neg) / len(neg)) / 2 if pos and neg else None
        assert sel["balanced_accuracy"][key] == (None if bal is None else pytest.approx(bal))
    assert sel["accuracy"]["100"] == pytest.approx(m["accuracy"])
    assert "films to refer: accuracy" in format_external(m)


def test_external_with_one_fold_model_and_a_yaml_config(data, tmp_path, monkeypatch):
    cfg = make_cfg(data, tmp_path / "w")
    run = _cv_run(cfg, monkeypatch, tmp_path / "run")
    _fake_score(monkeypatch)
    yaml_path = tmp_path / "ext.yaml"
    yaml_path.write_text(cfg.to_yaml())
    m = evaluate_external(run / "fold_1", yaml_path, tmp_path / "ext", progress=False)
    assert m["threshold"] == read_json(run / "fold_1" / "postprocess.json")["thresholds"][0]
    pred = pd.read_csv(tmp_path / "ext" / "predictions.csv")
    assert not any(c.startswith("score_fold") for c in pred.columns)


def test_plain_training_run_without_threshold_uses_half(data, tmp_path, monkeypatch):
    from medtl.data.manifest import load_manifest
    from medtl.run.files import write_model_info

    cfg = make_cfg(data, tmp_path / "w")
    run = tmp_path / "train_run"
    run.mkdir()
    write_model_info(run, cfg, load_manifest(cfg))
    (run / "config.yaml").write_text(cfg.to_yaml())
    _fake_score(monkeypatch)
    p = Predictor(run)
    assert p.thresholds == [0.5] and "0.5" in p.threshold_source
    m = evaluate_external(run, data, tmp_path / "ext", progress=False)
    assert m["threshold"] == 0.5


def test_external_classes_must_match(data, tmp_path, monkeypatch):
    cfg = make_cfg(data, tmp_path / "w")
    run = _cv_run(cfg, monkeypatch, tmp_path / "run")
    _fake_score(monkeypatch)
    other = make_cfg(data, tmp_path / "w")
    other.data.classes = ["healthy", "sick"]
    with pytest.raises(ConfigError, match="classes"):
        evaluate_external(run, other, tmp_path / "ext", progress=False)


def test_external_lists_skipped_files(data, tmp_path, monkeypatch):
    cfg = make_cfg(data, tmp_path / "w")
    run = _cv_run(cfg, monkeypatch, tmp_path / "run")
    first = str((data.parent / pd.read_csv(data)["file"].iloc[0]).resolve())
    _fake_score(monkeypatch, skipped=[(first, "cannot decode")])
    with pytest.warns(RuntimeWarning, match="1 unreadable"):
        m = evaluate_external(run, data, tmp_path / "ext", progress=False)
    assert m["n"] == len(pd.read_csv(data)) - 1
    assert pd.read_csv(tmp_path / "ext" / "skipped.csv")["path"].tolist() == [first]


def _external_of(task, tmp_path, monkeypatch):
    """External evaluation of a fake CV run of ``task``: (metrics, per_class.json)."""
    data = make_png_set(tmp_path / "ds", task=task)
    run = _cv_run(make_cfg(data, tmp_path / "w", task=task), monkeypatch, tmp_path / "run")
    _fake_score(monkeypatch)
    m = evaluate_external(run, data, tmp_path / "ext", progress=False)
    per = read_json(tmp_path / "ext" / "per_class.json")
    assert list(m) == list(EXTERNAL_KEYS) and m["task"] == task
    assert m["roc_auc"] == pytest.approx(per["metrics"]["macro"]["roc_auc"])
    assert m["selective"] is None  # films to refer: binary only (one threshold per film)
    assert m["intervals"]["roc_auc"] == m["roc_auc_ci"]
    assert set(m["intervals"]) == ({"roc_auc", "accuracy", "balanced_accuracy"} if task == "multiclass"
                                   else {"roc_auc"})
    return m, per


def test_external_multiclass_writes_macro_and_per_class(tmp_path, monkeypatch):
    m, per = _external_of("multiclass", tmp_path, monkeypatch)
    assert m["threshold"] is None
    assert set(per["metrics"]["per_class"]) == {"a", "b", "c"} and m["classes"] == ["a", "b", "c"]
    text = format_external(m)
    assert "decision arg-max" in text and "macro averages over the 3 classes" in text


def test_external_multilabel_names_thresholds_and_bounds_the_macro_auc(tmp_path, monkeypatch):
    m, per = _external_of("multilabel", tmp_path, monkeypatch)
    low, high = m["roc_auc_ci"]
    assert low <= m["roc_auc"] <= high
    assert per["intervals"]["macro_roc_auc"]["low"] == pytest.approx(low)
    t = m["threshold"]
    assert f"threshold a {t[0]:.4f}, b {t[1]:.4f}" in format_external(m)


# --------------------------------------------------------------------------------------------
# compare


def test_compare_two_cv_runs(data, tmp_path, monkeypatch):
    cfg = make_cfg(data, tmp_path / "w")
    a = _cv_run(cfg, monkeypatch, tmp_path / "a", quality=1.0, salt="a")
    b = _cv_run(cfg, monkeypatch, tmp_path / "b", quality=0.2, salt="b")
    r = compare_runs(a, b)
    oa = pd.read_csv(a / "oof_predictions.csv")
    ob = pd.read_csv(b / "oof_predictions.csv").set_index("file").loc[oa["file"]]
    y, sa, sb = oa["label"].to_numpy(), oa["score"].to_numpy(), ob["score"].to_numpy()
    assert r["auc_a"] == pytest.approx(roc_auc(y, sa)) and r["auc_b"] == pytest.approx(roc_auc(y, sb))
    d = delong_test(y, sa, sb)
    assert r["diff"] == pytest.approx(d["diff"]) and r["delong"]["p_value"] == pytest.approx(d["p_value"])
    boot = bootstrap_paired_difference(y, sa, sb, "roc_auc", oa["patient"].to_numpy(dtype=object),
                                       n_boot=50, seed=cfg.seed)
    assert (r["bootstrap"]["low"], r["bootstrap"]["high"]) == (pytest.approx(boot.low), pytest.approx(boot.high))
    assert r["n_common"] == len(oa) and r["n_only_a"] == r["n_only_b"] == 0
    text = format_compare(r)
    assert "DeLong" in text and "patient bootstrap" in text


@pytest.mark.parametrize("task", ["multilabel", "multiclass"])
def test_compare_non_binary_runs_per_class_and_macro(task, tmp_path, monkeypatch):
    data = make_png_set(tmp_path / "ds", n_patients=30, task=task)
    cfg = make_cfg(data, tmp_path / "w", task=task)
    a = _cv_run(cfg, monkeypatch, tmp_path / "a", quality=1.0, salt="a")
    b = _cv_run(cfg, monkeypatch, tmp_path / "b", quality=0.2, salt="b")
    r = compare_runs(a, b, n_boot=200)
    classes = read_json(a / "cv.json")["classes"]
    assert r["task"] == task and list(r["per_class"]) == classes and r["delong"] is None
    oa = pd.read_csv(a / "oof_predictions.csv")
    ob = pd.read_csv(b / "oof_predictions.csv").set_index("file").loc[oa["file"]]
    suffix = "_calibrated" if f"score_calibrated_{classes[0]}" in oa.columns else ""
    for k, c in enumerate(classes):
        y = oa[f"label_{c}"].to_numpy() if task == "multilabel" else (oa["label"].to_numpy() == k).astype(int)
        d = delong_test(y, oa[f"score{suffix}_{c}"].to_numpy(), ob[f"score{suffix}_{c}"].to_numpy())
        got = r["per_class"][c]
        assert got["auc_a"] == pytest.approx(d["auc_a"]) and got["diff"] == pytest.approx(d["diff"])
        assert got["delong"]["p_value"] == pytest.approx(d["p_value"])
        assert got["bootstrap"]["low"] <= got["diff"] <= got["bootstrap"]["high"]
    assert r["diff"] == pytest.approx(np.mean([r["per_class"][c]["diff"] for c in classes]))
    assert r["bootstrap"]["low"] <= r["diff"] <= r["bootstrap"]["high"]
    assert r["diff"] > 0  # the better fake model wins on the macro AUC
    text = format_compare(r)
    assert "macro ROC AUC" in text and "DeLong:" not in text
    assert all(f"  {c} " in text for c in classes)
    with pytest.raises(ValueError, match="same task and classes"):
        bin_cfg = make_cfg(make_png_set(tmp_path / "ds2", n_patients=30), tmp_path / "w2")
        compare_runs(a, _cv_run(bin_cfg, monkeypatch, tmp_path / "c"))


def test_compare_run_with_itself_and_stale_merge(data, tmp_path, monkeypatch):
    cfg = make_cfg(data, tmp_path / "w")
    a = _cv_run(cfg, monkeypatch, tmp_path / "a")
    (a / "oof_predictions.csv").unlink()  # compare pools the folds itself when needed
    r = compare_runs(a, a)
    assert r["diff"] == 0.0 and r["delong"]["p_value"] == pytest.approx(1.0)
    assert (a / "oof_predictions.csv").exists()


def test_compare_external_outputs_and_label_clash(data, tmp_path, monkeypatch):
    cfg = make_cfg(data, tmp_path / "w")
    a = _cv_run(cfg, monkeypatch, tmp_path / "a")
    _fake_score(monkeypatch)
    evaluate_external(a, data, tmp_path / "e1", progress=False)
    evaluate_external(a / "fold_0", data, tmp_path / "e2", progress=False)
    r = compare_runs(tmp_path / "e1", tmp_path / "e2")
    assert r["n_common"] == len(pd.read_csv(data))
    pred = pd.read_csv(tmp_path / "e2" / "predictions.csv")
    pred.loc[0, "label"] = 1 - pred.loc[0, "label"]
    pred.to_csv(tmp_path / "e2" / "predictions.csv", index=False)
    with pytest.raises(ValueError, match="different labels"):
        compare_runs(tmp_path / "e1", tmp_path / "e2")
    with pytest.raises(FileNotFoundError, match="neither"):
        compare_runs(tmp_path / "e1", tmp_path)


# --------------------------------------------------------------------------------------------
# Local recalibration (--recalibrate K, then predict --site)


def test_recalibration_reports_held_out_patients_before_and_after(data, tmp_path, monkeypatch):
    from medtl.evaluate.tables import table_metrics
    from medtl.stats.recalibrate import pick_patients

    cfg = make_cfg(data, tmp_path / "w")
    run = _cv_run(cfg, monkeypatch, tmp_path / "run")
    _fake_score(monkeypatch)
    out = tmp_path / "ext"
    m = evaluate_external(run, data, out, progress=False, recalibrate=12)
    assert list(m) == list(EXTERNAL_KEYS)
    rc = m["recalibration"]
    pred = pd.read_csv(out / "predictions.csv", dtype={"patient": str})
    fit = pred["recalibration"] == "fit"
    # the K patients are the seeded stratified draw; the others are held out
    expected = pick_patients(pred["label"], pred["patient"], 12, seed=cfg.seed)
    assert (fit.to_numpy() == expected).all() and pred.loc[fit, "patient"].nunique() == 12
    assert rc["k"] == 12 and rc["n_held_out"] == int((~fit).sum()) and rc["n_patients_held_out"] == 12
    site = PostProcess.from_dict(read_json(out / "site_postprocess.json"))
    assert rc["site_file"] == str(out / "site_postprocess.json") and rc["threshold_after"] == site.thresholds[0]
    assert rc["threshold_before"] == m["threshold"]
    # before / after are table_metrics on the held-out films with the run's and the site's threshold
    h = pred[~fit]
    y, s, g = h[["label"]].to_numpy(float), h[["score"]].to_numpy(), h["patient"].to_numpy(dtype=object)
    for side, t in (("before", m["threshold"]), ("after", site.thresholds[0])):
        ref, ci = table_metrics("binary", ["negative", "positive"], y, s, np.full_like(s, t), g, n_boot=50,
                                seed=cfg.seed)
        assert rc[side]["balanced_accuracy"] == pytest.approx(ref["balanced_accuracy"])
        assert rc[side]["balanced_accuracy_ci"] == [ci["balanced_accuracy"]["low"], ci["balanced_accuracy"]["high"]]
    assert (pred["site_prediction"] == (pred["score"] >= site.thresholds[0]).astype(int)).all()
    text = format_external(m)
    assert "Local recalibration" in text and "before" in text and "site_postprocess.json" in text
    from medtl.cli import main

    cli_out = str(tmp_path / "cli")
    assert main(["evaluate", str(run), str(data), "--out", cli_out, "--recalibrate", "12", "--quiet"]) == 0
    assert read_json(tmp_path / "cli" / "metrics.json")["recalibration"]["after"] == rc["after"]

    # the Predictor with the site file decides as the 'after' column did
    from medtl.data.manifest import load_manifest

    man = load_manifest(cfg)
    raw = [fake_scores(man.df, "binary", man.classes, salt=f"member{i}") for i in range(3)]
    p = Predictor(run, site=out / "site_postprocess.json")
    assert p.threshold_source.startswith(f"site file {out / 'site_postprocess.json'}")
    s_site, _ = p.combine(raw)
    assert (p.decide(s_site)[:, 0] == pred["site_prediction"].to_numpy()).all()


def test_recalibration_refusals_name_the_option(data, tmp_path, monkeypatch):
    cfg = make_cfg(data, tmp_path / "w")
    run = _cv_run(cfg, monkeypatch, tmp_path / "run")
    _fake_score(monkeypatch)
    with pytest.raises(ValueError, match="--recalibrate 20: the set has 24 patients and at least 10"):
        evaluate_external(run, data, tmp_path / "ext", progress=False, recalibrate=20)
    bare = pd.read_csv(data).drop(columns=["label"])
    bare.to_csv(data.parent / "bare.csv", index=False)
    with pytest.raises(ValueError, match="--recalibrate 5: bare.csv has no label column"):
        evaluate_external(run, data.parent / "bare.csv", tmp_path / "ext2", progress=False, recalibrate=5)
