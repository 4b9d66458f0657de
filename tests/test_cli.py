"""Tests for the medtl command line: help texts, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medtl.cli import build_parser, main

SUBCOMMANDS = ["inspect", "train", "predict", "cv", "evaluate", "compare", "report", "explain"]


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_has_help_with_example(name, capsys):
    with pytest.raises(SystemExit) as ex:
        main([name, "--help"])
    assert ex.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out and f"medtl {name}" in out


def test_parser_lists_all_subcommands():
    text = build_parser().format_help()
    for name in SUBCOMMANDS:
        assert name in text


def test_bad_config_gives_one_line_error_and_nonzero_exit(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {manifest: a.csv, windw: auto}\n")
    assert main(["train", str(cfg)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "unknown config key 'data.windw'" in err[0] and "Traceback" not in err[0]


def test_os_errors_name_the_path_and_the_fix(tmp_path, capsys):
    from tests.report.conftest import make_fake_cv_run

    run = make_fake_cv_run(tmp_path, overlays=False).run
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["report", str(run), "--no-cams", "--out", str(blocker / "sub" / "r.html")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(blocker) in err[0] and "check the path and its permissions" in err[0], err


def test_debug_shows_traceback(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {manifest: a.csv, windw: auto}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "medtl.cli", "--debug", "train", str(cfg)], capture_output=True, text=True
    )
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "ConfigError" in proc.stderr


def test_cv_without_config_or_merge_says_what_to_give(capsys):
    assert main(["cv"]) == 1
    assert "give a config" in capsys.readouterr().err


def test_inspect_exits_nonzero_and_names_every_unreadable_file(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    for cls in ("normal", "lesion"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.fromarray(np.full((20, 24), 40 * (i + 1), np.uint8)).save(tmp_path / cls / f"{cls}{i}.png")
    (tmp_path / "lesion" / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert main(["inspect", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "cut.png" in out and "unreadable: 1" in out
    (tmp_path / "lesion" / "cut.png").unlink()
    assert main(["inspect", str(tmp_path)]) == 0


def test_evaluate_writes_the_report_and_medtl_report_renders_it_again(tmp_path, monkeypatch, capsys):
    from tests.evaluate.test_external_shift import _fake_score, _run_with_summary

    import medtl.api

    run, data = _run_with_summary(tmp_path, monkeypatch)
    _fake_score(monkeypatch, shift=4.0)
    monkeypatch.setattr(medtl.api, "_start_up", lambda: None)  # the fake scorer needs no TensorFlow
    ev = tmp_path / "eval"
    assert main(["evaluate", str(run), str(data), "--out", str(ev), "--quiet"]) == 0
    out = capsys.readouterr().out
    page = ev / "report.html"
    assert page.is_file() and f"{page}" in out.splitlines()[-1]
    warning = next(w for w in json.loads((ev / "metrics.json").read_text())["warnings"]
                   if "differ from the training films" in w)
    assert f"WARNING {warning}" in out  # the console and the page give the same line
    first = page.read_text()
    assert "differ from the training films" in first and "Films to refer" in first
    page.unlink()
    assert main(["report", str(ev)]) == 0  # an evaluation folder: re-rendered, no run or models needed
    assert capsys.readouterr().out.strip() == f"report: {page}"
    strip = re.compile(r"data:image/png;base64,[A-Za-z0-9+/=]+|report generated [0-9: -]+")
    assert strip.sub("", page.read_text()) == strip.sub("", first)
    assert main(["evaluate", str(run), str(data), "--out", str(tmp_path / "quiet"), "--no-report", "--quiet"]) == 0
    assert not (tmp_path / "quiet" / "report.html").exists() and (tmp_path / "quiet" / "metrics.json").is_file()
    assert "report.html" not in capsys.readouterr().out


def test_cv_one_fold_says_how_to_pool_and_how_to_finish_a_retrain_run(tmp_path, monkeypatch, capsys):
    from tests.evaluate._cv_helpers import install_fakes, make_cfg, make_png_set

    csv = make_png_set(tmp_path / "ds")
    cfg_file = tmp_path / "cv.yaml"
    cfg_file.write_text(make_cfg(csv, tmp_path / "work", final_model="retrain").to_yaml())
    install_fakes(monkeypatch)
    run = tmp_path / "run"
    assert main(["cv", str(cfg_file), "--set", "name=my run", "--fold", "1", "--run", str(run), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"fold 1 done in {run}" in out and f"medtl cv --merge {run}" in out
    # The hint repeats the overrides: without them the run would refuse the config as changed.
    assert f"`medtl cv {cfg_file} --set 'name=my run' --run {run}` trains the final model" in out
    assert (run / "fold_1" / "fold.json").is_file() and not (run / "fold_0" / "fold.json").exists()
    assert main(["cv", "--merge", str(run)]) == 0
    assert "1 of 3 folds" in capsys.readouterr().out


def _medtl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The console command in a fresh interpreter, as a user runs it (nothing imported before,
    TF_CPP_MIN_LOG_LEVEL unset). TensorFlow's INFO start-up lines must not reach the user."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run([sys.executable, "-m", "medtl.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600, env=env)
    assert proc.returncode == 0, f"medtl {args[0]} failed:\n{proc.stderr[-3000:]}"
    assert "absl::InitializeLog" not in proc.stderr and not re.search(r"^I\d{4} ", proc.stderr, re.M), \
        proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_train_then_predict_and_evaluate_as_separate_commands(tmp_path):
    """Each command in its own process: a fresh `medtl predict` must load the saved model (its
    custom layers registered) and score films exactly as the Python API does."""
    import pandas as pd

    from medtl.data.synthetic import make_sample_data
    from medtl.run.predictor import predict_paths

    csv = make_sample_data(tmp_path / "data", n_patients=12, seed=3, image_size=(96, 96), prevalence=0.4)
    repo = Path(__file__).resolve().parents[1]
    sets = [f"data.manifest={csv}", f"data.cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'runs'}",
            "data.image_size=[64,64]", "train.stages.0.epochs=1", "data.val_fraction=0.3"]
    out = _medtl("train", str(repo / "configs" / "demo.yaml"), "--quiet",
                 *[a for s in sets for a in ("--set", s)], cwd=tmp_path).stdout
    run = Path(out.strip().splitlines()[-1].split("run folder: ", 1)[1])
    assert (run / "model.keras").is_file()

    films = tmp_path / "data" / "images"
    _medtl("predict", str(run), str(films), "--out", str(tmp_path / "pred.csv"), cwd=tmp_path)
    cli = pd.read_csv(tmp_path / "pred.csv").sort_values("path").reset_index(drop=True)
    api = predict_paths(run, sorted(str(p) for p in films.glob("*.dcm"))).sort_values("path").reset_index(drop=True)
    assert len(cli) == len(api) == len(list(films.glob("*.dcm")))
    np.testing.assert_allclose(cli["score"], api["score"], atol=1e-6)

    _medtl("evaluate", str(run), str(csv), "--out", str(tmp_path / "eval"), cwd=tmp_path)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n"] == len(pd.read_csv(csv)) and 0.0 <= metrics["roc_auc"] <= 1.0

    film = sorted(films.glob("*.dcm"))[0]
    _medtl("explain", str(run), str(film), "--out", str(tmp_path / "cams"), cwd=tmp_path)
    assert len(list((tmp_path / "cams").glob("*.png"))) == 1


def test_train_without_patient_ids_warns_before_training(tmp_path, monkeypatch, capsys):
    import medtl.train.trainer as trainer

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{manifest: {tmp_path / 'labels.csv'}, patient_column: none}}\n")
    class Reached(Exception):
        pass

    def fake_train(*args, **kwargs):
        raise Reached  # stops the command where training would start

    monkeypatch.setattr(trainer, "train", fake_train)
    with pytest.raises(Reached):
        main(["--debug", "train", str(cfg)])
    assert "WARNING: no patient ids (data.patient_column: none)" in capsys.readouterr().err


def test_tta_option_reaches_predict_and_evaluate(monkeypatch, tmp_path):
    """--tta on predict and evaluate is passed on; its choices are medtl.run.tta's modes."""
    import pandas as pd

    import medtl.api
    from medtl.cli import _TTA_MODES
    from medtl.run.tta import TTA_MODES

    assert _TTA_MODES == TTA_MODES
    seen = {}

    def fake_predict(*args, **kwargs):
        seen["predict"] = kwargs["tta"]
        df = pd.DataFrame({"path": ["a.png"], "score": [0.5], "prediction": ["x"], "error": [""]})
        df.attrs.update(threshold_source="test", shift=None)
        return df

    def fake_evaluate(*args, **kwargs):
        seen["evaluate"] = kwargs["tta"]
        raise SystemExit(0)  # the console table needs real metrics; the option is what is checked

    monkeypatch.setattr(medtl.api, "predict", fake_predict)
    monkeypatch.setattr(medtl.api, "evaluate", fake_evaluate)
    assert main(["predict", "run", "films", "--tta", "shift", "--out", str(tmp_path / "p.csv")]) == 0
    with pytest.raises(SystemExit):
        main(["evaluate", "run", "data.csv", "--out", str(tmp_path / "e"), "--tta", "flip+shift"])
    assert seen == {"predict": "shift", "evaluate": "flip+shift"}
    with pytest.raises(SystemExit):
        main(["predict", "run", "films", "--tta", "rotate"])
