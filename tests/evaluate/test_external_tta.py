"""medtl evaluate with test-time augmentation (issues 19 and 20): the folds record the views
their thresholds were chosen under, and predictions.csv flags films whose views or fold models
decide otherwise than the ensemble. Fake folds and fake scores, as in test_external.py (no
TensorFlow)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medtl.config import config_from_dict
from medtl.evaluate import external
from medtl.evaluate.cv import run_cv
from medtl.evaluate.external import evaluate_external
from medtl.run.files import read_postprocess
from medtl.run.predictor import MemberScores, TTAMismatchWarning
from tests.evaluate._cv_helpers import FakePredict, FakeTrainer, fake_scores, install_fakes, make_cfg, make_png_set


class _TTATrainer(FakeTrainer):
    """The fake fold trainer, which also says (as the real one does, in metrics.json) which
    predict.tta views its validation scores were averaged over."""

    def __call__(self, cfg, manifest, train_idx, val_idx, fdir: Path, progress: bool):
        out = super().__call__(cfg, manifest, train_idx, val_idx, fdir, progress)
        (fdir / "metrics.json").write_text(json.dumps({"val_tta": cfg.predict.tta}))
        return out


def _views(df: pd.DataFrame, classes, member: int, n_views: int = 5) -> np.ndarray:
    """(V, N, 1) raw scores: the member's fake score, moved a little by each view."""
    base = fake_scores(df, "binary", classes, salt=f"member{member}")
    jitter = np.random.default_rng(member).normal(0, 0.04, (n_views, len(df), 1))
    jitter[0] = 0  # the first view is the film itself
    return np.clip(base[None] + jitter, 0.001, 0.999)


def test_evaluate_flags_films_the_views_or_folds_disagree_on(tmp_path, monkeypatch):
    data = make_png_set(tmp_path / "ds")
    raw_cfg = make_cfg(data, tmp_path / "w", calibration="platt").to_dict()
    raw_cfg["predict"] = {"tta": "shift"}
    cfg = config_from_dict(raw_cfg)
    install_fakes(monkeypatch, _TTATrainer(), FakePredict())
    run = run_cv(cfg, run_dir=tmp_path / "run", progress=False)
    pps = [read_postprocess(run / f"fold_{f}") for f in range(3)]
    assert [pp.tta for pp in pps] == ["shift"] * 3  # recorded from the trainer's metrics.json

    def score(pred, cfg, manifest):
        return manifest, MemberScores.of_views([_views(manifest.df, manifest.classes, i) for i in range(3)]), []

    monkeypatch.setattr(external, "_score", score)
    out = tmp_path / "ext"
    with warnings.catch_warnings():
        warnings.simplefilter("error", TTAMismatchWarning)  # chosen and scored under shift: no warning
        evaluate_external(run, data, out, progress=False)
    got = pd.read_csv(out / "predictions.csv")

    from medtl.data.manifest import load_manifest

    man = load_manifest(cfg)
    each = [_views(man.df, man.classes, i) for i in range(3)]
    members = np.stack([pp.calibrate(e.mean(axis=0)) for pp, e in zip(pps, each)])[:, :, 0]  # (M, N)
    views = np.stack([pp.calibrate(v) for pp, e in zip(pps, each) for v in e])[:, :, 0]  # (M * V, N)
    ens = members.mean(axis=0)
    t = float(np.median([pp.thresholds[0] for pp in pps]))
    np.testing.assert_allclose(got["score"], ens)
    votes = np.concatenate([members, views])
    expected = ((votes >= t) != (ens >= t)).any(axis=0)
    assert got["uncertain"].tolist() == expected.tolist()
    assert 0 < expected.sum() < len(expected)
    fold_only = ((members >= t) != (ens >= t)).any(axis=0)
    assert (expected & ~fold_only).any()  # films only the views flag
    np.testing.assert_allclose(got["spread"], views.std(axis=0))

    # Scored under other views than the thresholds were chosen under: one warning, and still scored.
    with pytest.warns(TTAMismatchWarning, match="predict.tta 'shift'.*predict.tta 'none'"):
        evaluate_external(run, data, tmp_path / "ext_none", progress=False, tta="none")
