"""Tests of the cross-validation runner (medtl/evaluate/cv.py).

Most tests replace fold training and test prediction by a fake model (tests/evaluate/_cv_helpers.py)
so they check the runner's own logic in well under a second each: fold assignment, splits, the
leakage guard, thresholds and calibration fitted on validation only, out-of-fold coverage, merge
metrics, resume and parallel jobs. One slow test runs the real trainer end to end.
"""

from __future__ import annotations

import fcntl
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medtl.config import ConfigError
from medtl.evaluate import binary_metrics, choose_threshold
from medtl.stats import postprocess
from medtl.evaluate.cv import FoldBusyError, format_cv, merge_cv, run_cv, run_folder
from medtl.io.atomic import create_once, read_json
from tests.evaluate._cv_helpers import FakeTrainer, install_fakes, make_cfg, make_png_set
from tests.train.conftest import crash_after_epoch


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_png_set(tmp_path / "ds")


@pytest.fixture
def cfg(data: Path, tmp_path: Path):
    return make_cfg(data, tmp_path / "work")


def _manifest_paths(cfg) -> list[str]:
    from medtl.data.manifest import load_manifest

    return load_manifest(cfg).paths


# --------------------------------------------------------------------------------------------
# Out-of-fold predictions and merged metrics


def test_oof_covers_every_image_exactly_once(cfg, monkeypatch):
    trainer, predict = install_fakes(monkeypatch)
    run = run_cv(cfg, progress=False)
    assert run == run_folder(cfg)
    oof = pd.read_csv(run / "oof_predictions.csv")
    paths = _manifest_paths(cfg)
    assert sorted(oof["file"]) == sorted(paths)
    assert not oof["file"].duplicated().any()
    folds = pd.read_csv(run / "folds.csv")
    assert dict(zip(oof["file"], oof["fold"])) == dict(zip(folds["file"], folds["fold"]))
    assert list(oof.columns[:6]) == ["file", "patient", "fold", "label", "score", "threshold"]
    # each patient's films sit in one fold
    assert (oof.groupby("patient")["fold"].nunique() == 1).all()
    assert sorted(trainer.calls[i]["fold"] for i in range(3)) == ["fold_0", "fold_1", "fold_2"]
    assert sorted(predict.calls) == ["fold_0", "fold_1", "fold_2"]


def test_merged_metrics_match_the_oof_table(cfg, monkeypatch):
    install_fakes(monkeypatch)
    run = run_cv(cfg, progress=False)
    m = read_json(run / "metrics.json")
    oof = pd.read_csv(run / "oof_predictions.csv")
    y, s = oof["label"].to_numpy(), oof["score"].to_numpy()
    ref = binary_metrics(y, s)
    assert m["pooled"]["roc_auc"] == pytest.approx(ref["roc_auc"])
    assert m["pooled"]["brier"] == pytest.approx(ref["brier"])
    # threshold metrics: each image decided at its own fold's threshold
    pred = (s >= oof["threshold"].to_numpy()).astype(int)
    tp = int(((pred == 1) & (y == 1)).sum())
    assert m["pooled"]["tp"] == tp
    assert m["pooled"]["sensitivity"] == pytest.approx(tp / y.sum())
    assert (oof["prediction"].to_numpy() == pred).all()
    for f in range(3):
        part = oof[oof["fold"] == f]
        t = part["threshold"].iloc[0]
        assert m["thresholds"][str(f)] == [t]
        ref_f = binary_metrics(part["label"], part["score"])
        assert m["per_fold"][str(f)]["roc_auc"] == pytest.approx(ref_f["roc_auc"])
        assert m["per_fold"][str(f)]["specificity"] == pytest.approx(
            binary_metrics(part["label"], part["score"], t)["specificity"])
    aucs = [m["per_fold"][str(f)]["roc_auc"] for f in range(3)]
    assert m["across_folds"]["roc_auc"]["mean"] == pytest.approx(np.mean(aucs))
    assert m["across_folds"]["roc_auc"]["std"] == pytest.approx(np.std(aucs, ddof=1))
    ci = m["pooled_ci"]["roc_auc"]
    assert ci["low"] <= m["pooled"]["roc_auc"] <= ci["high"] and ci["n_boot"] == 50
    assert m["complete"] and m["missing_folds"] == [] and m["n_predicted"] == len(oof)
    assert m["n_patients"] == 24
    ens = read_json(run / "ensemble.json")
    assert ens["thresholds"] == [pytest.approx(float(np.median([m["thresholds"][str(f)][0] for f in range(3)])))]
    text = format_cv(m)
    assert "roc_auc" in text and "fold 2" in text and "[" in text
    assert m["patient_ids"] is True and "no patient ids" not in text


