"""medtl.api: every command of the ``medtl`` CLI is a function of the public API with the same
arguments, the command-named modules stay callable, and the functions return what the
commands print from."""

from __future__ import annotations

import inspect as pyinspect
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import medtl
import medtl.api
from medtl.cli import build_parser, main

FIXTURES = Path(__file__).resolve().parent / "run" / "fixtures"

# CLI option dests whose API parameter has another, Pythonic name (``--quiet`` -> progress=False).
RENAMED = {"set": "overrides", "quiet": "progress", "no_cams": "cams", "no_report": "report",
           "annotations_option": "annotations"}  # medtl localise takes the CSV as ANNOTATIONS or --annotations
# Options of the parser itself, not of a command.
GLOBAL_DESTS = {"help", "debug", "version", "command", "func"}


def _subcommands() -> dict[str, object]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")  # the subparsers action
    return dict(sub.choices)


def test_cli_commands_are_the_known_ones():
    # A command added to the CLI without its function would fail the next test; this one says
    # which commands the API promises.
    assert sorted(_subcommands()) == sorted(["inspect", "init", "train", "cv", "predict", "evaluate", "compare",
                                             "explain", "report", "deid-check", "export", "localise"])


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_every_command_has_its_function_with_every_option(command):
    name = command.replace("-", "_")
    func = getattr(medtl.api, name, None)
    assert callable(func), f"medtl {command}: no function medtl.api.{name}"
    assert name in medtl.__all__ and callable(getattr(medtl, name)), f"medtl.{name} is not exported"
    params = pyinspect.signature(func).parameters
    dests = {a.dest for a in _subcommands()[command]._actions} - GLOBAL_DESTS
    missing = sorted(d for d in dests if RENAMED.get(d, d) not in params)
    assert not missing, f"medtl.api.{name} lacks parameters for the options {missing} of medtl {command}"
    assert func.__doc__ and "Example:" in func.__doc__


def _run(code: str) -> str:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize("name,sub", [("train", "losses"), ("evaluate", "cv"), ("explain", "overlay"),
                                      ("report", "deid"), ("init", None)])
def test_command_modules_stay_callable_whatever_was_imported_first(name, sub):
    # A fresh interpreter each: whether `import medtl.<name>...` or `medtl.<name>(...)` comes
    # first decides what the import system binds on medtl.
    module = f"medtl.{name}.{sub}" if sub else f"medtl.{name}"
    call = f"""
        import medtl.api
        calls = []
        medtl.api.{name} = lambda *a, **k: calls.append((a, k)) or "done"  # the command's function
        assert medtl.{name}("x", flag=1) == "done" and calls == [(("x",), {{"flag": 1}})]
        assert medtl.{name}.__name__ == "medtl.{name}"
    """
    use = f"""
        import sys
        import {module}
        assert "{module}" in sys.modules
        assert callable(medtl.{name}) and medtl.{name}.__name__ == "medtl.{name}"
    """
    _run("import medtl\n" + textwrap.dedent(use) + textwrap.dedent(call))
    _run("import medtl\n" + textwrap.dedent(call) + textwrap.dedent(use))
    _run(f"from medtl import {name}\nassert callable({name}) and {name}.__name__ == 'medtl.{name}'\n")


def test_import_medtl_api_loads_no_tensorflow():
    _run("""
        import sys
        import medtl, medtl.api, medtl.cli
        for name in medtl.api.__all__:
            getattr(medtl, name, None)
        assert "tensorflow" not in sys.modules and "keras" not in sys.modules, "TensorFlow loaded"
    """)


def test_submodules_of_command_packages_work_after_the_call_form():
    from medtl.evaluate.cv import merge_cv
    from medtl.report import deid

    assert medtl.merge_cv is merge_cv and medtl.report.deid is deid
    assert medtl.write_report is medtl.report.html.write_report


def test_init_writes_a_config_the_cli_would(tmp_path):
    shutil.copytree(FIXTURES / "films", tmp_path / "data" / "normal")
    (tmp_path / "data" / "lesion").mkdir()
    for p in sorted((tmp_path / "data" / "normal").glob("*.png"))[:2]:
        shutil.move(str(p), tmp_path / "data" / "lesion" / p.name)
    out = medtl.init(tmp_path / "data", out=tmp_path / "api.yaml")
    assert out == tmp_path / "api.yaml" and out.is_file()
    assert main(["init", str(tmp_path / "data"), "--out", str(tmp_path / "cli.yaml")]) == 0
    assert out.read_text() == (tmp_path / "cli.yaml").read_text()
    cfg = medtl.load_config(out)
    assert sorted(cfg.data.classes) == ["lesion", "normal"]
    with pytest.raises(FileExistsError):
        medtl.init(tmp_path / "data", out=out)


def test_inspect_returns_the_report(tmp_path):
    report = medtl.inspect(FIXTURES / "films")
    assert report.ok and report.n_errors == 0 and report.n_files == len(list((FIXTURES / "films").glob("*.png")))


