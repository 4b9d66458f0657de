"""How unlike the training films new films are, in the model's pooled feature space.

At training time :func:`build_summary` keeps a compact summary of the training films' pooled
features (at most a few hundred vectors as float16, a standardise + PCA projection, and each
kept film's own k-nearest-neighbour distance to the other kept films, leaving its patient
out); no pixels, no paths, no patient ids (patients become anonymous integers). For new films
:func:`assess_shift` gives

* the **domain AUC**: how well a cross-validated logistic regression tells the new films from
  the training films (0.5: indistinguishable; 1.0: a different source), with a DeLong interval;
* a per-film **OOD score**: the film's k-NN distance to the training films as a percentile of
  the training films' own; a film above the 95th percentile is out of distribution (``ood``);

and :func:`shift_warning` turns them into one line, or none. The cuts (``AUC_CUT``,
``OOD_SHARE_CUT``) were chosen by measuring false alarms on patient-grouped holdouts of one
source (benchmarks/bench_shift.py). Works without labels. numpy + scikit-learn only.

Example:
    >>> s = build_summary(train_features, groups=train_patients, seed=0)
    >>> r = assess_shift(s, new_features, seed=0)
    >>> r.domain_auc, r.share_ood, shift_warning(r)
    (0.97, 0.81, 'these films differ from the training films: domain AUC 0.97 ...')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from medtl.stats.compare import delong_ci

__all__ = ["FeatureSummary", "ShiftResult", "build_summary", "assess_shift", "ood_scores", "shift_warning",
           "AUC_CUT", "OOD_SHARE_CUT", "OOD_PERCENTILE", "MIN_FILMS"]

SUMMARY_FORMAT = 1
MAX_VECTORS = 300  # kept training films: enough for a stable 95th percentile, ~0.4 MB at 1280-d float16
N_COMPONENTS = 32  # PCA dimensions for distances and the domain classifier (small n: few dimensions)
K = 5  # neighbours of the k-NN distance
OOD_PERCENTILE = 95.0  # a film beyond this percentile of the training films' own distances is OOD
# Chosen on benchmarks/bench_shift.py (MobileNetV2 fine-tuned on 700 Kermany films, 20 patient-grouped
# holdouts of 150 unseen films): the lower bound reached at most 0.54 and the OOD share at most 2.6%
# (median 0.7%: the PCA fitted on the kept films makes new films look slightly nearer, so the 95th
# percentile flags fewer than 5% of same-source films); a 25% admixture of adult films gave 0.69
# and 21%, synthetic films 1.00 and 99%.
AUC_CUT = 0.65  # warn when the domain AUC's 95% lower bound exceeds this
OOD_SHARE_CUT = 0.20  # ... or when more than this share of films is OOD
MIN_FILMS = 20  # fewer new films: the figures are given but called unreliable, never a warning


@dataclass
class FeatureSummary:
    """A compact summary of training films in a model's pooled feature space.

    Attributes:
        vectors: (m, d) float16 pooled features of up to ``MAX_VECTORS`` training films.
        groups: (m,) int anonymous patient codes of those films (films of one patient share one).
        mean, scale: (d,) standardisation fitted on the vectors.
        components: (c, d) PCA directions of the standardised vectors.
        ref_knn: (m,) each vector's mean distance to its k nearest vectors of other patients.
        k: neighbours used.
        n_source: films the summary was drawn from.
    """

    vectors: np.ndarray
    groups: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    components: np.ndarray
    ref_knn: np.ndarray
    k: int = K
    n_source: int = 0

    def project(self, x: np.ndarray) -> np.ndarray:
        """(n, c) coordinates of features ``x`` (n, d) in the summary's PCA space."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"features of shape {x.shape} do not match the summary's {self.mean.shape[0]} "
                             "dimensions; were they computed by the same model?")
        return ((x - self.mean) / self.scale) @ self.components.T

    def reference(self) -> np.ndarray:
        """The kept training films in PCA space."""
        return self.project(self.vectors.astype(np.float64))

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays for an ``.npz`` file (see :meth:`from_arrays`)."""
        return {"format": np.array(SUMMARY_FORMAT), "vectors": self.vectors, "groups": self.groups.astype(np.int32),
                "mean": self.mean.astype(np.float32), "scale": self.scale.astype(np.float32),
                "components": self.components.astype(np.float32), "ref_knn": self.ref_knn.astype(np.float32),
                "k": np.array(self.k), "n_source": np.array(self.n_source)}

    @classmethod
    def from_arrays(cls, a: Any) -> "FeatureSummary":
        """The summary saved by :meth:`to_arrays` (e.g. ``np.load(file)``)."""
        if int(a["format"]) != SUMMARY_FORMAT:
            raise ValueError(f"feature summary format {int(a['format'])} is unknown to this medtl version")
        f64 = {n: np.asarray(a[n], dtype=np.float64) for n in ("mean", "scale", "components", "ref_knn")}
        return cls(np.asarray(a["vectors"], dtype=np.float16), np.asarray(a["groups"], dtype=np.int64), **f64,
                   k=int(a["k"]), n_source=int(a["n_source"]))


@dataclass
class ShiftResult:
    """:func:`assess_shift`'s figures.

    Attributes:
        domain_auc, domain_auc_ci: cross-validated AUC of telling new films from training films,
            and its 95% DeLong interval [low, high] (None when it could not be computed).
        share_ood: share of new films beyond the training films' ``OOD_PERCENTILE``th k-NN distance.
        ood_percentile: (n,) each film's k-NN distance as a percentile of the training films' own.
        ood: (n,) bool, ``ood_percentile > OOD_PERCENTILE``.
        n, n_reference: new films and training films compared.
        reliable: False with fewer than ``MIN_FILMS`` new films (no warning is then given).
    """

    domain_auc: float | None
    domain_auc_ci: list[float | None]
    share_ood: float
    ood_percentile: np.ndarray
    ood: np.ndarray
    n: int
    n_reference: int
    reliable: bool
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The figures for metrics.json (no per-film arrays)."""
        return {"domain_auc": self.domain_auc, "domain_auc_ci": list(self.domain_auc_ci),
                "share_ood": self.share_ood, "ood_cut_percentile": OOD_PERCENTILE, "n": self.n,
                "n_reference": self.n_reference, "reliable": self.reliable, "warning": shift_warning(self)}


