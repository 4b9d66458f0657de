"""Run folders written before the run layer (tests/run/fixtures, made with medtl at 83ed6ba;
see fixtures/README.md) still load and predict what the old code predicted, and the public
``medtl.predict_paths`` on a CV run equals ``medtl predict`` on it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from medtl.run.files import ensemble_thresholds, read_postprocess
from medtl.run.predictor import Predictor


def _films(root):
    return sorted(str(p) for p in (root / "films").glob("*.png"))


def _thresholds(folder) -> list[float]:
    return json.loads((folder / "postprocess.json").read_text())["thresholds"]


def test_old_cv_run_loads_with_the_old_thresholds(old_runs):
    run = old_runs / "cv_run"
    pred = Predictor(run)
    assert pred.members == [run / "fold_0", run / "fold_1"] and pred.folds == [0, 1]
    assert pred.task == "binary" and pred.classes == ["normal", "lesion"]
    fold_t = [_thresholds(run / f"fold_{f}")[0] for f in (0, 1)]
    assert pred.thresholds == [pytest.approx(float(np.median(fold_t)))]
    assert pred.thresholds == ensemble_thresholds([read_postprocess(run / f"fold_{f}") for f in (0, 1)])
    assert "median of the validation-chosen (youden) thresholds of folds 0, 1" in pred.threshold_source

    films = _films(old_runs)
    got = pred.predict_paths(films, batch_size=3)  # a full batch, then a padded one
    assert list(got.columns) == ["path", "score", "score_fold0", "score_fold1", "prediction", "error"]
    assert np.isfinite(got[["score", "score_fold0", "score_fold1"]].to_numpy()).all()
    assert (got["error"] == "").all()
    old = pd.read_csv(old_runs / "expected_cv_run.csv")  # what the old `medtl predict` gave
    np.testing.assert_allclose(got[["score", "score_fold0", "score_fold1"]],
                               old[["score", "score_fold0", "score_fold1"]], rtol=1e-5, atol=1e-7)
    assert got["prediction"].tolist() == old["prediction"].tolist()


@pytest.mark.parametrize("which", ["folder", "model_file"])
def test_old_training_run_loads_with_the_old_threshold(old_runs, which):
    run = old_runs / "train_run"
    pred = Predictor(run if which == "folder" else run / "model.keras")
    assert pred.thresholds == _thresholds(run) and pred.folds == []
    assert str(run / "postprocess.json") in pred.threshold_source
    got = pred.predict_paths(_films(old_runs))
    assert list(got.columns) == ["path", "score", "prediction", "error"]
    assert np.isfinite(got["score"]).all()
    old = pd.read_csv(old_runs / "expected_train_run.csv")
    np.testing.assert_allclose(got["score"], old["score"], rtol=1e-5, atol=1e-7)
    t = pred.thresholds[0]
    assert got["prediction"].tolist() == ["lesion" if s >= t else "normal" for s in got["score"]]


def test_old_fold_folder_is_one_model(old_runs):
    fold = old_runs / "cv_run" / "fold_1"
    pred = Predictor(fold)
    assert pred.members == [fold] and pred.thresholds == _thresholds(fold)
    got = pred.predict_paths(_films(old_runs))
    assert list(got.columns) == ["path", "score", "prediction", "error"]
    old = pd.read_csv(old_runs / "expected_cv_run.csv")
    np.testing.assert_allclose(got["score"], old["score_fold1"], rtol=1e-5, atol=1e-7)


def test_public_predict_paths_on_a_cv_run_equals_medtl_predict(old_runs, tmp_path):
    """The bug of issue 18: medtl.predict_paths raised FileNotFoundError on a CV run folder."""
    import medtl
    from medtl.cli import main

    run, films = old_runs / "cv_run", _films(old_runs)
    out = tmp_path / "pred.csv"
    assert main(["predict", str(run), *films, "--out", str(out)]) == 0
    cli = pd.read_csv(out, keep_default_na=False)
    api = medtl.predict_paths(run, films)
    assert list(api.columns) == list(cli.columns)
    assert api["path"].tolist() == cli["path"].tolist() == films
    assert api["prediction"].tolist() == cli["prediction"].tolist()
    cols = ["score", "score_fold0", "score_fold1"]
    np.testing.assert_allclose(api[cols].to_numpy(), cli[cols].to_numpy(dtype=np.float64), rtol=1e-12)


def test_predict_paths_on_a_cv_run_flags_films_the_fold_models_disagree_on(old_runs):
    """Issue 20: an ensemble's table gains ``spread`` and ``uncertain`` (a fold model decides
    otherwise than the ensemble); one model's table does not."""
    import medtl

    run, films = old_runs / "cv_run", _films(old_runs)
    got = medtl.predict_paths(run, films)
    assert {"spread", "uncertain"} <= set(got.columns)
    folds = got[["score_fold0", "score_fold1"]].to_numpy(dtype=np.float64)
    np.testing.assert_allclose(got["spread"], folds.std(axis=1), rtol=1e-12)
    t = Predictor(run).thresholds[0]
    differs = (folds >= t) != (got["score"].to_numpy()[:, None] >= t)
    assert got["uncertain"].tolist() == differs.any(axis=1).tolist()
    one = medtl.predict_paths(run / "fold_1", films)
    assert "spread" not in one.columns and "uncertain" not in one.columns


def test_old_postprocess_loads_as_chosen_without_tta_and_a_mismatch_warns_once(old_runs):
    """Issue 19: postprocess.json records the predict.tta its threshold was chosen under; files
    from before load as 'none'. Scoring under other views warns (one line naming both and the
    fix), scoring under the same views does not."""
    import warnings

    from medtl.run.files import write_postprocess
    from medtl.run.predictor import TTAMismatchWarning
    from medtl.stats.postprocess import PostProcess

    run = old_runs / "cv_run"
    old = json.loads((run / "fold_0" / "postprocess.json").read_text())
    assert "tta" not in old and read_postprocess(run / "fold_0").tta == "none"
    assert PostProcess.from_dict({**old, "tta": "shift"}).to_dict()["tta"] == "shift"

    with warnings.catch_warnings():
        warnings.simplefilter("error", TTAMismatchWarning)
        assert Predictor(run).threshold_tta == "none"
        assert Predictor(old_runs / "train_run", tta="none").threshold_tta == "none"
    with pytest.warns(TTAMismatchWarning) as caught:
        Predictor(run, tta="shift")
    assert len(caught) == 1
    msg = str(caught[0].message)
    assert "\n" not in msg and str(run) in msg
    assert "predict.tta 'none'" in msg and "predict.tta 'shift'" in msg
    assert "retrain with predict.tta: shift" in msg and "score with tta 'none'" in msg

    # A CV run whose folds were chosen under different views (a run resumed across versions).
    pp = read_postprocess(run / "fold_1")
    pp.tta = "shift"
    write_postprocess(run / "fold_1", pp)
    for tta in ("none", "shift"):
        with pytest.warns(TTAMismatchWarning, match="'none' and 'shift' \\(the folds differ\\)"):
            assert Predictor(run, tta=tta).threshold_tta == "none,shift"
    with warnings.catch_warnings():
        warnings.simplefilter("error", TTAMismatchWarning)
        Predictor(run / "fold_1", tta="shift")  # the fold alone: chosen and scored under shift
