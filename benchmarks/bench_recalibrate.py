"""Does refitting the threshold on K local patients pay off on a shifted site? (issue 20.3)

A run's scores are simulated, no training: logits from two Gaussians (negatives N(-d/2, 1),
positives N(+d/2, 1)); the run's threshold is Youden's on its own validation split (``--n-val``
films at 30% prevalence). The new site moves every logit by ``--shift`` (films that look more
diseased to the model, e.g. another scanner) at ``--prevalence``, with 1-3 films per patient.
For each seed and K, :func:`medtl.stats.recalibrate.recalibrate_site` refits Youden's threshold
on K site patients (as ``medtl evaluate RUN DATA --recalibrate K``); balanced accuracy on the
other patients is given with the run's threshold (before) and the site's (after). One JSON line
per K: means, 5th/95th percentiles over seeds and the share of seeds where after beats before.
Only numpy/pandas/scipy and medtl.stats: seconds on a CPU.

Usage:
    python benchmarks/bench_recalibrate.py [--seeds 200] [--patients 200] [--shift 1.0]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from scipy.special import expit

from medtl.stats.metrics import binary_metrics
from medtl.stats.recalibrate import recalibrate_site
from medtl.stats.thresholds import choose_threshold


def _site(rng: np.random.Generator, n_patients: int, prevalence: float, d: float, shift: float):
    """(labels, scores, patient ids) of a site; a patient's films share the label."""
    y_pat = (rng.random(n_patients) < prevalence).astype(int)
    n_films = rng.integers(1, 4, n_patients)
    y = np.repeat(y_pat, n_films)
    g = np.repeat(np.arange(n_patients), n_films).astype(str)
    z = rng.normal(size=len(y)) + np.where(y == 1, d / 2, -d / 2) + shift
    return y, expit(z), g


def _bacc(y: np.ndarray, s: np.ndarray, t: float) -> float:
    return float(binary_metrics(y, s, threshold=t)["balanced_accuracy"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=200)
    ap.add_argument("--patients", type=int, default=200, help="labelled patients at the site")
    ap.add_argument("--n-val", type=int, default=200, help="films of the run's own validation split")
    ap.add_argument("--d", type=float, default=2.0, help="class separation in logits (AUC ~0.92 at 2)")
    ap.add_argument("--shift", type=float, default=1.0, help="logit shift at the site")
    ap.add_argument("--prevalence", type=float, default=0.3)
    ap.add_argument("--ks", default="10,20,50")
    a = ap.parse_args()
    ks = [int(k) for k in a.ks.split(",")]
    rows: dict[int, list[tuple[float, float, float]]] = {k: [] for k in ks}
    skipped = {k: 0 for k in ks}
    for seed in range(a.seeds):
        rng = np.random.default_rng(seed)
        yv, sv, _ = _site(rng, a.n_val, 0.3, a.d, 0.0)
        t_run = float(choose_threshold(yv, sv, "youden"))
        y, s, g = _site(rng, a.patients, a.prevalence, a.d, a.shift)
        for k in ks:
            try:
                r = recalibrate_site("binary", ["negative", "positive"], y, s, g, k, rule="youden", seed=seed)
            except ValueError:  # the K patients drawn lack a class (tiny K, rare positives)
                skipped[k] += 1
                continue
            h = r.held_out
            t_site = r.site.thresholds[0]
            rows[k].append((_bacc(y[h], s[h], t_run), _bacc(y[h], s[h], t_site), t_site))
    for k in ks:
        v = np.asarray(rows[k])
        before, after = v[:, 0], v[:, 1]
        print(json.dumps({
            "k": k, "seeds": len(v), "skipped": skipped[k], "patients": a.patients, "shift": a.shift, "d": a.d,
            "bacc_before": round(float(before.mean()), 4), "bacc_after": round(float(after.mean()), 4),
            "gain": round(float((after - before).mean()), 4),
            "gain_p05_p95": [round(float(q), 4) for q in np.quantile(after - before, [0.05, 0.95])],
            "share_after_better": round(float((after > before).mean()), 3),
            "site_threshold_p05_p95": [round(float(q), 3) for q in np.quantile(v[:, 2], [0.05, 0.95])],
        }), flush=True)


if __name__ == "__main__":
    main()