def _knn_mean(d: np.ndarray, k: int) -> np.ndarray:
    """Mean of each row's ``k`` smallest finite distances."""
    k = max(1, min(k, d.shape[1]))
    return np.sort(d, axis=1)[:, :k].mean(axis=1)


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(sq, 0.0))


def build_summary(features: np.ndarray, groups: Sequence[Any] | None = None, max_vectors: int = MAX_VECTORS,
                  n_components: int = N_COMPONENTS, k: int = K, seed: int = 0) -> FeatureSummary:
    """Summarise training films' pooled features for later shift measures.

    Films are kept patient by patient (one film of each patient before a second of any), so the
    summary spreads over patients; each kept film's reference distance leaves its own
    patient's films out, as a new patient's film has no sibling among the training films.

    Args:
        features: (n, d) pooled features of training films (n >= 3).
        groups: patient of each film (default: each film its own patient); stored only as
            anonymous integers.
        max_vectors: most films kept.
        n_components: PCA dimensions (at most m - 1 and d).
        k: neighbours of the k-NN distance.
        seed: which films are kept.

    Example:
        >>> s = build_summary(np.random.default_rng(0).normal(size=(400, 64)), seed=0)
        >>> s.vectors.shape, s.ref_knn.shape
        ((300, 64), (300,))
    """
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2 or len(x) < 3:
        raise ValueError(f"build_summary: need (n >= 3, d) pooled features, got shape {x.shape}")
    g = np.arange(len(x)) if groups is None else np.unique(np.asarray(groups, dtype=str), return_inverse=True)[1]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    # Rank of each film within its patient (in random order): first films of every patient first.
    rank = np.zeros(len(x), dtype=np.int64)
    seen: dict[int, int] = {}
    for i in order:
        rank[i] = seen.get(int(g[i]), 0)
        seen[int(g[i])] = rank[i] + 1
    keep = order[np.argsort(rank[order], kind="stable")][:max_vectors]
    vec = x[keep].astype(np.float16)
    groups_kept = np.unique(g[keep], return_inverse=True)[1]
    v = vec.astype(np.float64)  # the stored precision, so later distances match these
    mean, scale = v.mean(0), v.std(0)
    scale = np.where(scale > 1e-8 * max(1.0, float(scale.max(initial=0.0))), scale, 1.0)  # constant features
    z = (v - mean) / scale
    c = max(1, min(n_components, len(v) - 1, v.shape[1]))
    components = np.linalg.svd(z, full_matrices=False)[2][:c]
    s = FeatureSummary(vec, groups_kept, mean, scale, components, np.zeros(len(v)), k=k, n_source=len(x))
    ref = s.reference()
    d = _distances(ref, ref)
    d[groups_kept[:, None] == groups_kept[None, :]] = np.inf  # leave the film's own patient out
    if np.isinf(d).all(axis=1).any():
        raise ValueError("build_summary: need films of at least two patients")
    s.ref_knn = _knn_mean(d, k)
    return s


