"""Threshold rules under shift, re-scored on finished shift-proxy runs (issue 19, point 1).

``bench_shift_proxy.py --work DIR`` leaves its training runs in ``DIR/runs`` and its holdout in
``DIR/holdout/labels.csv``. This script scores each run's model on that holdout, clean and under
the proxy's corruptions, and cuts the scores by every threshold rule, each chosen on the run's
own validation predictions (``val_predictions.csv``) only. So all rules are compared on the same
models and the same films, over as many runs (seeds, levers) as are given; a rule that holds
only for some models shows up in the worst case.

Rules: medtl's (``youden``, ``youden-centre``, ``prevalence``, ``fixed:0.5``,
``calibrated:0.5`` with Platt scaling), ``youden-bagged``: the median, in logit space, of
the Youden thresholds of 200 patient-bootstrap resamples of the validation split, and
``youden-tol``: the centre (logit space) of the cuts whose J is within one film of the best
(``max(1/positives, 1/negatives)``). The scores are kept in ``RUN/shift_scores.npz``, so a
second call only re-cuts them.

Prints one JSON line per run and rule, then one per rule over all runs: mean and worst mean
balanced accuracy under shift, mean clean balanced accuracy, and in how many runs the rule beat
``youden``.

Example:
    python benchmarks/bench_shift_rules.py /tmp/bx/full7 /tmp/bx/full42 /tmp/bx/full11
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import expit, logit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_shift_proxy import CORRUPTIONS  # noqa: E402

RULES = ("youden", "youden-centre", "prevalence", "fixed:0.5", "calibrated:0.5", "youden-bagged", "youden-tol")


def bagged_youden(y: np.ndarray, s: np.ndarray, patients: np.ndarray, n_boot: int = 200, seed: int = 0) -> float:
    """Median (in logit space) of the Youden thresholds of patient-bootstrap resamples."""
    from medtl.stats.thresholds import choose_threshold

    rng = np.random.default_rng(seed)
    ids, codes = np.unique(patients, return_inverse=True)
    rows = [np.flatnonzero(codes == i) for i in range(len(ids))]
    cuts = []
    for _ in range(n_boot):
        take = np.concatenate([rows[i] for i in rng.integers(0, len(ids), len(ids))])
        if y[take].all() or not y[take].any():
            continue
        cuts.append(choose_threshold(y[take], s[take], "youden"))
    z = logit(np.clip(np.asarray(cuts), 1e-7, 1 - 1e-7))
    return float(expit(np.median(z)))


def tolerant_youden(y: np.ndarray, s: np.ndarray) -> float:
    """Centre, in logit space, of the cuts whose Youden J is within one film of the best."""
    cand = np.unique(s)
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    sens = np.array([(s[y == 1] >= c).mean() for c in cand])
    spec = np.array([(s[y == 0] < c).mean() for c in cand])
    j = sens + spec - 1
    ok = cand[j >= j.max() - max(1 / n_pos, 1 / n_neg) - 1e-12]
    z = logit(np.clip([ok.min(), ok.max()], 1e-7, 1 - 1e-7))
    return float(expit(z.mean()))


def rule_threshold(rule: str, val: pd.DataFrame, seed: int) -> float:
    """The raw-score threshold of ``rule`` on a run's validation predictions."""
    from medtl.stats.postprocess import PostProcess
    from medtl.stats.thresholds import choose_threshold

    y, s = val["label"].to_numpy().astype(int), val["score"].to_numpy()
    if rule == "youden-tol":
        return tolerant_youden(y, s)
    if rule == "youden-bagged":
        return bagged_youden(y, s, val["patient_id"].astype(str).to_numpy(), seed=seed)
    if rule.startswith("calibrated:"):
        pp = PostProcess.fit("binary", ["negative", "positive"], y, s, rule, "platt", n_boot=0, seed=seed)
        return float(pp.raw_thresholds[0])
    return float(choose_threshold(y, s, rule))


def holdout_sets(run: Path, labels: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(labels, {set name: images}) of the proxy's holdout at the run's own input size."""
    from medtl.config import load_config
    from medtl.data.manifest import load_manifest
    from medtl.data.pipeline import ImagePipeline

    cfg = load_config(run / "config.yaml", [f"data.manifest={labels}"])
    pipe = ImagePipeline(cfg)
    m = pipe.prepare(load_manifest(cfg))
    x = np.concatenate([np.asarray(b) for b in pipe.dataset(m, training=False).map(lambda a, b: a)
                        .as_numpy_iterator()]).astype(np.float32)
    sets = {"clean": x}
    for name, (fn, levels) in CORRUPTIONS.items():
        for sev, level in enumerate(levels, 1):
            sets[f"{name}{sev}"] = fn(x, level).astype(np.float32)
    return m.targets()[:, 0].astype(int), sets


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", nargs="+", type=Path, help="--work folders of bench_shift_proxy.py")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from medtl.tfimport import import_tensorflow

    import_tensorflow()
    from medtl.models.classifier import load_model
    from medtl.run.tta import predict_views, tta_views
    from medtl.stats.metrics import binary_metrics

    by_rule: dict[str, list[tuple[float, float]]] = {r: [] for r in RULES}
    for work in args.work:
        for run in sorted(p for p in (work / "runs").iterdir() if (p / "val_predictions.csv").is_file()):
            cached = run / "shift_scores.npz"
            if cached.is_file():
                with np.load(cached) as f:
                    y, scores = f["y"], {k: f[k] for k in f.files if k != "y"}
            else:
                y, sets = holdout_sets(run, work / "holdout" / "labels.csv")
                model = load_model(run / "model.keras")
                scores = {k: np.concatenate([predict_views(model, v[i:i + 64], tta_views("none"))[:, 0]
                                             for i in range(0, len(v), 64)]) for k, v in sets.items()}
                np.savez(cached, y=y, **scores)
            val = pd.read_csv(run / "val_predictions.csv")
            for rule in RULES:
                t = rule_threshold(rule, val, args.seed)
                bal = {k: float(binary_metrics(y, s, t)["balanced_accuracy"]) for k, s in scores.items()}
                shift = float(np.mean([v for k, v in bal.items() if k != "clean"]))
                by_rule[rule].append((shift, bal["clean"]))
                print(json.dumps({"run": f"{work.name}/{run.name}", "rule": rule, "threshold": round(t, 4),
                                  "clean_balanced_accuracy": round(bal["clean"], 4),
                                  "shift_mean_balanced_accuracy": round(shift, 4)}), flush=True)
    base = [s for s, _ in by_rule["youden"]]
    for rule, res in by_rule.items():
        shift = [s for s, _ in res]
        print(json.dumps({"rule": rule, "runs": len(res), "mean_shift_balanced_accuracy": round(float(np.mean(shift)), 4),
                          "worst_shift_balanced_accuracy": round(float(np.min(shift)), 4),
                          "mean_clean_balanced_accuracy": round(float(np.mean([c for _, c in res])), 4),
                          "runs_better_than_youden": int(sum(a > b + 1e-9 for a, b in zip(shift, base)))}),
              flush=True)


if __name__ == "__main__":
    main()
