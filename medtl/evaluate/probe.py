"""A linear probe: the baseline that says whether fine-tuning was worth it on your data.

A scikit-learn logistic regression (standardised features, ``class_weight="balanced"``, C
chosen by an inner patient-grouped cross-validation on ROC AUC) on the pooled features of the
pretrained backbone, untouched by training (:mod:`medtl.models.pooled`). In cross-validation
(``evaluate.linear_probe: true``) each fold fits it on its training and validation films and
scores its test films, beside the fine-tuned model: when the probe is as good, fine-tuning
bought nothing; when it is better, fine-tuning hurt (overfitting, or negative transfer).

Binary tasks only (one score column).

Example:
    >>> r = linear_probe(x_train, y_train, x_test, y_test)
    >>> r["roc_auc"], r["C"]
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import pandas as pd

from medtl.stats.metrics import roc_auc

__all__ = ["fit_probe", "linear_probe", "backbone_features", "fold_probe", "probe_summary", "format_probe", "PROBE_COLUMN"]

PROBE_COLUMN = "probe_score"
"""The column of a fold's test_predictions.csv holding the probe's score."""
_CS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # strong regularisation first: 1000+ features, few hundred films


def fit_probe(x: np.ndarray, y: np.ndarray, groups: Sequence[Any] | None = None, seed: int = 0,
              cs: Sequence[float] = _CS, inner_folds: int = 5):
    """Fit the probe: scaler + balanced logistic regression, C by inner cross-validation.

    Args:
        x: features (N, D).
        y: 0/1 labels (N,).
        groups: patient of each row; the inner folds keep a patient's films together.
        seed: seeds the inner folds.
        cs: the C values tried.
        inner_folds: inner folds (fewer when a class has fewer patients).

    Returns:
        A fitted scikit-learn estimator (``predict_proba``), with ``best_params_``.

    Example:
        >>> est = fit_probe(np.random.randn(40, 8), np.arange(40) % 2)
        >>> est.predict_proba(np.zeros((1, 8))).shape
        (1, 2)
    """
    from sklearn.linear_model import LogisticRegression  # why: scikit-learn loads only when a probe is fitted
    from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold  # why: as above
    from sklearn.pipeline import make_pipeline  # why: as above
    from sklearn.preprocessing import StandardScaler  # why: as above

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y).astype(int).ravel()
    g = np.arange(len(y)) if groups is None else pd.factorize(np.asarray(groups, dtype=object))[0]
    rare = min(len(np.unique(g[y == c])) for c in (0, 1))
    if rare < 2:
        raise ValueError(f"linear probe: a class has {rare} patient(s) in the training films; it needs 2 or more")
    est = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=2000))
    cv = StratifiedGroupKFold(n_splits=min(inner_folds, rare), shuffle=True, random_state=seed)
    search = GridSearchCV(est, {"logisticregression__C": list(cs)}, scoring="roc_auc", cv=cv, refit=True)
    return search.fit(x, y, groups=g)


def linear_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray | None = None,
                 groups: Sequence[Any] | None = None, seed: int = 0) -> dict[str, Any]:
    """Fit the probe on the training features and score the test features.

    Returns:
        ``scores`` (test, positive-class probability), ``roc_auc`` (None without ``y_test`` or
        with one class), ``C``, ``inner_cv_roc_auc``, ``n_train``, ``n_test``, ``seconds``.

    Example:
        >>> rng = np.random.default_rng(0); y = np.arange(100) % 2
        >>> x = rng.normal(size=(100, 5)) + 3 * y[:, None]
        >>> linear_probe(x[:60], y[:60], x[60:], y[60:])["roc_auc"]
        1.0
    """
    t0 = time.perf_counter()
    est = fit_probe(x_train, y_train, groups=groups, seed=seed)
    scores = est.predict_proba(np.asarray(x_test, dtype=np.float64))[:, 1]
    auc = None
    if y_test is not None and len(np.unique(y_test)) == 2:
        auc = float(roc_auc(np.asarray(y_test).astype(int).ravel(), scores))
    return {"scores": scores, "roc_auc": auc, "C": float(est.best_params_["logisticregression__C"]),
            "inner_cv_roc_auc": float(est.best_score_), "n_train": int(len(x_train)), "n_test": int(len(x_test)),
            "seconds": round(time.perf_counter() - t0, 2)}


def backbone_features(cfg, manifests: Sequence[Any]) -> list[np.ndarray]:
    """Pooled features (N, D) of each prepared manifest under the pretrained backbone of ``cfg``
    (``model.backbone`` with ``model.weights``, untrained head), decoded as training decodes them.

    Example:
        >>> f_train, f_test = backbone_features(cfg, [train_m, test_m])
    """
    import keras  # why: loads TensorFlow; medtl.evaluate imports without it

    from medtl.data.pipeline import ImagePipeline  # why: tf.data; only when a probe is asked for
    from medtl.models.classifier import build_model  # why: Keras; as above
    from medtl.models.pooled import pooled_tensor  # why: Keras; as above

    n_out = 1 if cfg.task == "binary" else 2
    model = build_model(cfg, n_outputs=n_out)
    extractor = keras.Model(model.inputs, pooled_tensor(model))
    pipe = ImagePipeline(cfg)
    out = []
    for m in manifests:
        ds = pipe.dataset(m, training=False).map(lambda x, y: x)
        out.append(np.asarray(extractor.predict(ds, verbose=0), dtype=np.float32))
    return out


def fold_probe(cfg, train_m, test_m) -> dict[str, Any]:
    """The probe of one CV fold: fit on the fold's training+validation films (prepared manifest
    ``train_m``), score its prepared test films ``test_m``; see :func:`linear_probe`.

    Example:
        >>> r = fold_probe(cfg, manifest.subset(train_idx), used_test)
    """
    t0 = time.perf_counter()
    f_train, f_test = backbone_features(cfg, [train_m, test_m])
    r = linear_probe(f_train, train_m.targets()[:, 0], f_test, test_m.targets()[:, 0],
                     groups=train_m.df["patient_id"].astype(str).to_numpy(dtype=object), seed=cfg.seed)
    r["seconds"] = round(time.perf_counter() - t0, 2)  # features and fit: the probe's whole cost
    r["features"] = int(f_train.shape[1])
    return r


def probe_summary(oof: pd.DataFrame, score: str = "score") -> dict[str, Any] | None:
    """Pooled and per-fold ROC AUC of the probe beside the fine-tuned model, from out-of-fold
    predictions with ``label``, ``fold``, ``score`` and :data:`PROBE_COLUMN`; None without it.

    Example:
        >>> probe_summary(oof)["pooled"]
        {'fine_tuned_roc_auc': 0.97, 'probe_roc_auc': 0.95}
    """
    if PROBE_COLUMN not in oof.columns or "label" not in oof.columns or oof[PROBE_COLUMN].isna().any():
        return None
    y = oof["label"].to_numpy().astype(int)

    def pair(df: pd.DataFrame) -> dict[str, float | None]:
        yy = df["label"].to_numpy().astype(int)
        if len(np.unique(yy)) < 2:
            return {"fine_tuned_roc_auc": None, "probe_roc_auc": None}
        return {"fine_tuned_roc_auc": float(roc_auc(yy, df[score].to_numpy(float))),
                "probe_roc_auc": float(roc_auc(yy, df[PROBE_COLUMN].to_numpy(float)))}

    return {"pooled": pair(oof), "per_fold": {str(f): pair(d) for f, d in oof.groupby("fold")},
            "n": int(len(y)), "model": "logistic regression (balanced, C by inner CV) on pretrained pooled features"}


def format_probe(block: dict[str, Any]) -> str:
    """The console line: ``fine-tuning vs linear probe: AUC x vs y``.

    Example:
        >>> format_probe({"fine_tuned_roc_auc": 0.97, "probe_roc_auc": 0.95})
        'fine-tuning vs linear probe: AUC 0.970 vs 0.950'
    """
    a, b = block.get("fine_tuned_roc_auc"), block.get("probe_roc_auc")
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    return f"fine-tuning vs linear probe: AUC {fmt(a)} vs {fmt(b)}"