def ood_scores(summary: FeatureSummary, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(k-NN distance, its percentile among the training films' own distances) per new film.

    Example:
        >>> dist, pct = ood_scores(summary, new_features)
        >>> (pct > OOD_PERCENTILE).mean()   # share of films outside the training range
    """
    d = _knn_mean(_distances(summary.project(features), summary.reference()), summary.k)
    ref = np.sort(summary.ref_knn)
    pct = 100.0 * np.searchsorted(ref, d, side="right") / len(ref)
    return d, pct


def _domain_auc(ref: np.ndarray, ref_groups: np.ndarray, new: np.ndarray, new_groups: np.ndarray,
                seed: int) -> tuple[float | None, list[float | None]]:
    """Cross-validated (patient-grouped, stratified 5-fold) logistic-regression AUC of new vs
    training films, on equal numbers of each (the bigger side subsampled)."""
    from sklearn.linear_model import LogisticRegression  # why: scikit-learn is heavy; load only when measured
    from sklearn.model_selection import StratifiedGroupKFold  # why: as above

    rng = np.random.default_rng(seed)
    m = min(len(ref), len(new))
    ri = rng.choice(len(ref), m, replace=False)
    ni = rng.choice(len(new), m, replace=False)
    x = np.vstack([ref[ri], new[ni]])
    y = np.r_[np.zeros(m), np.ones(m)]
    # Patients never straddle folds: a patient's sibling films would make any set look separable.
    groups = np.r_[ref_groups[ri], new_groups[ni] + ref_groups.max() + 1]
    n_splits = min(5, len(np.unique(groups[y == 0])), len(np.unique(groups[y == 1])))
    if n_splits < 2:
        return None, [None, None]
    oof = np.zeros(len(y))
    for tr, te in StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed).split(x, y, groups):
        if len(np.unique(y[tr])) < 2:
            return None, [None, None]
        clf = LogisticRegression(C=0.1, max_iter=2000).fit(x[tr], y[tr])
        oof[te] = clf.decision_function(x[te])
    auc, low, high = delong_ci(y, oof)
    return float(auc), [low, high]


def assess_shift(summary: FeatureSummary, features: np.ndarray, groups: Sequence[Any] | None = None,
                 seed: int = 0) -> ShiftResult:
    """Domain AUC and per-film OOD scores of new films against a training summary.

    Args:
        summary: from :func:`build_summary` at training time.
        features: (n, d) pooled features of the new films, by the same model.
        groups: patient of each new film (default: each film its own patient).
        seed: subsampling and fold assignment.

    Example:
        >>> r = assess_shift(summary, new_features, seed=0)
        >>> r.domain_auc, r.share_ood, r.ood[:3]
    """
    x = np.asarray(features, dtype=np.float64)
    n = len(x)
    if n == 0:
        return ShiftResult(None, [None, None], float("nan"), np.zeros(0), np.zeros(0, bool), 0,
                           len(summary.vectors), False, ["no films to compare"])
    _, pct = ood_scores(summary, x)
    ood = pct > OOD_PERCENTILE
    g = np.arange(n) if groups is None else np.unique(np.asarray(groups, dtype=str), return_inverse=True)[1]
    auc, ci = _domain_auc(summary.reference(), summary.groups, summary.project(x), g, seed)
    notes = []
    reliable = n >= MIN_FILMS and len(summary.vectors) >= MIN_FILMS
    if not reliable:
        notes.append(f"only {min(n, len(summary.vectors))} films on one side: the shift measure is unreliable "
                     f"below {MIN_FILMS}")
    return ShiftResult(auc, ci, float(ood.mean()), pct, ood, n, len(summary.vectors), reliable, notes)


def shift_warning(r: ShiftResult) -> str | None:
    """The one-line warning for a shift result, or None when the films look like the training films.

    Warns when the domain AUC's lower 95% bound exceeds ``AUC_CUT`` or more than
    ``OOD_SHARE_CUT`` of the films are OOD; never with fewer than ``MIN_FILMS`` films.

    Example:
        >>> shift_warning(assess_shift(summary, other_hospital_features))
        'these films differ from the training films: domain AUC 0.97 [0.95, 0.99]; 81% of films lie ...'
    """
    if not r.reliable:
        return None
    low = r.domain_auc_ci[0]
    if not ((low is not None and low > AUC_CUT) or r.share_ood > OOD_SHARE_CUT):
        return None
    auc = "-" if r.domain_auc is None else f"{r.domain_auc:.2f} [{r.domain_auc_ci[0]:.2f}, {r.domain_auc_ci[1]:.2f}]"
    return (f"these films differ from the training films: domain AUC {auc}; {100 * r.share_ood:.0f}% of films lie "
            f"outside the training range (k-NN distance above the training films' {OOD_PERCENTILE:.0f}th "
            "percentile); figures measured on these films may not hold")
