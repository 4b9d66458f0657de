"""The run folder's names and the shared resume check (medtl/run/layout.py, resume.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from medtl.config import ConfigError, config_from_dict
from medtl.run import layout
from medtl.run.resume import check_same_config, cv_key_is_free, flatten, training_key_is_free


def test_cv_folder_helpers(tmp_path):
    run = tmp_path / "run"
    assert not layout.is_cv_run(run)
    (run / "fold_1").mkdir(parents=True)
    (run / layout.CV_FILE).write_text("{}")
    (run / "fold_1" / layout.FOLD_DONE).write_text("{}")
    assert layout.is_cv_run(run)
    assert layout.fold_dir(run, 1) == run / "fold_1" and layout.final_dir(run) == run / "final"
    assert layout.finished_folds(run, 3) == [1]
    assert layout.history_stage_file(2) == "history_stage2.csv"


def test_names_are_the_ones_run_folders_always_had():
    # Old run folders must keep loading: these names are a file format, not a style choice.
    assert (layout.MODEL_FILE, layout.MODEL_INFO_FILE, layout.CONFIG_FILE, layout.POSTPROCESS_FILE) == (
        "model.keras", "model_info.json", "config.yaml", "postprocess.json")
    assert (layout.CV_FILE, layout.FOLDS_FILE, layout.SPLIT_FILE, layout.FOLD_DONE, layout.OOF_FILE,
            layout.ENSEMBLE_FILE, layout.FINAL_DIR, layout.FINAL_DONE) == (
        "cv.json", "folds.csv", "split.csv", "fold.json", "oof_predictions.csv", "ensemble.json", "final",
        "final.json")


def test_run_layer_loads_no_tensorflow():
    code = ("import sys, medtl.run, medtl.run.predictor, medtl.run.resume; "
            "bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def _cfg(**top):
    return config_from_dict({"data": {"manifest": "x.csv"}, **top})


def test_free_keys_differ_between_training_and_cv_runs():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": 0}) == {"a.b": 1, "a.c.d": [1, 2], "e": 0}
    assert training_key_is_free("data.workers") and not training_key_is_free("name")
    assert cv_key_is_free("name") and cv_key_is_free("report.cases") and not cv_key_is_free("seed")
    old, new = _cfg(name="a", seed=1), _cfg(name="b", seed=1, output_dir="elsewhere")
    check_same_config("cfg.yaml", old, new, cv_key_is_free, "differs:", "{key}", "fix it")
    with pytest.raises(ConfigError, match=r"^cfg.yaml: differs: name \('a' -> 'b'\); fix it$"):
        check_same_config("cfg.yaml", old, new, training_key_is_free, "differs:", "{key} ({old!r} -> {new!r})",
                          "fix it")
