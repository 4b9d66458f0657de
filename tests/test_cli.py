"""Tests for the medtl command line: help texts, exit codes, one-line errors."""

from __future__ import annotations

import subprocess
import sys

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


def test_cv_one_fold_says_how_to_pool_and_how_to_finish_a_retrain_run(tmp_path, monkeypatch, capsys):
    from tests.evaluate._cv_helpers import install_fakes, make_cfg, make_png_set

    csv = make_png_set(tmp_path / "ds")
    cfg_file = tmp_path / "cv.yaml"
    cfg_file.write_text(make_cfg(csv, tmp_path / "work", final_model="retrain").to_yaml())
    install_fakes(monkeypatch)
    run = tmp_path / "run"
    assert main(["cv", str(cfg_file), "--fold", "1", "--run", str(run), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"fold 1 done in {run}" in out and f"medtl cv --merge {run}" in out
    assert f"`medtl cv {cfg_file} --run {run}` trains the final model" in out
    assert (run / "fold_1" / "fold.json").is_file() and not (run / "fold_0" / "fold.json").exists()
    assert main(["cv", "--merge", str(run)]) == 0
    assert "1 of 3 folds" in capsys.readouterr().out
