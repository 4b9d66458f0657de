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