def test_a_run_without_patient_ids_says_its_figures_are_optimistic(data, tmp_path, monkeypatch):
    from medtl.report.data import collect_report_data

    cfg = make_cfg(data, tmp_path / "work")
    cfg.data.patient_column = None  # what "none" in a YAML file becomes
    install_fakes(monkeypatch)
    run = run_cv(cfg, run_dir=tmp_path / "run", progress=False)
    m = merge_cv(run)
    assert m["patient_ids"] is False and m["n_patients"] == m["n_predicted"]  # one per image
    assert "WARNING: no patient ids (data.patient_column: none)" in format_cv(m)
    notes = collect_report_data(run, compute_cams=False).notes
    assert notes[0].startswith("No patient ids (data.patient_column: none)")


def test_thresholds_and_calibration_see_validation_files_only(cfg, data, tmp_path, monkeypatch):
    cfg = make_cfg(data, tmp_path / "work2", calibration="platt")
    trainer, _ = install_fakes(monkeypatch)
    from medtl.data.manifest import load_manifest

    paths = np.asarray(load_manifest(cfg).paths, dtype=object)
    seen_t: list[np.ndarray] = []
    seen_c: list[np.ndarray] = []
    real_choose, real_platt = postprocess.choose_threshold, postprocess.fit_platt
    monkeypatch.setattr(postprocess, "choose_threshold",
                        lambda y, s, rule: seen_t.append(np.asarray(s)) or real_choose(y, s, rule))
    monkeypatch.setattr(postprocess, "fit_platt",
                        lambda y, s, **kw: seen_c.append(np.asarray(s)) or real_platt(y, s, **kw))
    run = run_cv(cfg, progress=False)
    folds = pd.read_csv(run / "folds.csv")
    # calibration sees raw validation scores; map them back to files through the fake model
    val_sets = [set(paths[c["val"]]) for c in trainer.calls]
    from tests.evaluate._cv_helpers import fake_scores

    m = load_manifest(cfg)
    raw = dict(zip(np.round(fake_scores(m.df, "binary", m.classes)[:, 0], 12), m.paths))
    assert len(seen_c) == 3
    for call, scores, vals in zip(trainer.calls, seen_c, val_sets):
        files = {raw[round(float(v), 12)] for v in scores}
        fold = int(call["fold"].split("_")[1])
        test = set(folds["file"][folds["fold"] == fold])
        assert files == vals and not files & test
    # thresholds: two calls per fold (raw and calibrated scale), each on exactly the validation rows
    assert len(seen_t) == 6
    for i, vals in enumerate(val_sets):
        assert len(seen_t[2 * i]) == len(vals) == len(seen_t[2 * i + 1])
        assert {raw[round(float(v), 12)] for v in seen_t[2 * i]} == vals
    oof = pd.read_csv(run / "oof_predictions.csv")
    assert "score_calibrated" in oof.columns
    metrics = read_json(run / "metrics.json")
    assert metrics["score"] == "score_calibrated"
    assert "pooled_uncalibrated" in metrics
    # Platt is increasing: the same decisions before and after calibration, the same ranking
    # within a fold (pooled AUC may move: each fold has its own calibrator)
    for k in ("sensitivity", "specificity"):
        assert metrics["pooled_uncalibrated"][k] == pytest.approx(metrics["pooled"][k])
    for f in range(3):
        part = oof[oof["fold"] == f]
        assert binary_metrics(part["label"], part["score"])["roc_auc"] == pytest.approx(
            metrics["per_fold"][str(f)]["roc_auc"])
    pp = read_json(run / "fold_0" / "postprocess.json")
    assert pp["calibration"] == "platt" and len(pp["calibrators"]) == 1
    info = read_json(run / "fold_0" / "model_info.json")
    assert info["threshold"] == pytest.approx(pp["raw_thresholds"][0])  # what medtl predict FOLD applies


