"""Which threshold rule survives shift? Synthetic first evidence for issue 19's default.

Validation scores: logits from two well-separated Gaussians (negatives N(-d/2, 1), positives
N(+d/2, 1)) at a validation prevalence, as a model gives its own small validation split. Test
scores: the same model on an external site, with the class means moved closer (by ``shrink``)
and the prevalence changed. Each rule is chosen on the validation scores (calibrated with Platt
on them, as ``evaluate.calibration: platt`` does, for ``calibrated:0.5``) and applied to the
test scores; mean balanced accuracy and accuracy over many seeds are printed, one JSON line
per rule. Only numpy/scipy and medtl.stats are used: seconds on a CPU.

``--folds K`` compares, for the deployed CV ensemble, the two places a threshold can come from
(``evaluate.ensemble_threshold``): ``median`` of K thresholds, each chosen on one fold's
validation split of ``--n-val`` films, and ``pooled``, one threshold chosen on the pooled
out-of-fold scores (K test folds: ``n-val / 0.16`` films in all, since a fold's validation
split is 20% of its 80% training share). Each fold model gets its own logit offset
(``--fold-sd``), as fold models differ, and the ensemble's test score is the mean of the K
models' probabilities. On top of its offset each model's score of a film gets its own noise
(logit sd 0.3, fixed here), so the members disagree film by film as fold models do.

Usage:
    python benchmarks/bench_thresholds.py [--seeds 200] [--n-val 60] [--n-test 2000]
    python benchmarks/bench_thresholds.py --folds 5 [--fold-sd 0.3]
"""

from __future__ import annotations

import argparse
import json
import warnings

import numpy as np
from scipy.special import expit

from medtl.stats import PlattScaling, fit_platt
from medtl.stats.postprocess import _inverse_at
from medtl.stats.thresholds import choose_threshold

RULES = ("youden", "youden-centre", "prevalence", "calibrated:0.5", "fixed:0.5", "sensitivity:0.9")


def _scores(rng: np.random.Generator, n: int, prevalence: float, d: float, shift: float) -> tuple:
    y = (rng.random(n) < prevalence).astype(int)
    z = rng.normal(size=n) + np.where(y == 1, d / 2, -d / 2) + shift
    return y, expit(z)


def _threshold(rule: str, y: np.ndarray, s: np.ndarray) -> float:
    if rule.startswith("calibrated:"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cal: PlattScaling = fit_platt(y, s)
        if cal.slope <= 0:
            return 0.5
        return _inverse_at(cal.to_dict(), float(rule.split(":")[1]))
    return choose_threshold(y, s, rule)


def _fold_scores(rng: np.random.Generator, n: int, prevalence: float, d: float, offsets: np.ndarray,
                 shift: float) -> tuple:
    """Each of the K fold models' scores of the same n films (its own logit offset)."""
    y = (rng.random(n) < prevalence).astype(int)
    z = rng.normal(size=n) + np.where(y == 1, d / 2, -d / 2) + shift
    member_noise = rng.normal(scale=0.3, size=(len(offsets), n))  # models disagree film by film
    return y, expit(z[None, :] + offsets[:, None] + member_noise)


def _folds(a: argparse.Namespace) -> None:
    n_oof = int(round(a.n_val / 0.16))
    out: dict[str, dict[str, dict[str, list[float]]]] = {}
    for seed in range(a.seeds):
        rng = np.random.default_rng(seed)
        offsets = rng.normal(scale=a.fold_sd, size=a.folds)
        yt, st_members = _fold_scores(rng, a.n_test, a.prev_test, a.d_val * a.shrink, offsets, a.offset)
        st = st_members.mean(axis=0)
        # each fold: its own validation split (scored by its own model) and its test fold
        val = [_fold_scores(rng, a.n_val, a.prev_val, a.d_val, offsets[[k]], 0.0) for k in range(a.folds)]
        oof = [_fold_scores(rng, n_oof // a.folds, a.prev_val, a.d_val, offsets[[k]], 0.0) for k in range(a.folds)]
        if any(yv.all() or not yv.any() for yv, _ in val):
            continue
        y_oof = np.concatenate([y for y, _ in oof])
        s_oof = np.concatenate([s[0] for _, s in oof])
        for rule in RULES:
            cuts = {"median": float(np.median([_threshold(rule, yv, sv[0]) for yv, sv in val])),
                    "pooled": _threshold(rule, y_oof, s_oof)}
            for where, t in cuts.items():
                pred = st >= t
                sens, spec = pred[yt == 1].mean(), (~pred[yt == 0]).mean()
                r = out.setdefault(rule, {}).setdefault(where, {"bacc": [], "acc": [], "t": []})
                r["bacc"].append((sens + spec) / 2)
                r["acc"].append(float((pred == yt).mean()))
                r["t"].append(t)
    for rule, by in out.items():
        for where, r in by.items():
            print(json.dumps({"rule": rule, "ensemble_threshold": where,
                              "mean_bacc": round(float(np.mean(r["bacc"])), 4),
                              "mean_acc": round(float(np.mean(r["acc"])), 4),
                              "sd_bacc": round(float(np.std(r["bacc"])), 4),
                              "sd_threshold": round(float(np.std(r["t"])), 4),
                              "median_threshold": round(float(np.median(r["t"])), 4), "n": len(r["bacc"]),
                              "n_oof": n_oof}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=200)
    ap.add_argument("--n-val", type=int, default=60)
    ap.add_argument("--n-test", type=int, default=2000)
    ap.add_argument("--d-val", type=float, default=4.0, help="validation class separation (logits)")
    ap.add_argument("--shrink", type=float, default=0.5, help="test separation = d_val * shrink")
    ap.add_argument("--prev-val", type=float, default=0.25)
    ap.add_argument("--prev-test", type=float, default=0.45)
    ap.add_argument("--offset", type=float, default=0.0, help="logit offset of all test scores")
    ap.add_argument("--folds", type=int, default=0, help="> 1: compare median-of-folds with pooled out-of-fold")
    ap.add_argument("--fold-sd", type=float, default=0.3, help="sd of each fold model's logit offset")
    a = ap.parse_args()
    if a.folds > 1:
        _folds(a)
        return
    res: dict[str, dict[str, list[float]]] = {r: {"bacc": [], "acc": [], "t": []} for r in RULES}
    for seed in range(a.seeds):
        rng = np.random.default_rng(seed)
        yv, sv = _scores(rng, a.n_val, a.prev_val, a.d_val, 0.0)
        yt, st = _scores(rng, a.n_test, a.prev_test, a.d_val * a.shrink, a.offset)
        if yv.all() or not yv.any():
            continue
        for rule in RULES:
            t = _threshold(rule, yv, sv)
            pred = st >= t
            sens, spec = pred[yt == 1].mean(), (~pred[yt == 0]).mean()
            res[rule]["bacc"].append((sens + spec) / 2)
            res[rule]["acc"].append(float((pred == yt).mean()))
            res[rule]["t"].append(t)
    for rule, r in res.items():
        print(json.dumps({"rule": rule, "mean_bacc": round(float(np.mean(r["bacc"])), 4),
                          "mean_acc": round(float(np.mean(r["acc"])), 4),
                          "sd_bacc": round(float(np.std(r["bacc"])), 4),
                          "median_threshold": round(float(np.median(r["t"])), 4), "n": len(r["bacc"]),
                          "settings": vars(a)}))


if __name__ == "__main__":
    main()
