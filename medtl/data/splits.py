"""Patient-grouped, stratified splits and the leakage guard.

A group is a patient, widened to every patient that shares a byte-identical file with it: the
same film filed under two ids (public sets have such duplicates) would otherwise sit on both
sides of a split and flatter the test score. Folds come from scikit-learn's
``StratifiedGroupKFold`` (shuffled from the seed), so class ratios stay close to the whole set.

Example:
    >>> folds = patient_kfold(manifest, k=5, seed=42)
    >>> train_idx, test_idx = folds[0]
    >>> assert_no_leakage(manifest.subset(train_idx), manifest.subset(test_idx))
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from medtl.data.cache import file_sha256_many
from medtl.data.manifest import DataError, Manifest


class LeakageError(DataError):
    """A patient or an identical image is on both sides of a split."""


def content_hashes(manifest: Manifest) -> list[str]:
    """SHA-256 of each file's bytes, in row order."""
    try:
        return file_sha256_many(manifest.paths)
    except OSError as exc:
        raise DataError(f"{exc.filename}: cannot read to check for duplicates ({exc.strerror}); fix or remove the row") from None


def leakage_groups(manifest: Manifest) -> np.ndarray:
    """Group id per row: connected components of patients linked by identical file content."""
    patients = manifest.df["patient_id"].astype(str).tolist()
    hashes = content_hashes(manifest)
    parent: dict[str, str] = {}

    def find(a: str) -> str:
        parent.setdefault(a, a)
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    first_owner: dict[str, str] = {}
    for pid, h in zip(patients, hashes):
        owner = first_owner.setdefault(h, pid)
        ra, rb = find(owner), find(pid)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)  # deterministic root: the smallest id
    roots = [find(p) for p in patients]
    _, ids = np.unique(np.asarray(roots, dtype=object).astype(str), return_inverse=True)
    return ids.astype(np.int64)


def patient_kfold(
    manifest: Manifest, k: int, seed: int, *, too_few: Callable[[int], str] | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """k stratified folds that never split a patient (or a duplicated image).

    Args:
        manifest: the images.
        k: number of folds (>= 2).
        seed: shuffles which patients go to which fold.
        too_few: advice for the error on too few patients, given how many there are, instead
            of "use fewer folds" (:func:`patient_holdout` names ``data.val_fraction``).

    Returns:
        k pairs ``(train_idx, test_idx)`` of row positions; every row is in exactly one test fold.

    Raises:
        DataError: fewer patient groups than folds.

    Example:
        >>> for train_idx, test_idx in patient_kfold(manifest, 5, seed=42): ...
    """
    groups = leakage_groups(manifest)
    n_groups = len(np.unique(groups))
    if k < 2:
        raise DataError(f"evaluate.folds: {k} folds; expected at least 2")
    if n_groups < k:
        raise DataError(
            f"{manifest.source}: only {n_groups} patient group(s); {too_few(n_groups)}" if too_few else
            f"{manifest.source}: only {n_groups} patient group(s) for {k} folds; use fewer folds (evaluate.folds) "
            "or more patients"
        )
    y = manifest.strata()
    if manifest.task != "multilabel":
        for c, name in enumerate(manifest.classes):
            n_c = len(np.unique(groups[y == c]))
            if n_c < k:
                raise DataError(
                    f"{manifest.source}: class {name!r} has {n_c} patient group(s); {too_few(n_c)}" if too_few else
                    f"{manifest.source}: class {name!r} has {n_c} patient group(s), fewer than the {k} folds, "
                    "so some folds would have none; use fewer folds (evaluate.folds) or more data"
                )
    sgkf = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=int(seed))
    with warnings.catch_warnings():
        # "The least populated class has only n members": folds then simply lack that class.
        warnings.filterwarnings("ignore", category=UserWarning, module="sklearn")
        folds = [(np.sort(tr), np.sort(te)) for tr, te in sgkf.split(np.zeros(len(y)), y, groups)]
    return folds


def patient_holdout(manifest: Manifest, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One stratified, patient-grouped split with about ``fraction`` of the rows held out.

    The held-out part is the first fold of a ``round(1 / fraction)``-fold split, so its size is
    1/k of the data (0.2 -> 5 folds -> 20%; 0.3 -> 3 folds -> 33%).

    Example:
        >>> train_idx, val_idx = patient_holdout(manifest, 0.2, seed=42)
    """
    if not 0.0 < fraction < 1.0:
        raise DataError(f"data.val_fraction: invalid value {fraction}; expected 0 < x < 1")
    k = max(2, int(round(1.0 / fraction)))

    def advice(n: int) -> str:
        head = f"data.val_fraction {fraction} holds out 1 in {k} patients, so every class needs {k}; "
        if n < 2:
            return head + "a class needs at least 2 patients to be in training and validation; add patients"
        return head + f"set data.val_fraction to {math.ceil(100 / n) / 100} (1 in {n}) or more, or add patients"

    return patient_kfold(manifest, k, seed, too_few=advice)[0]


def assert_no_leakage(a: Manifest, b: Manifest) -> None:
    """Raise :class:`LeakageError` if ``a`` and ``b`` share a patient or identical file content.

    Example:
        >>> assert_no_leakage(manifest.subset(train_idx), manifest.subset(test_idx))
    """
    pa = set(a.df["patient_id"].astype(str))
    pb = set(b.df["patient_id"].astype(str))
    shared = sorted(pa & pb)
    ha = dict(zip(content_hashes(a), a.paths))
    pairs = [(ha[h], p) for h, p in zip(content_hashes(b), b.paths) if h in ha]
    if not shared and not pairs:
        return
    parts = []
    if shared:
        parts.append(f"{len(shared)} patient(s) on both sides: {', '.join(shared)}")
    if pairs:
        parts.append(f"{len(pairs)} identical file pair(s): " + ", ".join(f"{x} == {y}" for x, y in pairs))
    raise LeakageError("split leaks: " + "; ".join(parts) + "; build splits with medtl.data.splits (patient-grouped)")
