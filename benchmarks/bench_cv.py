"""Cross-validated accuracy on real X-rays: 5-fold patient-grouped CV of a staged MobileNetV2.

Runs ``medtl.evaluate.cv.run_cv`` on ../shared/data/kermany-pneumonia-224 (5,216 paediatric
chest X-rays, NORMAL vs PNEUMONIA) with the ImageNet MobileNetV2 weights from ../shared/weights
and prints the pooled out-of-fold metrics with 95% patient-bootstrap intervals, the metrics of
each fold, and the wall time. Target: pooled ROC AUC >= 0.97.

Patients: PNEUMONIA rows carry ``person_id``; NORMAL rows have none, so their study id is taken
from the file name (``IM-0115-0001.jpeg`` -> ``IM-0115``, ``NORMAL2-IM-1345-0001-0002.jpeg`` ->
``NORMAL2-IM-1345``; see benchmarks/_kermany.py). The derived manifest is written to a temporary
folder.

Settings chosen to fit in about an hour on a 2-core CPU (measured there: MobileNetV2 at 160 px
runs ~100 images/s forward and ~90 images/s training its top two blocks): 160 px input; stage 1
trains the head for 5 epochs on cached backbone features (lr 1e-3); stage 2 unfreezes the top 2
blocks for 3 epochs (lr 1e-4); no augmentation (so stage 1 can use the feature cache); batch 32;
early stopping patience 2 on validation ROC AUC; threshold by Youden's index on each fold's
validation split (20% of the training patients). Estimated ~4 minutes per fold.

Usage:
    python benchmarks/bench_cv.py                                  # the full benchmark
    python benchmarks/bench_cv.py --limit 200 --folds 2 --epochs 1 # smoke test (~2 minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from _kermany import add_input_args, check_inputs, derived_manifest  # noqa: E402


def make_config(args, labels: Path, work: Path):
    from medtl.config import config_from_dict

    head_epochs = args.epochs or args.head_epochs
    tune_epochs = args.epochs or args.tune_epochs
    return config_from_dict({
        "name": "bench-cv", "seed": args.seed, "task": "binary", "output_dir": str(work / "runs"),
        "data": {"manifest": str(labels), "path_column": "file", "label_column": "label",
                 "patient_column": "patient", "classes": ["normal", "pneumonia"],
                 "image_size": [args.size, args.size], "cache_dir": str(args.cache or work / "cache"),
                 "val_fraction": 0.2},
        "augment": {"preset": "none"},
        "model": {"backbone": "mobilenetv2", "weights": str(args.weights)},
        "train": {"batch_size": args.batch, "patience": 2, "mixed_precision": "off",
                  "stages": [{"unfreeze": "head", "epochs": head_epochs, "lr": 1e-3},
                             {"unfreeze": args.unfreeze, "epochs": tune_epochs, "lr": 1e-4}]},
        "evaluate": {"folds": args.folds, "threshold": "youden", "calibration": args.calibration,
                     "bootstrap": args.bootstrap},
    })


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_input_args(ap)
    ap.add_argument("--limit", type=int, help="use about this many images (whole patients), for a smoke test")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--size", type=int, default=160, help="model input size in pixels")
    ap.add_argument("--head-epochs", type=int, default=5)
    ap.add_argument("--tune-epochs", type=int, default=3)
    ap.add_argument("--epochs", type=int, help="epochs of every stage (overrides the two above)")
    ap.add_argument("--unfreeze", type=int, default=2, help="top backbone blocks trained in stage 2")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--calibration", default="none", choices=["none", "temperature", "platt"])
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--run", type=Path, help="run folder (kept; an existing one is resumed)")
    ap.add_argument("--cache", type=Path, help="image cache folder (reused between runs)")
    args = ap.parse_args(argv)
    check_inputs(args.data, args.weights)
    from medtl.tfimport import import_tensorflow

    import_tensorflow()  # without TensorFlow's C++ start-up lines, as the medtl command

    from medtl.evaluate.cv import run_cv

    tmp = Path(tempfile.mkdtemp(prefix="medtl-bench-cv-"))
    try:
        # A kept run needs its manifest at the same path when resumed, so it lives beside the run.
        where = tmp / "manifest" if args.run is None else args.run.with_name(args.run.name + ".manifest")
        labels = derived_manifest(args.data, where, args.limit, args.seed)
        cfg = make_config(args, labels, tmp)
        st = cfg.train.stages
        import pandas as pd

        man = pd.read_csv(labels)
        print(f"{len(man)} images ({int(man['label'].sum())} pneumonia), {man['patient'].nunique()} patients; "
              f"{cfg.evaluate.folds}-fold patient-grouped CV of MobileNetV2 (ImageNet) at {args.size} px; "
              f"stages: head {st[0].epochs} ep lr {st[0].lr:g} (cached features), top {args.unfreeze} blocks "
              f"{st[1].epochs} ep lr {st[1].lr:g}; batch {args.batch}; {os.cpu_count()} CPU cores", flush=True)
        t0 = time.perf_counter()
        run = run_cv(cfg, run_dir=args.run or tmp / "run", progress=True)  # prints format_cv's table
        wall = time.perf_counter() - t0
        m = json.loads((run / "metrics.json").read_text())
        auc, ci = m["pooled"]["roc_auc"], m["pooled_ci"]["roc_auc"]
        per_fold = ", ".join(f"{float(v['wall_time_s'] or 0) / 60:.1f}" for v in m["fold_info"].values())
        print(f"\npooled ROC AUC {auc:.4f} [95% CI {ci['low']:.4f}, {ci['high']:.4f}] "
              f"(target >= 0.97: {'met' if auc >= 0.97 else 'NOT met'})")
        print(f"wall time {wall / 60:.1f} min (per fold: {per_fold} min); run folder {run}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
