"""The trainer's feature_summary.npz (issue 20) and the predictor's pooled features, on the
session's tiny reference run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medtl.run.files import read_feature_summary
from medtl.run.layout import FEATURE_SUMMARY_FILE


def test_summary_is_written_with_numbers_only_and_the_right_shapes(reference_run):
    cfg, res = reference_run
    path = res.run_dir / FEATURE_SUMMARY_FILE
    assert path.is_file()
    with np.load(path, allow_pickle=False) as a:
        assert all(a[k].dtype.kind in "fiu" for k in a.files)  # no strings: no paths, no ids
    blob = path.read_bytes()
    train_paths = pd.read_csv(cfg.data.manifest)["file"].tolist()
    assert not any(p.encode() in blob for p in train_paths) and b"P00" not in blob
    s = read_feature_summary(res.run_dir)
    n_train = res.metrics["n_train"]
    assert s.vectors.shape == (n_train, 1280) and s.vectors.dtype == np.float16  # MobileNetV2 pooled
    assert s.n_source == n_train and s.ref_knn.shape == (n_train,)
    assert len(np.unique(s.groups)) == res.metrics["n_train_patients"]
    assert np.isfinite(s.ref_knn).all()


def test_predictor_features_match_the_summary_space_and_scores(reference_run):
    from medtl.run.predictor import Predictor, with_ood_columns

    cfg, res = reference_run
    paths = pd.read_csv(res.run_dir / "val_predictions.csv")["path"].tolist()
    p = Predictor(res.run_dir)
    plain = p.predict_paths(paths)
    df, feats = p.predict_paths(paths, features=True)
    assert feats.shape == (len(paths), 1280)
    assert np.allclose(df["score"], plain["score"], atol=1e-6)  # one pass gives the same scores
    r = p.shift(feats)
    assert r.n == len(paths) and not r.reliable  # a handful of films: figures, but no verdict
    out = with_ood_columns(df, r)
    assert out["ood"].dtype == bool and out["ood_percentile"].between(0, 100).all()
