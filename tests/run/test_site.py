"""``medtl predict RUN FILES --site FILE``: a site post-processing (from ``medtl evaluate
--recalibrate``) replaces the run's threshold, on an old training run kept as a fixture."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from medtl.cli import main
from medtl.run.files import read_postprocess
from medtl.run.predictor import Predictor


def _site_file(tmp_path, run, threshold: float):
    site = read_postprocess(run)
    site.thresholds, site.calibrators, site.calibration = [threshold], None, "none"
    site.extra["site"] = {"k": 10, "n_films": 14, "seed": 0}
    path = tmp_path / f"site_{threshold}.json"
    path.write_text(json.dumps(site.to_dict()))
    return path


def test_predict_with_a_site_threshold(old_runs, tmp_path, capsys):
    run = old_runs / "train_run"
    films = sorted(str(p) for p in (old_runs / "films").glob("*.png"))
    plain = Predictor(run).predict_paths(films)
    for t, expected in ((1.0, "normal"), (0.0, "lesion")):  # 1.0: every film negative; 0.0: every film positive
        site = _site_file(tmp_path, run, t)
        out = tmp_path / f"pred_{t}.csv"
        assert main(["predict", str(run), *films, "--out", str(out), "--site", str(site)]) == 0
        got = pd.read_csv(out)
        assert (got["prediction"] == expected).all()
        pd.testing.assert_series_equal(got["score"], plain["score"], check_exact=False)  # no calibrator: same scores
        assert f"threshold: site file {site} (youden, calibration none, refitted on 10 local patients)" in \
            capsys.readouterr().out


def test_a_site_file_of_another_model_is_refused(old_runs, tmp_path):
    run = old_runs / "train_run"
    site = read_postprocess(run)
    site.classes = ["a", "b"]
    path = tmp_path / "other.json"
    path.write_text(json.dumps(site.to_dict()))
    with pytest.raises(ValueError, match="other.json: a site file for a binary model of classes"):
        Predictor(run, site=path)
    with pytest.raises(FileNotFoundError, match="no such site file"):
        Predictor(run, site=tmp_path / "missing.json")
