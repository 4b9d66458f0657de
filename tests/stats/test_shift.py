"""Tests of medtl/stats/shift.py with known answers: identical sources do not warn, disjoint
clusters do, and OOD percentiles of hand-placed points."""

from __future__ import annotations

import numpy as np
import pytest

from medtl.stats.shift import (
    OOD_PERCENTILE, FeatureSummary, assess_shift, build_summary, ood_scores, shift_warning,
)


def _gauss(n: int, d: int = 16, shift: float = 0.0, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)) + shift


def test_summary_keeps_at_most_max_vectors_one_patient_first_and_no_paths():
    x = _gauss(400)
    groups = [f"p{i // 4}" for i in range(400)]  # 100 patients, 4 films each
    s = build_summary(x, groups, max_vectors=150, seed=1)
    assert s.vectors.shape == (150, 16) and s.vectors.dtype == np.float16
    assert s.ref_knn.shape == (150,) and s.n_source == 400
    # every patient's first film comes before any second film: 100 patients, 150 films
    assert len(np.unique(s.groups)) == 100
    arrays = s.to_arrays()
    assert all(a.dtype.kind in "fiu" for a in arrays.values())  # numbers only: no paths, no ids
    back = FeatureSummary.from_arrays(arrays)
    assert np.allclose(back.ref_knn, s.ref_knn, rtol=1e-5) and np.array_equal(back.groups, s.groups)


def test_identical_source_does_not_warn():
    s = build_summary(_gauss(300, seed=0), seed=0)
    r = assess_shift(s, _gauss(200, seed=1), seed=0)
    assert 0.35 < r.domain_auc < 0.65
    assert r.share_ood < 0.15
    assert shift_warning(r) is None


def test_disjoint_clusters_warn_with_the_figures():
    s = build_summary(_gauss(300, seed=0), seed=0)
    r = assess_shift(s, _gauss(100, shift=3.0, seed=2), seed=0)
    assert r.domain_auc > 0.99 and r.domain_auc_ci[0] > 0.95
    assert r.share_ood == 1.0 and r.ood.all()
    w = shift_warning(r)
    assert w is not None and "domain AUC 1.00" in w and "100% of films" in w


def test_ood_percentiles_of_known_points():
    s = build_summary(_gauss(300, d=4, seed=0), k=3, seed=0)
    centre = s.mean[None, :]  # the training mean: nearer its neighbours than most training films
    far = s.mean[None, :] + 100.0
    _, pct = ood_scores(s, np.vstack([centre, far]))
    assert pct[0] < 30.0
    assert pct[1] == 100.0
    # a training film's percentile is the rank of its own reference distance (it is its own neighbour)
    d, _ = ood_scores(s, s.vectors.astype(np.float64)[:1])
    assert d[0] <= s.ref_knn[0] + 1e-9


def test_few_films_are_called_unreliable_and_never_warn():
    s = build_summary(_gauss(300, seed=0), seed=0)
    r = assess_shift(s, _gauss(10, shift=5.0, seed=3), seed=0)
    assert not r.reliable and r.share_ood == 1.0
    assert shift_warning(r) is None and "unreliable" in r.notes[0]


def test_feature_dimension_mismatch_is_refused():
    s = build_summary(_gauss(50, seed=0), seed=0)
    with pytest.raises(ValueError, match="same model"):
        ood_scores(s, np.zeros((3, 7)))
