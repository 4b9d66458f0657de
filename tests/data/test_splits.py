"""Patient-grouped stratified splits and the leakage guard."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from medtl.data.manifest import DataError, load_manifest
from medtl.data.splits import (
    LeakageError,
    assert_no_leakage,
    leakage_groups,
    patient_holdout,
    patient_kfold,
)
from tests.data._helpers import make_cfg, make_png_dataset


@pytest.fixture
def manifest(tmp_path):
    # 60 patients, 1-3 films each would be nicer; 2 films each keeps it simple; 1:3 positives.
    csv_path = make_png_dataset(tmp_path / "ds", n_patients=60, films=2, pos_every=4, size=(8, 8))
    return load_manifest(make_cfg(csv_path))


def _patients(m, idx):
    return set(m.df["patient_id"].iloc[idx])


def test_kfold_partitions_rows_and_never_splits_a_patient(manifest):
    folds = patient_kfold(manifest, k=5, seed=42)
    assert len(folds) == 5
    all_test = np.concatenate([te for _, te in folds])
    assert sorted(all_test.tolist()) == list(range(len(manifest)))
    for tr, te in folds:
        assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == len(manifest)
        assert not _patients(manifest, tr) & _patients(manifest, te)
        assert_no_leakage(manifest.subset(tr), manifest.subset(te))


def test_kfold_is_stratified(manifest):
    overall = manifest.df["label"].mean()  # 0.25
    for _, te in patient_kfold(manifest, k=5, seed=1):
        assert abs(manifest.df["label"].iloc[te].mean() - overall) <= 0.05


def test_reproducible_from_seed(manifest):
    a = patient_kfold(manifest, 5, seed=7)
    b = patient_kfold(manifest, 5, seed=7)
    c = patient_kfold(manifest, 5, seed=8)
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    assert any(not np.array_equal(x[1], y[1]) for x, y in zip(a, c))


def test_holdout_fraction(manifest):
    tr, va = patient_holdout(manifest, 0.2, seed=3)
    assert len(va) == pytest.approx(0.2 * len(manifest), abs=4)
    assert not _patients(manifest, tr) & _patients(manifest, va)
    tr2, va2 = patient_holdout(manifest, 0.2, seed=3)
    assert np.array_equal(va, va2)


def test_identical_files_of_different_patients_stay_together(tmp_path):
    csv_path = make_png_dataset(tmp_path / "ds", n_patients=30, films=1, pos_every=3, size=(8, 8))
    images = csv_path.parent / "images"
    shutil.copyfile(images / "P000_0.png", images / "P004_0.png")  # same film under two ids
    shutil.copyfile(images / "P004_0.png", images / "P009_0.png")  # and a third, chained
    m = load_manifest(make_cfg(csv_path))
    groups = leakage_groups(m)
    pid = m.df["patient_id"].tolist()
    g = {p: groups[pid.index(p)] for p in ("P000", "P004", "P009", "P001")}
    assert g["P000"] == g["P004"] == g["P009"] != g["P001"]
    assert len(np.unique(groups)) == 28
    for seed in range(5):
        for tr, te in patient_kfold(m, k=5, seed=seed):
            together = {"P000", "P004", "P009"}
            assert together <= _patients(m, tr) or together <= _patients(m, te)


def test_tampered_split_raises_naming_the_patient(manifest):
    tr, te = patient_kfold(manifest, 5, seed=0)[0]
    victim = manifest.df["patient_id"].iloc[te[0]]
    rows = np.flatnonzero(manifest.df["patient_id"].to_numpy() == victim)
    bad_tr = np.union1d(tr, rows[:1])
    bad_te = np.setdiff1d(te, rows[:1])
    with pytest.raises(LeakageError, match=rf"1 patient\(s\) on both sides: {victim}"):
        assert_no_leakage(manifest.subset(bad_tr), manifest.subset(bad_te))


def test_identical_content_across_split_is_leakage(tmp_path):
    csv_path = make_png_dataset(tmp_path / "ds", n_patients=4, films=1, size=(8, 8))
    images = csv_path.parent / "images"
    shutil.copyfile(images / "P000_0.png", images / "P003_0.png")
    m = load_manifest(make_cfg(csv_path))
    with pytest.raises(LeakageError, match=r"1 identical file pair\(s\): .*P000_0.png == .*P003_0.png"):
        assert_no_leakage(m.subset([0, 1]), m.subset([2, 3]))


def test_too_few_patients_for_folds(tmp_path):
    m = load_manifest(make_cfg(make_png_dataset(tmp_path / "ds", n_patients=3, films=2, size=(8, 8))))
    with pytest.raises(DataError, match="only 3 patient group"):
        patient_kfold(m, 5, seed=0)


def test_multilabel_strata(tmp_path):
    csv_path = make_png_dataset(tmp_path / "ds", n_patients=20, films=1, size=(8, 8))
    text = csv_path.read_text().splitlines()
    rows = [text[0] + ",b"] + [line + f",{i % 2}" for i, line in enumerate(text[1:])]
    csv_path.write_text("\n".join(rows) + "\n")
    m = load_manifest(make_cfg(csv_path, task="multilabel", data={"label_column": ["label", "b"]}))
    strata = m.strata()
    t = m.targets()
    assert (strata[t.sum(1) == 0] == 2).all()
    assert (strata[t[:, 0] == 1] == 0).all()  # 'label' is the rarer one (5 vs 10)
    folds = patient_kfold(m, 4, seed=0)
    assert sorted(np.concatenate([te for _, te in folds]).tolist()) == list(range(20))


def test_too_few_patients_in_a_class(tmp_path):
    m = load_manifest(make_cfg(make_png_dataset(tmp_path / "ds", n_patients=12, films=1, pos_every=4, size=(8, 8))))
    with pytest.raises(DataError, match=r"class 'positive' has 3 patient group\(s\), fewer than the 5 folds"):
        patient_kfold(m, 5, seed=0)
    assert len(patient_kfold(m, 3, seed=0)) == 3


def test_too_few_patients_for_the_validation_split_names_val_fraction(tmp_path):
    # `medtl train` and each CV fold hold out data.val_fraction: the fix is that key, not the folds.
    m = load_manifest(make_cfg(make_png_dataset(tmp_path / "ds", n_patients=12, films=1, pos_every=4, size=(8, 8))))
    with pytest.raises(DataError) as err:
        patient_holdout(m, 0.2, seed=0)
    msg = str(err.value)
    assert "class 'positive' has 3 patient group(s)" in msg and "evaluate.folds" not in msg
    assert "data.val_fraction 0.2 holds out 1 in 5 patients" in msg and "set data.val_fraction to 0.34 (1 in 3) or more" in msg
    train_idx, val_idx = patient_holdout(m, 0.34, seed=0)  # 1 in 3: three positive patients suffice
    assert len(train_idx) + len(val_idx) == 12


def test_lazy_package_exports():
    import medtl.data as data

    assert data.patient_kfold is patient_kfold and data.LeakageError is LeakageError
    with pytest.raises(AttributeError):
        data.nothing_here  # noqa: B018
