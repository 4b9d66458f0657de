"""The one predictor (medtl/run/predictor.py): prediction on new files reproduces the
training-time preprocessing exactly, and every run kind medtl predict accepts gives what it gives."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest


def _copy_model(run_dir, dest):
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("model.keras", "model_info.json"):
        shutil.copy(run_dir / name, dest / name)
    return dest


def test_predictions_equal_the_trainers_validation_scores(reference_run):
    from medtl.run.predictor import predict_paths

    _, res = reference_run
    val = pd.read_csv(res.run_dir / "val_predictions.csv")
    out = predict_paths(res.run_dir, val["path"].tolist(), batch_size=4)
    assert out["path"].tolist() == val["path"].tolist()
    np.testing.assert_allclose(out["score"], val["score"], atol=1e-5)
    assert (out["error"] == "").all()
    classes = res.metrics["classes"]
    # A run of its own chose its threshold on the validation split; predict applies it.
    from medtl.evaluate import choose_threshold
    from medtl.stats.postprocess import PostProcess

    pp = PostProcess.from_dict(json.loads((res.run_dir / "postprocess.json").read_text()))
    assert pp.calibration == "none" and pp.thresholds[0] == pytest.approx(
        choose_threshold(val["label"], val["score"], pp.rule))
    expected = np.where(val["score"] >= pp.thresholds[0], classes[1], classes[0])
    assert out["prediction"].tolist() == expected.tolist()


def test_predict_flags_films_outside_the_training_range_and_prints_the_shift(reference_run, tmp_path, capsys):
    from medtl.cli import main
    from medtl.run.predictor import predict_paths

    _, res = reference_run
    val = pd.read_csv(res.run_dir / "val_predictions.csv")
    paths = val["path"].tolist() + [str(tmp_path / "gone.png")]  # one unreadable film: no shift row
    out = predict_paths(res.run_dir, paths, batch_size=4)
    shift = out.attrs["shift"]
    assert shift is not None and shift["n"] == len(val)  # the readable films only
    assert 0.0 <= shift["share_ood"] <= 1.0 and shift["share_ood"] == pytest.approx(out["ood"].mean() * len(out) / len(val))
    assert out["ood_percentile"].iloc[:-1].between(0, 100).all() and np.isnan(out["ood_percentile"].iloc[-1])
    assert not out["ood"].iloc[-1]
    # The command says the same figures in one line (and warns only when the films differ).
    assert main(["predict", str(res.run_dir), *paths[:-1], "--out", str(tmp_path / "p.csv")]) == 0
    printed = capsys.readouterr()
    assert "shift from the training films: domain AUC" in printed.out
    assert pd.read_csv(tmp_path / "p.csv")["ood"].tolist() == out["ood"].iloc[:-1].tolist()


def test_model_file_threshold_and_unreadable_files(reference_run, tmp_path):
    from medtl.run.files import read_model_info, set_threshold
    from medtl.run.predictor import predict_paths

    _, res = reference_run
    folder = _copy_model(res.run_dir, tmp_path / "model")
    val = pd.read_csv(res.run_dir / "val_predictions.csv")
    cut = float(np.median(val["score"]))
    set_threshold(folder / "model.keras", cut, rule="fixed")
    assert read_model_info(folder)["threshold"] == cut

    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"\x00" * 300)
    paths = [val["path"][0], str(bad), val["path"][1], str(tmp_path / "gone.png")]
    out = predict_paths(folder / "model.keras", paths)
    assert out["path"].tolist() == paths
    assert out["error"][0] == "" and out["error"][2] == ""
    assert "bad.dcm" in out["error"][1] and "gone.png" in out["error"][3]
    assert out["score"][[1, 3]].isna().all() and (out["prediction"][[1, 3]] == "").all()
    classes = res.metrics["classes"]
    for i, j in ((0, 0), (2, 1)):
        assert out["prediction"][i] == (classes[1] if out["score"][i] >= cut else classes[0])
        assert out["score"][i] == pytest.approx(val["score"][j], abs=1e-5)


def test_saved_window_is_honoured(reference_run, tmp_path):
    """A model whose info says window: minmax is fed minmax-windowed pixels, not auto."""
    from medtl.config import config_from_dict
    from medtl.data.pipeline import ImagePipeline
    from medtl.models.classifier import load_model
    from medtl.run.predictor import predict_paths

    _, res = reference_run
    folder = _copy_model(res.run_dir, tmp_path / "model")
    info = json.loads((folder / "model_info.json").read_text())
    assert info["preprocessing"]["window"] == "auto"
    info["preprocessing"]["window"] = "minmax"
    (folder / "model_info.json").write_text(json.dumps(info))
    paths = pd.read_csv(res.run_dir / "val_predictions.csv")["path"].tolist()

    out = predict_paths(folder, paths)
    model = load_model(folder / "model.keras")
    expect = {}
    for window in ("minmax", "auto"):
        cfg = config_from_dict({"data": {"manifest": "x", "image_size": [32, 32], "window": window}})
        pipe = ImagePipeline(cfg)
        x = np.stack([pipe.load(p)[0] for p in paths])
        expect[window] = model.predict(x, verbose=0)[:, 0]
    np.testing.assert_allclose(out["score"], expect["minmax"], atol=1e-5)
    assert np.abs(expect["minmax"] - expect["auto"]).max() > 1e-3  # the windows really differ


def test_collect_paths_recurses_and_keeps_named_files(tmp_path):
    from medtl.run.predictor import collect_paths

    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "1.dcm").write_bytes(b"x")
    (tmp_path / "a" / "b" / "2.PNG").write_bytes(b"x")
    (tmp_path / "a" / "b" / "3.jpeg").write_bytes(b"x")
    (tmp_path / "a" / "noext").write_bytes(b"\x00" * 128 + b"DICM" + b"\x00" * 16)
    (tmp_path / "a" / "plain").write_bytes(b"hello")
    # PACS exports named by SOP Instance UID: the last component is not a suffix.
    (tmp_path / "a" / "1.2.276.0.7230010.3.1.4.850819").write_bytes(b"\x00" * 128 + b"DICM" + b"\x00" * 16)
    (tmp_path / "a" / "Thumbs.db").write_bytes(b"\x00" * 200)
    (tmp_path / "a" / "notes.txt").write_text("x")
    (tmp_path / "a" / ".hidden.dcm").write_bytes(b"x")
    (tmp_path / "single.txt").write_text("x")

    got = collect_paths([tmp_path / "a", tmp_path / "single.txt", tmp_path / "a" / "1.dcm"])
    root = str(tmp_path / "a")
    assert got == [f"{root}/1.2.276.0.7230010.3.1.4.850819", f"{root}/1.dcm", f"{root}/b/2.PNG", f"{root}/b/3.jpeg", f"{root}/noext",
                   str(tmp_path / "single.txt")]
    with pytest.raises(FileNotFoundError, match="missing"):
        collect_paths([tmp_path / "missing"])


def test_model_info_errors_name_the_fix(tmp_path):
    from medtl.run.predictor import predict_paths

    with pytest.raises(FileNotFoundError, match="no model.keras"):
        predict_paths(tmp_path, [])
    (tmp_path / "model.keras").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="no model_info.json"):
        predict_paths(tmp_path / "model.keras", [])


# -- issue 20: films to refer when the test-time views (or the fold models) disagree ------------


def test_views_that_disagree_make_a_film_uncertain(old_runs):
    """Hand numbers: one model under two views, then an ensemble of two under two views."""
    from medtl.run.predictor import MemberScores, Predictor

    one = Predictor(old_runs / "train_run")
    t = one.thresholds[0]
    # Per view (V=2, N=3, K=1): film 0's second view falls below the threshold, its mean does not.
    views = np.array([[[t + 0.3], [t + 0.1], [t - 0.1]],
                      [[t - 0.1], [t + 0.05], [t - 0.15]]])
    raw = MemberScores.of_views([views])
    np.testing.assert_allclose(raw[0], views.mean(axis=0))
    spread, flag = one.disagreement(raw)
    assert flag.tolist() == [True, False, False]
    np.testing.assert_allclose(spread, [0.2, 0.025, 0.025])  # SD over the views

    ens = Predictor(old_runs / "cv_run")
    t = ens.thresholds[0]
    a = np.array([[[t + 0.1], [t + 0.2], [t + 0.3]], [[t + 0.12], [t + 0.2], [t - 0.05]]])  # fold 0 per view
    b = np.array([[[t + 0.2], [t - 0.4], [t + 0.2]], [[t + 0.22], [t - 0.4], [t + 0.2]]])  # fold 1 per view
    # film 0: all agree; film 1: fold 0 decides positive, the ensemble (mean t - 0.1) negative;
    # film 2: the folds' means agree with the ensemble, but fold 0's second view does not.
    spread, flag = ens.disagreement(MemberScores.of_views([a, b]))
    assert flag.tolist() == [False, True, True]
    np.testing.assert_allclose(spread, np.concatenate([a, b]).std(axis=0)[:, 0])  # SD over fold x view
    # Without views an ensemble is judged on its fold models alone: film 2 is then certain.
    spread, flag = ens.disagreement(MemberScores([a.mean(axis=0), b.mean(axis=0)]))
    assert flag.tolist() == [False, True, False]
    np.testing.assert_allclose(spread, np.stack([a.mean(axis=0), b.mean(axis=0)]).std(axis=0)[:, 0])


def test_with_uncertain_needs_the_scores_of_the_readable_rows(old_runs):
    from medtl.run.predictor import MemberScores, Predictor

    one = Predictor(old_runs / "train_run")
    t = one.thresholds[0]
    df = pd.DataFrame({"path": ["a", "b", "c"], "score": [t + 0.1, np.nan, t - 0.2], "error": ["", "bad", ""]})
    assert one.with_uncertain(df) is df  # one model, one view: nothing can disagree
    assert one.with_uncertain(df, MemberScores([np.array([[t + 0.1], [t - 0.2]])])) is df
    raw = MemberScores.of_views([np.array([[[t + 0.2], [t - 0.1]], [[t - 0.01], [t - 0.3]]])])
    out = one.with_uncertain(df, raw)
    assert out["uncertain"].tolist() == [True, False, False]
    assert np.isnan(out["spread"][1]) and out["spread"][[0, 2]].to_numpy() == pytest.approx([0.105, 0.1])
    with pytest.raises(ValueError, match="2 scored films for 1 readable rows"):
        one.with_uncertain(df.iloc[:1], raw)


class _CentreMean:
    """A stand-in model: ``a`` x the mean of the film's central half, plus ``b`` (shifts and
    zooms of the film change it, as they change a real model's score)."""

    def __init__(self, a: float, b: float) -> None:
        self.a, self.b = a, b

    def predict_on_batch(self, x):
        x = np.asarray(x, dtype=np.float64)
        h, w = x.shape[1:3]
        return (self.a * x[:, h // 4:3 * h // 4, w // 4:3 * w // 4].mean(axis=(1, 2, 3)) + self.b)[:, None]


def _expected_flags(pred, fakes, films):
    """(score, spread, uncertain) per film, computed here from the views and the fixed rule."""
    from medtl.data.pipeline import ImagePipeline
    from medtl.run.tta import tta_views

    pipe = ImagePipeline(pred.pipeline_config())
    x = np.stack([pipe.load(f)[0] for f in films])
    each = np.array([[m.predict_on_batch(v(x))[:, 0] for v in tta_views(pred.tta)] for m in fakes])  # (M, V, N)
    means = each.mean(axis=1)  # (M, N) view means (no calibrators in these runs)
    ens = means.mean(axis=0)
    t = pred.thresholds[0]
    votes = np.concatenate([means, each.reshape(-1, len(films))])
    uncertain = ((votes >= t) != (ens >= t)).any(axis=0)
    return ens, each.reshape(-1, len(films)).std(axis=0), uncertain


@pytest.mark.parametrize("kind", ["train_run", "cv_run"])
def test_tta_disagreement_flows_to_predict_paths_and_medtl_predict(kind, old_runs, tmp_path, monkeypatch, capsys):
    """A run whose config says predict.tta: shift: medtl.predict_paths and `medtl predict` give
    spread and uncertain from the views (and, for the CV run, the fold models), and warn once
    that the old run's threshold was chosen on single-view scores."""
    import medtl
    from medtl.cli import main
    from medtl.models import classifier
    from medtl.run.predictor import Predictor, TTAMismatchWarning

    run = old_runs / kind
    cfg = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(cfg + "predict:\n  tta: shift\n")
    # Offsets that put the films' scores near the fixtures' thresholds, so that some views disagree.
    fakes = {"fold_0": _CentreMean(1.0, -0.25), "fold_1": _CentreMean(0.6, -0.064), kind: _CentreMean(1.0, -0.345)}
    monkeypatch.setattr(classifier, "load_model", lambda path: fakes[path.parent.name])
    films = sorted(str(p) for p in (old_runs / "films").glob("*.png"))

    with pytest.warns(TTAMismatchWarning, match="predict.tta 'none'.*predict.tta 'shift'.*retrain with predict.tta: shift"):
        got = medtl.predict_paths(run, films + [str(tmp_path / "gone.png")])
    with pytest.warns(TTAMismatchWarning):
        pred = Predictor(run)
    members = [fakes[m.name] for m in pred.members]
    score, spread, uncertain = _expected_flags(pred, members, films)
    assert uncertain.tolist() == [True, True, False, False]  # the fixtures' films near and far from the cut
    np.testing.assert_allclose(got["score"][:-1], score, atol=1e-5)
    np.testing.assert_allclose(got["spread"][:-1], spread, atol=1e-5)
    assert got["uncertain"].tolist() == [*uncertain.tolist(), False] and np.isnan(got["spread"].iloc[-1])

    assert main(["predict", str(run), *films, "--out", str(tmp_path / "p.csv")]) == 0
    err = capsys.readouterr().err
    assert err.count("decision threshold was chosen on validation scores under predict.tta 'none'") == 1
    assert "TTAMismatchWarning" not in err  # one plain line, not Python's warning format
    table = pd.read_csv(tmp_path / "p.csv")
    assert table["uncertain"].tolist() == uncertain.tolist()