def test_saved_threshold_is_the_validation_choice(cfg, monkeypatch):
    trainer, _ = install_fakes(monkeypatch)
    run = run_cv(cfg, progress=False)
    from medtl.data.manifest import load_manifest
    from tests.evaluate._cv_helpers import fake_scores

    m = load_manifest(cfg)
    for call in trainer.calls:
        val = m.subset(call["val"])
        t = choose_threshold(val.df["label"], fake_scores(val.df, "binary", m.classes)[:, 0], "youden")
        assert read_json(run / call["fold"] / "postprocess.json")["thresholds"] == [pytest.approx(t)]
        test = pd.read_csv(run / call["fold"] / "test_predictions.csv")
        assert np.allclose(test["threshold"], t, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------
# Leakage guard


def _tamper(run: Path) -> str:
    folds = pd.read_csv(run / "folds.csv")
    counts = folds["patient"].value_counts()
    patient = counts.index[counts >= 2][0]
    row = folds.index[folds["patient"] == patient][0]
    folds.loc[row, "fold"] = (folds.loc[row, "fold"] + 1) % 3
    folds.to_csv(run / "folds.csv", index=False)
    return str(patient)


def test_tampered_folds_csv_refuses_to_start(cfg, tmp_path, monkeypatch):
    from medtl.data.splits import LeakageError

    trainer, _ = install_fakes(monkeypatch)
    run = run_cv(cfg, run_dir=tmp_path / "run", fold=0, progress=False)
    patient = _tamper(run)
    n_calls = len(trainer.calls)
    with pytest.raises(LeakageError, match=patient) as err:
        run_cv(cfg, run_dir=run, fold=1, progress=False)
    assert "train+val vs test" in str(err.value)
    assert len(trainer.calls) == n_calls  # nothing trained


def test_tampered_folds_csv_before_any_training(cfg, tmp_path, monkeypatch):
    from medtl.data.splits import LeakageError

    trainer, _ = install_fakes(monkeypatch)
    # A first run writes folds.csv; copy it, tamper it, and start a fresh run folder with it.
    src = run_cv(cfg, run_dir=tmp_path / "a", fold=0, progress=False)
    fresh = tmp_path / "b"
    fresh.mkdir()
    (fresh / "folds.csv").write_text((src / "folds.csv").read_text())
    patient = _tamper(fresh)
    trainer.calls.clear()
    with pytest.raises(LeakageError, match=patient):
        run_cv(cfg, run_dir=fresh, progress=False)
    assert trainer.calls == []


def test_tampered_validation_split_is_caught(cfg, tmp_path, monkeypatch):
    from medtl.data.splits import LeakageError

    install_fakes(monkeypatch)
    run = run_cv(cfg, run_dir=tmp_path / "run", fold=0, progress=False)
    split = pd.read_csv(run / "fold_1" / "split.csv")
    multi = split[split["role"] == "val"]["patient"].value_counts()
    patient = multi.index[multi >= 2][0]
    row = split.index[(split["patient"] == patient) & (split["role"] == "val")][0]
    split.loc[row, "role"] = "train"
    split.to_csv(run / "fold_1" / "split.csv", index=False)
    with pytest.raises(LeakageError, match=f"train vs val.*{patient}"):
        run_cv(cfg, run_dir=run, fold=1, progress=False)


def test_manifest_change_is_refused(cfg, data, tmp_path, monkeypatch):
    from medtl.data.manifest import DataError

    install_fakes(monkeypatch)
    run = run_cv(cfg, run_dir=tmp_path / "run", fold=0, progress=False)
    df = pd.read_csv(data)
    df.iloc[:-1].to_csv(data, index=False)
    with pytest.raises(DataError, match="manifest changed"):
        run_cv(cfg, run_dir=run, fold=1, progress=False)


# --------------------------------------------------------------------------------------------
# Fold jobs, resume and the run folder


def test_fold_jobs_share_one_assignment_and_merge_partially(cfg, tmp_path, monkeypatch):
    trainer, _ = install_fakes(monkeypatch)
    run = tmp_path / "run"
    run_cv(cfg, run_dir=run, fold=1, progress=False)
    first = (run / "folds.csv").read_bytes()
    split1 = (run / "fold_1" / "split.csv").read_bytes()
    run_cv(cfg, run_dir=run, fold=0, progress=False)
    assert (run / "folds.csv").read_bytes() == first
    assert (run / "fold_1" / "split.csv").read_bytes() == split1
    m = merge_cv(run)
    assert m["finished_folds"] == [0, 1] and m["missing_folds"] == [2] and not m["complete"]
    oof = pd.read_csv(run / "oof_predictions.csv")
    folds = pd.read_csv(run / "folds.csv")
    assert sorted(oof["file"]) == sorted(folds["file"][folds["fold"] != 2])
    assert "MISSING folds: 2" in format_cv(m)
    trainer.calls.clear()
    run_cv(cfg, run_dir=run, progress=False)  # all folds: only fold 2 is left
    assert [c["fold"] for c in trainer.calls] == ["fold_2"]
    assert merge_cv(run)["complete"]


def test_run_folder_is_derived_from_the_config(cfg, data, tmp_path):
    same = make_cfg(data, tmp_path / "work")
    assert run_folder(cfg) == run_folder(same)
    moved = make_cfg(data, tmp_path / "elsewhere")  # other cache folder: not a different computation
    assert run_folder(moved).name == run_folder(cfg).name
    other = make_cfg(data, tmp_path / "work", threshold="sensitivity:0.9")
    assert run_folder(other) != run_folder(cfg)


def test_different_config_in_existing_run_is_refused(cfg, data, tmp_path, monkeypatch):
    install_fakes(monkeypatch)
    run = run_cv(cfg, run_dir=tmp_path / "run", fold=0, progress=False)
    other = make_cfg(data, tmp_path / "work", threshold="specificity:0.9")
    with pytest.raises(ConfigError, match="evaluate.threshold"):
        run_cv(other, run_dir=run, fold=1, progress=False)


def test_interrupted_run_resumes_unfinished_folds(cfg, tmp_path, monkeypatch):
    install_fakes(monkeypatch, trainer=FakeTrainer(fail_on=("fold_1",)))
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_cv(cfg, run_dir=run, progress=False)
    assert (run / "fold_0" / "fold.json").exists() and not (run / "fold_1" / "fold.json").exists()
    trainer, predict = install_fakes(monkeypatch)
    run_cv(cfg, run_dir=run, progress=False)
    assert [c["fold"] for c in trainer.calls] == ["fold_1", "fold_2"]
    assert read_json(run / "metrics.json")["complete"]


def test_busy_fold_is_refused_or_skipped(cfg, tmp_path, monkeypatch):
    install_fakes(monkeypatch)
    run = tmp_path / "run"
    run_cv(cfg, run_dir=run, fold=2, progress=False)  # creates the folders
    with open(run / "fold_0" / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # another job is running fold 0
        with pytest.raises(FoldBusyError, match="fold 0"):
            run_cv(cfg, run_dir=run, fold=0, progress=False)
        run_cv(cfg, run_dir=run, progress=False)
        m = read_json(run / "metrics.json")
        assert m["finished_folds"] == [1, 2] and m["missing_folds"] == [0]


def test_create_once_under_a_race(tmp_path):
    target = tmp_path / "folds.csv"
    wins: list[int] = []
    barrier = threading.Barrier(8)

    def job(i: int) -> None:
        barrier.wait()
        if create_once(target, f"writer {i}\n" * 1000):
            wins.append(i)

    threads = [threading.Thread(target=job, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert target.read_text() == f"writer {wins[0]}\n" * 1000
    assert [p.name for p in tmp_path.iterdir()] == ["folds.csv"]  # no temporary files left


def test_bad_fold_number_and_retrain(cfg, data, tmp_path, monkeypatch):
    install_fakes(monkeypatch)
    with pytest.raises(ValueError, match="0 .. 2"):
        run_cv(cfg, run_dir=tmp_path / "r", fold=3, progress=False)
    retrain = make_cfg(data, tmp_path / "work", final_model="retrain")
    # The fake folds leave no training history, so the final model's epochs are unknown.
    with pytest.raises(RuntimeError, match="cannot derive the final model's epochs"):
        run_cv(retrain, progress=False)
    assert not (run_folder(retrain) / "final" / "final.json").exists()


def test_merge_without_finished_folds(cfg, tmp_path, monkeypatch):
    install_fakes(monkeypatch, trainer=FakeTrainer(fail_on=("fold_0",)))
    with pytest.raises(KeyboardInterrupt):
        run_cv(cfg, run_dir=tmp_path / "run", progress=False)
    with pytest.raises(RuntimeError, match="no fold has finished"):
        merge_cv(tmp_path / "run")


# --------------------------------------------------------------------------------------------
# Other tasks


def test_multiclass_cv(tmp_path, monkeypatch):
    cfg = make_cfg(make_png_set(tmp_path / "ds", task="multiclass"), tmp_path / "w", task="multiclass",
                   calibration="temperature")
    install_fakes(monkeypatch)
    run = run_cv(cfg, progress=False)
    m = read_json(run / "metrics.json")
    oof = pd.read_csv(run / "oof_predictions.csv")
    assert len(oof) == len(_manifest_paths(cfg))
    assert m["thresholds"]["0"] is None and m["score"] == "score_calibrated"
    probs = oof[["score_calibrated_a", "score_calibrated_b", "score_calibrated_c"]].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1.0)
    assert (oof["prediction"] == probs.argmax(axis=1)).all()
    assert m["pooled"]["accuracy"] == pytest.approx(np.mean(oof["prediction"] == oof["label"]))
    assert set(m["pooled_ci"]) == {"macro_roc_auc", "accuracy", "balanced_accuracy"}
    assert "macro_roc_auc" in format_cv(m)


def test_multilabel_cv(tmp_path, monkeypatch):
    cfg = make_cfg(make_png_set(tmp_path / "ds", task="multilabel"), tmp_path / "w", task="multilabel")
    install_fakes(monkeypatch)
    run = run_cv(cfg, progress=False)
    m = read_json(run / "metrics.json")
    oof = pd.read_csv(run / "oof_predictions.csv")
    for name in ("a", "b"):
        dec = (oof[f"score_{name}"] >= oof[f"threshold_{name}"]).astype(int)
        assert (oof[f"prediction_{name}"] == dec).all()
        tp = int(((dec == 1) & (oof[f"label_{name}"] == 1)).sum())
        assert m["pooled"]["per_label"][name]["tp"] == tp
    assert m["pooled"]["macro"]["roc_auc"] == pytest.approx(
        np.mean([m["pooled"]["per_label"][c]["roc_auc"] for c in ("a", "b")]))
    assert len(m["thresholds"]["0"]) == 2
    # The macro ROC AUC gets a patient-bootstrap interval (both labels resampled together).
    macro_ci = m["pooled_ci"]["macro_roc_auc"]
    assert macro_ci["low"] <= m["pooled"]["macro"]["roc_auc"] <= macro_ci["high"]
    text = format_cv(m)
    macro_table = text.split("[macro]")[1]
    auc_line = next(line for line in macro_table.splitlines() if line.startswith("roc_auc"))
    assert f"[{macro_ci['low']:.3f}, {macro_ci['high']:.3f}]" in auc_line
    # Thresholds are named by label, not listed bare.
    t = m["ensemble"]["thresholds"]
    assert f"threshold a {t[0]:.4f}, b {t[1]:.4f}" in text


def test_import_evaluate_loads_no_tensorflow():
    code = ("import sys, medtl.evaluate, medtl.evaluate.cv, medtl.evaluate.external, medtl.evaluate.tables, medtl.run; "
            "bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


# --------------------------------------------------------------------------------------------
# End to end with the real trainer


@pytest.mark.slow
def test_real_cv_end_to_end(tmp_path):
    """Two folds of a tiny MobileNetV2 on synthetic DICOMs: run, 'crash', resume, evaluate, compare."""
    from medtl.config import config_from_dict
    from medtl.data.synthetic import make_sample_data
    from medtl.evaluate.external import EXTERNAL_KEYS, compare_runs, evaluate_external
    from medtl.run.predictor import Predictor

    csv_path = make_sample_data(tmp_path / "ds", n_patients=16, seed=5, image_size=(64, 64), prevalence=0.4)
    cfg = config_from_dict({
        "name": "e2e", "seed": 1, "output_dir": str(tmp_path / "runs"),
        "data": {"manifest": str(csv_path), "patient_column": "patient_id", "classes": ["normal", "lesion"],
                 "image_size": [32, 32], "cache_dir": str(tmp_path / "cache"), "val_fraction": 0.34, "workers": 1},
        "augment": {"preset": "none"},
        "model": {"backbone": "mobilenetv2", "weights": "none"},
        "train": {"batch_size": 16, "stages": [{"unfreeze": "head", "epochs": 1, "lr": 1e-2}],
                  "mixed_precision": "off", "distribute": "none"},
        "evaluate": {"folds": 2, "bootstrap": 50, "threshold": "fixed:0.5"},
    })
    run = run_cv(cfg, progress=False)
    oof = pd.read_csv(run / "oof_predictions.csv")
    assert sorted(oof["file"]) == sorted(_manifest_paths(cfg))
    assert (run / "fold_0" / "model.keras").exists() and (run / "fold_1" / "ckpt").exists()
    # A crash after training but before the test fold was written: the fold is finished from
    # the trainer's checkpoint state without training again, and predicts the same scores.
    before = pd.read_csv(run / "fold_1" / "test_predictions.csv")
    (run / "fold_1" / "fold.json").unlink()
    (run / "fold_1" / "test_predictions.csv").unlink()
    mtime = (run / "fold_1" / "model.keras").stat().st_mtime
    run_cv(cfg, progress=False)
    after = pd.read_csv(run / "fold_1" / "test_predictions.csv")
    assert (run / "fold_1" / "model.keras").stat().st_mtime == mtime
    assert np.allclose(before["score"], after["score"], atol=1e-6)

    out = tmp_path / "external"
    m = evaluate_external(run, csv_path, out, progress=False)
    assert list(m) == list(EXTERNAL_KEYS) and m["n"] == len(oof) and m["threshold"] == 0.5
    assert m["selective"]["n_kept"]["100"] == m["n"] and m["intervals"]["roc_auc"] == m["roc_auc_ci"]
    pred = pd.read_csv(out / "predictions.csv")
    assert np.allclose(pred["score"], (pred["score_fold0"] + pred["score_fold1"]) / 2)
    some = pred["file"].tolist()[:3]
    direct = Predictor(run).predict_paths(some)
    assert np.allclose(direct["score"], pred["score"][:3], atol=1e-5)
    r = compare_runs(run, run)
    assert r["diff"] == 0.0 and r["delong"]["p_value"] == pytest.approx(1.0)


# --------------------------------------------------------------------------------------------
# Final model retrained on all data (evaluate.final_model: retrain)


# Each fake fold's training history: (stage, epoch, improved the overall best); the best
# checkpoint is the last improving epoch. Fold 0 peaks at stage 1 epoch 2 and never improves
# in stage 2 ([2, 0] epochs); fold 1 peaks at stage 2 epoch 1 ([1, 1]). Means [1.5, 0.5]:
# the final model trains 2 + 1 epochs (half rounds up).
_FOLD_HISTORIES = {
    "fold_0": [(1, 1, True), (1, 2, True), (2, 1, False), (2, 2, False)],
    "fold_1": [(1, 1, True), (1, 2, False), (2, 1, True), (2, 2, False)],
}


class _HistoryTrainer(FakeTrainer):
    """The fake fold model, plus the history.csv and metrics.json a real fold run leaves."""

    def __call__(self, cfg, manifest, train_idx, val_idx, fdir, progress):
        rows = [{"stage": s, "epoch": e, "global_epoch": g, "best": b}
                for g, (s, e, b) in enumerate(_FOLD_HISTORIES[fdir.name], start=1)]
        pd.DataFrame(rows).to_csv(fdir / "history.csv", index=False)
        best = max(r["global_epoch"] for r in rows if r["best"])
        (fdir / "metrics.json").write_text(
            '{"best": {"global_epoch": %d}, "wall_time_s": 1.0}' % best)
        return super().__call__(cfg, manifest, train_idx, val_idx, fdir, progress)


def _retrain_cfg(data: Path, work: Path):
    from medtl.config import config_from_dict

    return config_from_dict({
        "name": "retrain", "seed": 3, "output_dir": str(work / "runs"),
        "data": {"manifest": str(data), "patient_column": "patient_id", "cache_dir": str(work / "cache"),
                 "val_fraction": 0.3, "image_size": [32, 32], "workers": 1},
        "augment": {"preset": "none"},
        "model": {"backbone": "smallcnn", "weights": "none"},
        "train": {"batch_size": 16, "mixed_precision": "off", "distribute": "none", "feature_cache": True,
                  "stages": [{"unfreeze": "head", "epochs": 2, "lr": 1e-2},
                             {"unfreeze": "all", "epochs": 2, "lr": 1e-3}]},
        "evaluate": {"folds": 2, "bootstrap": 20, "final_model": "retrain"},
    })


def test_retrain_final_model_after_all_folds_only(data, tmp_path, monkeypatch, capsys):
    """Fold jobs and --merge never retrain; medtl cv CONFIG retrains on every image for the mean
    best epochs, resumes an interrupted retraining, skips a finished one; predict uses it."""
    import keras

    from medtl.data.manifest import load_manifest
    from medtl.data.pipeline import ImagePipeline
    from medtl.run.predictor import Predictor

    cfg = _retrain_cfg(data, tmp_path / "work")
    install_fakes(monkeypatch, trainer=_HistoryTrainer())
    run = tmp_path / "run"
    for f in (0, 1):
        run_cv(cfg, run_dir=run, fold=f, progress=False)
    m = merge_cv(run)  # --merge: pools, does not retrain
    assert not (run / "final").exists()
    assert m["retrain_epochs_per_stage"] == [1.5, 0.5]
    assert not m["final"]["finished"] and m["final"]["epochs_per_stage"] == [2, 1]
    assert "NOT TRAINED YET" in format_cv(m)
    with pytest.raises(FileNotFoundError, match=r"not finished yet.*medtl cv CONFIG --run"):
        Predictor(run)

    # Killed after the final model's first epoch; the next medtl cv resumes it.
    with crash_after_epoch(monkeypatch, 1):
        run_cv(cfg, run_dir=run, progress=False)
    first = pd.read_csv(run / "final" / "history.csv")
    assert len(first) == 1 and not (run / "final" / "final.json").exists()
    capsys.readouterr()
    run_cv(cfg, run_dir=run)
    out = capsys.readouterr().out
    assert "Fold 0 (of 0..1): already finished; skipped" in out and "resuming at epoch 2" in out

    n = len(_manifest_paths(cfg))
    fin = run / "final"
    hist = pd.read_csv(fin / "history.csv")
    assert hist[["stage", "epoch"]].values.tolist() == [[1, 1], [1, 2], [2, 1]]
    assert hist["seconds"].iloc[0] == first["seconds"].iloc[0]  # epoch 1 was not trained again
    for name in ("model.keras", "model_info.json", "config.yaml", "history_stage2.csv", "postprocess.json"):
        assert (fin / name).is_file(), name
    assert not (fin / "val_predictions.csv").exists()
    tm = read_json(fin / "metrics.json")
    assert tm["fixed_epochs"] == [2, 1] and tm["n_train"] == n and tm["n_val"] == 0

    fold_t = [read_json(run / f"fold_{f}" / "postprocess.json")["thresholds"][0] for f in (0, 1)]
    t = float(np.median(fold_t))
    pp = read_json(fin / "postprocess.json")
    assert pp["thresholds"] == [pytest.approx(t)] and pp["calibrators"] is None
    assert read_json(fin / "model_info.json")["threshold"] == pytest.approx(t)
    done = read_json(fin / "final.json")
    assert done["epochs_per_stage"] == [2, 1] and done["n_images"] == n and done["folds"] == [0, 1]
    m = read_json(run / "metrics.json")
    assert m["final"]["finished"] and m["final"]["thresholds"] == [pytest.approx(t)]
    note = (f"final model: one model retrained on all {n} images for 2, 1 epochs per stage; "
            "its performance is estimated by the cross-validation above")
    assert m["final"]["note"] == note and note in out and note in format_cv(merge_cv(run))

    # Finished: a further medtl cv keeps it.
    mtime = (fin / "model.keras").stat().st_mtime_ns
    run_cv(cfg, run_dir=run)
    assert "Final model" in capsys.readouterr().out and (fin / "model.keras").stat().st_mtime_ns == mtime

    # predict/evaluate use the final model with its threshold.
    pred = Predictor(run)
    assert pred.members == [fin] and pred.thresholds == [pytest.approx(t)]
    assert "median of the fold thresholds" in pred.threshold_source
    m_all = load_manifest(cfg)
    paths = m_all.paths[:6]
    got = pred.predict_paths(paths, batch_size=4)  # a full batch, then a padded one of 2
    model = keras.models.load_model(fin / "model.keras", compile=False)
    x = np.stack([ImagePipeline(cfg).load(p)[0] for p in paths])
    own = model.predict(x, verbose=0)[:, 0]
    np.testing.assert_allclose(got["score"], own, atol=1e-6)
    assert got["prediction"].tolist() == [m_all.classes[int(v >= t)] for v in own]
    assert "score_fold0" not in got.columns


def test_cv_with_few_patients_in_a_class_warns_about_its_intervals(tmp_path, monkeypatch):
    cfg = make_cfg(make_png_set(tmp_path / "ds", n_patients=15), tmp_path / "w")  # 5 positive patients
    install_fakes(monkeypatch)
    m = read_json(run_cv(cfg, progress=False) / "metrics.json")
    few = [w for w in m["warnings"] if w.startswith("pooled: only")]
    assert len(few) == 1 and "5 " in few[0] and "fewer than 8 patients" in few[0]
    assert f"WARNING {few[0]}" in format_cv(m)
    big = make_cfg(make_png_set(tmp_path / "ds2", n_patients=24), tmp_path / "w2")  # 8 and 16
    m = read_json(run_cv(big, progress=False) / "metrics.json")
    assert not any(w.startswith("pooled: only") for w in m.get("warnings", []))


def test_cv_refused_by_data_validation_leaves_no_run_folder(tmp_path):
    manifest = tmp_path / "labels.csv"
    manifest.write_text("file,label,patient_id\nmissing_1.png,0,p1\nmissing_2.png,1,p2\n")
    cfg = make_cfg(manifest, tmp_path / "work")
    with pytest.raises(Exception, match="missing_1.png"):  # noqa: B017 - whichever refusal the data layer raises
        run_cv(cfg, progress=False)
    runs = tmp_path / "work" / "runs"
    assert not runs.exists() or not any(runs.rglob("*")), sorted(runs.rglob("*"))