def test_errors_the_cli_prints_as_one_line_are_exceptions(tmp_path):
    with pytest.raises(ValueError, match="give a config"):
        medtl.cv()
    with pytest.raises(ValueError, match="--patch 1.5: expected a fraction"):
        medtl.explain(FIXTURES / "cv_run", [FIXTURES / "films"], out=tmp_path, patch=1.5)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no DICOM/PNG/JPEG files found in"):
        medtl.predict(FIXTURES / "cv_run", tmp_path / "empty")
    with pytest.raises(medtl.ConfigError, match="config file not found"):
        medtl.train(tmp_path / "missing.yaml")


def test_train_warns_without_patient_ids_before_training(tmp_path, monkeypatch):
    import medtl.train.trainer as trainer

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{manifest: {tmp_path / 'labels.csv'}, patient_column: none}}\n")
    monkeypatch.setattr(trainer, "train", lambda cfg, **kw: (cfg, kw))
    with pytest.warns(medtl.api.NoPatientIdsWarning, match="no patient ids"):
        got_cfg, kw = medtl.train(cfg, overrides=["seed=7"], progress=False)
    assert got_cfg.seed == 7 and kw == {"resume": None, "progress": False}
    # A Config works as well as its file, with overrides applied to a copy.
    with pytest.warns(medtl.api.NoPatientIdsWarning):
        got_cfg2, _ = medtl.train(got_cfg, overrides=["seed=8"])
    assert got_cfg2.seed == 8 and got_cfg.seed == 7


def test_predict_on_a_cv_run_equals_cli_predict(tmp_path):
    run = tmp_path / "cv_run"
    shutil.copytree(FIXTURES / "cv_run", run)
    films = sorted(str(p) for p in (FIXTURES / "films").glob("*.png"))
    assert main(["predict", str(run), *films, "--out", str(tmp_path / "cli.csv")]) == 0
    api = medtl.predict(run, films, out=tmp_path / "api" / "pred.csv")
    cli = pd.read_csv(tmp_path / "cli.csv", keep_default_na=False)
    assert list(api.columns) == list(cli.columns) and api["path"].tolist() == films
    assert api["prediction"].tolist() == cli["prediction"].tolist()
    np.testing.assert_allclose(api["score"].to_numpy(), cli["score"].to_numpy(dtype=np.float64), rtol=1e-12)
    assert "median of the validation-chosen" in api.attrs["threshold_source"]
    written = pd.read_csv(tmp_path / "api" / "pred.csv", keep_default_na=False)
    assert written["path"].tolist() == films
    # One folder given as a plain path, not a list.
    assert medtl.predict(run, FIXTURES / "films")["path"].tolist() == films


def test_cv_merge_returns_the_pooled_metrics(tmp_path):
    run = tmp_path / "cv_run"
    shutil.copytree(FIXTURES / "cv_run", run)
    metrics = medtl.cv(merge=run)
    assert metrics["folds"] == 2 and "roc_auc" in metrics["pooled"]
    assert medtl.format_cv(metrics).startswith("Cross-validation")


def test_deid_check_finds_a_run_film_name_in_shared_files_and_passes_a_clean_folder(tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / "cv_run", run)  # folds.csv lists films P0001_1.dcm ... of patients P0001 ...
    share = tmp_path / "share"
    share.mkdir()
    (share / "notes.txt").write_text("scores of the external test, all in one table\n")
    assert medtl.deid_check(run, share) == []
    assert main(["deid-check", str(run), str(share)]) == 0
    assert "no identifying string" in capsys.readouterr().out

    (share / "P0001_1_gradcam.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # a film's stem in a file name
    (share / "table.csv").write_text("case,score\nP0001,0.93\n")  # a patient id in the text
    hits = medtl.deid_check(run, [share])
    assert [(Path(p).name, where.split(" at ")[0]) for p, where in hits] == [
        ("P0001_1_gradcam.png", "file name"), ("table.csv", "text")]
    assert main(["deid-check", str(run), str(share)]) == 1
    out = capsys.readouterr()
    assert "P0001_1_gradcam.png: file name" in out.out and "2 place(s) with PHI" in out.err
    # The index holds salted hashes only: no film name or patient id in the clear.
    assert "P0001" not in (run / "deid_index.json").read_text()


def test_evaluate_writes_its_report_and_a_refused_page_leaves_the_metrics(tmp_path, monkeypatch):
    import medtl.report.evaluation as evaluation
    from medtl.report.html import PHIError, ReportWarning
    from tests.evaluate.test_external_shift import _fake_score, _run_with_summary

    run, data = _run_with_summary(tmp_path, monkeypatch)
    _fake_score(monkeypatch, shift=0.0)
    monkeypatch.setattr(medtl.api, "_start_up", lambda: None)  # the fake scorer needs no TensorFlow
    m = medtl.evaluate(run, data, tmp_path / "ev", progress=False)
    assert (tmp_path / "ev" / "report.html").is_file() and m["selective"] is not None
    assert medtl.report(tmp_path / "ev", out=tmp_path / "again.html") == tmp_path / "again.html"

    def refuse(eval_dir, out_path=None):
        raise PHIError("the rendered report contains a raw patient id")

    monkeypatch.setattr(evaluation, "write_evaluation_report", refuse)
    with pytest.warns(ReportWarning, match="report.html not written: the rendered report contains"):
        again = medtl.evaluate(run, data, tmp_path / "ev2", progress=False)
    assert again["n"] == m["n"] and (tmp_path / "ev2" / "metrics.json").is_file()
    assert not (tmp_path / "ev2" / "report.html").exists()
