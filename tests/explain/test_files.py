"""medtl explain on files: overlays at the film's resolution from a trained run, via the CLI."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from medtl.config import config_from_dict
    from medtl.data.synthetic import make_sample_data
    from medtl.train.trainer import train

    work = tmp_path_factory.mktemp("explain_files")
    csv = make_sample_data(work / "data", n_patients=10, seed=5, image_size=(96, 80), prevalence=0.4)
    cfg = config_from_dict({
        "name": "explain", "seed": 3, "output_dir": str(work / "runs"),
        "data": {"manifest": str(csv), "patient_column": "patient_id", "image_size": [48, 48],
                 "cache_dir": str(work / "cache"), "val_fraction": 0.3, "workers": 1},
        "augment": {"preset": "none"},
        "model": {"backbone": "smallcnn", "weights": "none", "dropout": 0.0},
        "train": {"batch_size": 8, "stages": [{"unfreeze": "all", "epochs": 2, "lr": 1e-3}],
                  "mixed_precision": "off", "distribute": "none"},
        "report": {"cam": "gradcam"},
    })
    res = train(cfg, progress=False)
    return res.run_dir, pd.read_csv(csv), csv.parent


def test_maps_come_back_at_each_films_own_resolution(trained_run):
    from medtl.explain.files import maps_for_files
    from medtl.io import read_image

    run, labels, root = trained_run
    paths = [str(root / f) for f in labels["file"][:3]]
    fm = maps_for_files(run, paths, method="gradcam")
    assert fm.method == "gradcam" and not fm.errors
    for p in paths:
        film = read_image(p)
        assert fm.films[p].shape == film.shape == fm.maps[p].shape
        np.testing.assert_array_equal(fm.films[p], film)
        assert 0.0 <= fm.maps[p].min() and fm.maps[p].max() <= 1.0


def test_cli_explain_writes_overlays_and_lists_bad_files(trained_run, tmp_path, capsys):
    from medtl.cli import main

    run, labels, root = trained_run
    good = [str(root / f) for f in labels["file"][:2]]
    bad = tmp_path / "broken.dcm"
    bad.write_text("not a DICOM file")
    out = tmp_path / "cams"
    rc = main(["explain", str(run), *good, str(bad), "--out", str(out)])
    assert rc == 1  # an unreadable file is reported, never dropped silently
    df = pd.read_csv(out / "explanations.csv", keep_default_na=False)
    assert df["path"].tolist() == good + [str(bad)]
    assert df.loc[2, "error"] and "broken.dcm" in df.loc[2, "error"]
    from medtl.io import read_image

    for _, row in df.iloc[:2].iterrows():
        img = Image.open(out / row["png"])
        assert img.mode == "RGB"
        assert np.asarray(img).shape[:2] == read_image(row["path"]).shape  # the film's own size
        assert 0.0 <= float(row["score"]) <= 1.0 and row["method"] == "gradcam"
    assert "1 unreadable file" in capsys.readouterr().err
