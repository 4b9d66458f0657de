"""Transfer learning against training from scratch on real X-rays, at 100, 500 and all images.

On ../shared/data/kermany-pneumonia-224 (5,216 paediatric chest X-rays, NORMAL vs PNEUMONIA)
one stratified, patient-grouped holdout (``--test-fraction`` of the patients, fixed seed) is
set aside as the test set. From the rest, training sets of about 100, 500 and all images are
drawn as whole patients in the class ratio (each smaller set inside the larger), and two arms
are trained with medtl's ``train()`` on each; inside every training set the trainer's own
patient-grouped validation split (20%) drives early stopping and the threshold choice:

(a) ``pretrained``: MobileNetV2 with the ImageNet weights from ../shared/weights, staged: the
    head on cached backbone features (5 epochs, lr 1e-3), then the top 2 blocks (3 epochs,
    lr 1e-4), BatchNormalization frozen;
(b) ``scratch``: the same network from random weights (``weights: none``), everything trained
    in one stage (6 epochs, lr 1e-3 with cosine decay), BatchNormalization training.

Small training sets get more epochs so that every stage runs at least ``--min-steps`` batches
(at most ``--max-epochs``); early stopping (patience 3 on validation ROC AUC) still applies.
No augmentation in either arm (so the head stage can use the feature cache). Batch 32.

Reported on the test set: ROC AUC with a 95% patient-bootstrap interval, balanced accuracy at
the Youden threshold chosen on the run's validation predictions, and minutes per run (training
plus test prediction; the one-off decoding of all images into the cache is timed separately).

Settings chosen to fit in about 30 minutes on a 2-core CPU: 160 px (the size bench_cv.py uses).
Throughput of MobileNetV2 measured on that CPU (``train_on_batch``, batch 32, other jobs running):
at 160 px ~190 images/s training the top 2 blocks, ~40 images/s training everything, ~150-200
images/s predicting; at 128 px ~250 and ~55. Estimated: pretrained on all images ~2-4 minutes,
from scratch on all images ~9-15 minutes (6 epochs of ~3,300 images), the 100- and 500-image
runs ~1-2 minutes each; in all ~16-30 minutes.

Usage:
    python benchmarks/bench_transfer.py --out bench_transfer.json          # the full benchmark
    python benchmarks/bench_transfer.py --limit 400 --sizes 100,all --size 64 --epochs 1  # smoke
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from _kermany import (  # noqa: E402  (a sibling module: run this file as a script)
    add_input_args, check_inputs, derived_manifest, evaluate_holdout, sample_patients)

ARMS = ("pretrained", "scratch")


def parse_sizes(text: str) -> list[int | None]:
    """``"100,500,all"`` -> ``[100, 500, None]`` (None = every training image)."""
    sizes: list[int | None] = []
    for part in text.split(","):
        part = part.strip().lower()
        if part == "all":
            sizes.append(None)
        elif part.isdigit() and int(part) >= 20:
            sizes.append(int(part))
        else:
            raise SystemExit(f"--sizes: invalid item {part!r}; expected numbers >= 20 or 'all', e.g. 100,500,all")
    return sizes


def stage_epochs(base: int, n_train: int, args) -> int:
    """Epochs of a stage: ``base``, raised so that small sets still get ``--min-steps`` batches."""
    if args.epochs:
        return args.epochs
    steps = max(1, math.ceil(n_train / args.batch))
    return max(base, min(args.max_epochs, math.ceil(args.min_steps / steps)))


def arm_stages(arm: str, n_images: int, args) -> list[dict]:
    """The ``train.stages`` of an arm for a training set of ``n_images`` (validation included)."""
    n_train = round(n_images * (1 - args.val_fraction))
    if arm == "pretrained":
        return [{"unfreeze": "head", "epochs": stage_epochs(args.head_epochs, n_train, args), "lr": 1e-3},
                {"unfreeze": args.unfreeze, "epochs": stage_epochs(args.tune_epochs, n_train, args), "lr": 1e-4}]
    return [{"unfreeze": "all", "epochs": stage_epochs(args.scratch_epochs, n_train, args),
             "lr": args.scratch_lr, "schedule": "cosine"}]


def make_config(args, arm: str, labels: Path, work: Path, n_images: int):
    from medtl.config import config_from_dict

    return config_from_dict({
        "name": f"bench-transfer-{arm}", "seed": args.seed, "task": "binary", "output_dir": str(work / "runs"),
        "data": {"manifest": str(labels), "path_column": "file", "label_column": "label",
                 "patient_column": "patient", "classes": ["normal", "pneumonia"],
                 "image_size": [args.size, args.size], "cache_dir": str(args.cache or work / "cache"),
                 "val_fraction": args.val_fraction},
        "augment": {"preset": "none"},
        "model": {"backbone": "mobilenetv2", "weights": str(args.weights) if arm == "pretrained" else "none"},
        "train": {"batch_size": args.batch, "patience": args.patience, "mixed_precision": "off",
                  "stages": arm_stages(arm, n_images, args)},
    })


def describe_stages(stages) -> str:
    return ", ".join(f"{s.unfreeze} {s.epochs} ep lr {s.lr:g}{' cosine' if s.schedule == 'cosine' else ''}"
                     for s in stages)


def run_one(args, arm: str, size_name: str, train_m, test_m, labels: Path, work: Path) -> dict:
    """Train one arm on ``train_m``, score it on ``test_m``; one result row."""
    import keras

    from medtl.train.trainer import train

    cfg = make_config(args, arm, labels, work, len(train_m))
    print(f"\n=== {arm}, {size_name} training images ({len(train_m)} images, "
          f"{train_m.df['patient_id'].nunique()} patients): {describe_stages(cfg.train.stages)}", flush=True)
    run_dir = work / "runs" / f"{arm}-{size_name}"
    t0 = time.perf_counter()
    if (run_dir / "ckpt" / "state.json").exists():  # a kept --work folder: continue or re-read the run
        result = train(cfg, train_m, resume=run_dir, progress=not args.quiet)
    else:
        result = train(cfg, train_m, run_dir=run_dir, progress=not args.quiet)
    if result.model is None:
        from medtl.models import load_model

        result.model = load_model(result.model_path)
    t_train = time.perf_counter() - t0
    summary, _ = evaluate_holdout(result, cfg, test_m, args.bootstrap, args.seed)
    minutes = (time.perf_counter() - t0) / 60
    m = result.metrics
    row = {
        "arm": arm, "train_size": size_name, "n_images": len(train_m), "n_train": m["n_train"], "n_val": m["n_val"],
        "n_patients": int(train_m.df["patient_id"].nunique()),
        "stages": [{"unfreeze": s.unfreeze, "epochs": s.epochs, "lr": s.lr, "schedule": s.schedule}
                   for s in cfg.train.stages],
        "epochs_run": m["epochs_run"], "best_at": m["best"],
        **summary,
        "minutes": round(minutes, 2), "train_minutes": round(t_train / 60, 2),
    }
    print(f"--> {arm} {size_name}: test ROC AUC {row['roc_auc']:.4f} "
          f"[{row['roc_auc_ci'][0]:.4f}, {row['roc_auc_ci'][1]:.4f}], balanced accuracy "
          f"{row['at_youden']['balanced_accuracy']:.4f} at threshold {row['youden_threshold']:.3f}; "
          f"{minutes:.1f} min", flush=True)
    del result
    keras.backend.clear_session()  # each run builds a fresh model; free the old graph
    return row


def format_table(rows: list[dict]) -> str:
    head = (f"{'train set':>9} {'arm':>10} {'images':>6} {'pat.':>5} {'epochs':>6} {'val AUC':>7} "
            f"{'test ROC AUC [95% CI]':>25} {'bal.acc':>7} {'sens':>6} {'spec':>6} {'min':>5}")
    lines = [head, "-" * len(head)]
    for r in rows:
        y = r["at_youden"]
        lines.append(
            f"{r['train_size']:>9} {r['arm']:>10} {r['n_images']:>6} {r['n_patients']:>5} {r['epochs_run']:>6} "
            f"{r['val_roc_auc']:>7.4f} {r['roc_auc']:>9.4f} [{r['roc_auc_ci'][0]:.4f}, {r['roc_auc_ci'][1]:.4f}] "
            f"{y['balanced_accuracy']:>7.4f} {y['sensitivity']:>6.3f} {y['specificity']:>6.3f} {r['minutes']:>5.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_input_args(ap)
    ap.add_argument("--out", type=Path, help="write the results as JSON here (rewritten after every run)")
    ap.add_argument("--sizes", "--sizes-list", dest="sizes", default="100,500,all",
                    help="training-set sizes in images, 'all' for every training image (default 100,500,all)")
    ap.add_argument("--arms", default=",".join(ARMS), help="pretrained, scratch or both (default both)")
    ap.add_argument("--limit", type=int,
                    help="use about this many images of the data set (whole patients), for a smoke test")
    ap.add_argument("--size", type=int, default=160, help="model input size in pixels (default 160)")
    ap.add_argument("--head-epochs", type=int, default=5)
    ap.add_argument("--tune-epochs", type=int, default=3)
    ap.add_argument("--unfreeze", type=int, default=2, help="top backbone blocks trained in stage 2 (pretrained)")
    ap.add_argument("--scratch-epochs", type=int, default=6)
    ap.add_argument("--scratch-lr", type=float, default=1e-3)
    ap.add_argument("--epochs", type=int,
                    help="exact epochs of every stage (overrides all the above and --min-steps)")
    ap.add_argument("--min-steps", type=int, default=60, help="each stage runs at least this many batches")
    ap.add_argument("--max-epochs", type=int, default=30, help="cap on the epochs --min-steps may ask for")
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--test-fraction", type=float, default=0.2, help="patients held out as the test set")
    ap.add_argument("--val-fraction", type=float, default=0.2, help="patients of each training set used for validation")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--cache", type=Path, help="image cache folder (reused between runs)")
    ap.add_argument("--work", type=Path, help="keep the run folders here; a rerun continues them "
                    "(default: a temporary folder, removed)")
    ap.add_argument("--quiet", action="store_true", help="no per-epoch progress")
    args = ap.parse_args(argv)
    sizes = parse_sizes(args.sizes)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if not arms or set(arms) - set(ARMS):
        raise SystemExit(f"--arms: invalid value {args.arms!r}; expected pretrained, scratch or pretrained,scratch")
    check_inputs(args.data, args.weights if "pretrained" in arms else None)
    from medtl.tfimport import import_tensorflow

    import_tensorflow()  # without TensorFlow's C++ start-up lines, as the medtl command

    from medtl.data.manifest import load_manifest
    from medtl.data.pipeline import ImagePipeline
    from medtl.data.splits import assert_no_leakage, patient_holdout

    work = args.work or Path(tempfile.mkdtemp(prefix="medtl-bench-transfer-"))
    try:
        labels = derived_manifest(args.data, work / "manifest", args.limit, args.seed)
        base = make_config(args, "pretrained", labels, work, 0)
        full = load_manifest(base)
        t0 = time.perf_counter()
        ImagePipeline(base).prepare(full)  # decode every image once; all runs read the cache
        t_decode = time.perf_counter() - t0
        dev_idx, test_idx = patient_holdout(full, args.test_fraction, args.seed)
        dev, test = full.subset(dev_idx), full.subset(test_idx)
        assert_no_leakage(dev, test)
        print(f"{len(full)} images, {full.df['patient_id'].nunique()} patients; test set: {len(test)} images "
              f"({int(test.targets().sum())} pneumonia), {test.df['patient_id'].nunique()} patients; "
              f"training pool: {len(dev)} images. Decoded and cached in {t_decode:.0f}s.", flush=True)
        print(f"MobileNetV2 at {args.size} px, batch {args.batch}, no augmentation, patience {args.patience}, "
              f"min {args.min_steps} batches a stage; arms: {', '.join(arms)}; sizes: {args.sizes}; "
              f"{os.cpu_count()} CPU cores", flush=True)

        rows: list[dict] = []
        t_all = time.perf_counter()
        for size in sizes:
            if size is None or size >= len(dev):
                name, train_m = ("all" if size is None else str(size)), dev
            else:
                pick = sample_patients(dev.df["label"].to_numpy(), dev.df["patient_id"].to_numpy(), size, args.seed)
                name, train_m = str(size), dev.subset(pick)
            for arm in arms:
                rows.append(run_one(args, arm, name, train_m, test, labels, work))
                if args.out:
                    _write(args.out, args, rows, test, t_decode, time.perf_counter() - t_all)
        total = time.perf_counter() - t_all
        print("\n" + format_table(rows))
        print(f"\nImage size {args.size} px; test set {len(test)} images / {test.df['patient_id'].nunique()} patients; "
              f"balanced accuracy, sensitivity and specificity at each run's validation Youden threshold. "
              f"Total {total / 60:.1f} min (+{t_decode / 60:.1f} min decoding).")
        best_all = [r for r in rows if r["arm"] == "pretrained" and r["train_size"] == "all"]
        if best_all:
            auc = best_all[0]["roc_auc"]
            verdict = "met" if auc >= 0.97 else "NOT met"
            print(f"Target: pretrained, all images, test ROC AUC >= 0.97: {auc:.4f} ({verdict})")
        if args.out:
            _write(args.out, args, rows, test, t_decode, total)
            print(f"Results written to {args.out}")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def _write(path: Path, args, rows: list[dict], test, t_decode: float, elapsed: float) -> None:
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    out = {
        "benchmark": "transfer", "settings": settings, "cpu_count": os.cpu_count(),
        "n_test": len(test), "n_test_patients": int(test.df["patient_id"].nunique()),
        "n_test_pneumonia": int(test.targets().sum()),
        "decode_minutes": round(t_decode / 60, 2), "elapsed_minutes": round(elapsed / 60, 2), "runs": rows,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
