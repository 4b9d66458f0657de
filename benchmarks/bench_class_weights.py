"""Does class weighting matter? A rare finding, trained with and without balanced class weights.

From ../shared/data/kermany-pneumonia-224 an imbalanced subset is drawn in which the finding is
rare, as in a clinical setting: every NORMAL film plus whole PNEUMONIA patients until there is
about one pneumonia film per ``--ratio`` (default 8) normal ones, pneumonia being the positive
class (``--positive normal`` instead relabels NORMAL as the rare positive class and thins it out).
A stratified, patient-grouped holdout (``--test-fraction`` of the patients) is the test set.

The same model is trained twice with medtl's ``train()``, once with ``train.loss.class_weight:
balanced`` (from the training split's counts) and once with ``none``; everything else is equal
(seed, splits, initialisation). MobileNetV2 with the ImageNet weights from ../shared/weights at
160 px, staged as in bench_cv.py: the head on cached features (5 epochs, lr 1e-3), then the top 2
blocks (3 epochs, lr 1e-4); early stopping on validation ROC AUC, which ignores the threshold.

Reported on the test set: balanced accuracy, sensitivity and specificity at the fixed 0.5
threshold, ROC AUC with its 95% patient-bootstrap interval, and balanced accuracy at the Youden
threshold chosen on validation (a threshold fitted on validation data is the other remedy);
then the paired patient-bootstrap difference, balanced minus none, of sensitivity and balanced
accuracy at 0.5 and of ROC AUC. About 1 minute per run on a 2-core CPU (4 minutes in all).

Usage:
    python benchmarks/bench_class_weights.py --out bench_class_weights.json
    python benchmarks/bench_class_weights.py --seeds 1,2,3          # three different subsets
    python benchmarks/bench_class_weights.py --limit 300 --size 64 --epochs 1   # smoke test
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

from _kermany import (  # noqa: E402  (a sibling module: run this file as a script)
    add_input_args, check_inputs, evaluate_holdout, kermany_table, sample_patients, write_labels)

MODES = ("balanced", "none")


def imbalanced_table(data_dir: Path, positive: str, ratio: float, limit: int | None, seed: int):
    """Kermany rows with ``positive`` as label 1, thinned (whole patients) to 1 positive : ``ratio``."""
    df = kermany_table(data_dir)
    if positive == "normal":
        df["label"] = 1 - df["label"]
    neg, pos = df[df["label"] == 0], df[df["label"] == 1]
    if limit is not None:
        n_neg = min(len(neg), round(limit * ratio / (ratio + 1)))
        neg = neg.iloc[sample_patients(neg["label"], neg["patient"], n_neg, seed)]
    n_pos = round(len(neg) / ratio)
    if n_pos > len(pos):
        raise SystemExit(f"--ratio {ratio}: needs {n_pos} positive films, the data set has {len(pos)}; raise --ratio")
    pos = pos.iloc[sample_patients(pos["label"], pos["patient"], n_pos, seed)]
    return df.loc[sorted([*neg.index, *pos.index])]


def make_config(args, mode: str, labels: Path, work: Path, seed: int):
    from medtl.config import config_from_dict

    classes = ["normal", "pneumonia"] if args.positive == "pneumonia" else ["pneumonia", "normal"]
    head_epochs = args.epochs or args.head_epochs
    tune_epochs = args.epochs or args.tune_epochs
    return config_from_dict({
        "name": f"bench-class-weights-{mode}", "seed": seed, "task": "binary", "output_dir": str(work / "runs"),
        "data": {"manifest": str(labels), "path_column": "file", "label_column": "label",
                 "patient_column": "patient", "classes": classes,
                 "image_size": [args.size, args.size], "cache_dir": str(args.cache or work / "cache"),
                 "val_fraction": 0.2},
        "augment": {"preset": "none"},
        "model": {"backbone": "mobilenetv2", "weights": str(args.weights)},
        "train": {"batch_size": args.batch, "patience": args.patience, "mixed_precision": "off",
                  "loss": {"name": "bce", "class_weight": mode},
                  "stages": [{"unfreeze": "head", "epochs": head_epochs, "lr": 1e-3},
                             {"unfreeze": args.unfreeze, "epochs": tune_epochs, "lr": 1e-4}]},
    })


def run_seed(args, seed: int, work: Path) -> dict:
    """Both modes on the subset and holdout of one seed; their rows and paired differences."""
    import keras

    from medtl.data.manifest import load_manifest
    from medtl.data.splits import assert_no_leakage, patient_holdout
    from medtl.stats.bootstrap import bootstrap_paired_difference
    from medtl.train.trainer import train

    table = imbalanced_table(args.data, args.positive, args.ratio, args.limit, seed)
    labels = write_labels(table, work / f"seed{seed}" / "manifest")
    full = load_manifest(make_config(args, "none", labels, work, seed))
    dev_idx, test_idx = patient_holdout(full, args.test_fraction, seed)
    dev, test = full.subset(dev_idx), full.subset(test_idx)
    assert_no_leakage(dev, test)
    pos = full.classes[1]
    print(f"\nseed {seed}: {len(full)} images, {int(full.targets().sum())} {pos} (1:{args.ratio:g}), "
          f"{full.df['patient_id'].nunique()} patients; test set {len(test)} images, "
          f"{int(test.targets().sum())} {pos}, {test.df['patient_id'].nunique()} patients", flush=True)
    rows, scores = [], {}
    for mode in MODES:
        cfg = make_config(args, mode, labels, work, seed)
        print(f"\n=== class_weight: {mode} (seed {seed})", flush=True)
        t0 = time.perf_counter()
        result = train(cfg, dev, run_dir=work / f"seed{seed}" / mode, progress=not args.quiet)
        summary, scores[mode] = evaluate_holdout(result, cfg, test, args.bootstrap, seed)
        rows.append({"seed": seed, "class_weight": mode, "n_images": len(dev), "n_train": result.metrics["n_train"],
                     "n_val": result.metrics["n_val"], "epochs_run": result.metrics["epochs_run"], **summary,
                     "minutes": round((time.perf_counter() - t0) / 60, 2)})
        del result
        keras.backend.clear_session()
    y = test.targets()[:, 0]
    groups = test.df["patient_id"].astype(str).to_numpy()
    diffs = {}
    for metric in ("sensitivity", "balanced_accuracy", "roc_auc"):
        d = bootstrap_paired_difference(y, scores["balanced"], scores["none"], metric, groups,
                                        n_boot=args.bootstrap, seed=seed, threshold=0.5)
        diffs[metric] = {"point": d.point, "ci": [d.low, d.high]}
    return {"seed": seed, "n_images": len(full), "n_positive": int(full.targets().sum()), "n_test": len(test),
            "n_test_positive": int(y.sum()), "n_test_patients": int(len(set(groups))), "runs": rows,
            "difference_balanced_minus_none": diffs}


def format_table(results: list[dict]) -> str:
    head = (f"{'seed':>5} {'class_weight':>12} {'bal.acc@0.5':>11} {'sens@0.5':>8} {'spec@0.5':>8} "
            f"{'ROC AUC [95% CI]':>25} {'bal.acc@youden':>14} {'min':>5}")
    lines = [head, "-" * len(head)]
    for res in results:
        for r in res["runs"]:
            h = r["at_0.5"]
            lines.append(
                f"{r['seed']:>5} {r['class_weight']:>12} {h['balanced_accuracy']:>11.4f} {h['sensitivity']:>8.3f} "
                f"{h['specificity']:>8.3f} {r['roc_auc']:>9.4f} [{r['roc_auc_ci'][0]:.4f}, {r['roc_auc_ci'][1]:.4f}] "
                f"{r['at_youden']['balanced_accuracy']:>14.4f} {r['minutes']:>5.1f}")
        d = res["difference_balanced_minus_none"]
        lines.append("      balanced - none: " + ", ".join(
            f"{k} {v['point']:+.4f} [{v['ci'][0]:+.4f}, {v['ci'][1]:+.4f}]" for k, v in d.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_input_args(ap)
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    ap.add_argument("--positive", default="pneumonia", choices=["pneumonia", "normal"],
                    help="the class made rare and positive (default pneumonia)")
    ap.add_argument("--ratio", type=float, default=8.0, help="negative films per positive film (default 8)")
    ap.add_argument("--limit", type=int, help="about this many images in all (whole patients), for a smoke test")
    ap.add_argument("--seeds", default="42", help="comma-separated seeds; each draws its own subset and holdout")
    ap.add_argument("--size", type=int, default=160, help="model input size in pixels (default 160)")
    ap.add_argument("--head-epochs", type=int, default=5)
    ap.add_argument("--tune-epochs", type=int, default=3)
    ap.add_argument("--epochs", type=int, help="epochs of every stage (overrides the two above)")
    ap.add_argument("--unfreeze", type=int, default=2, help="top backbone blocks trained in stage 2")
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--test-fraction", type=float, default=0.25, help="patients held out as the test set")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--cache", type=Path, help="image cache folder (reused between runs)")
    ap.add_argument("--work", type=Path, help="keep the run folders here (must not hold earlier runs)")
    ap.add_argument("--quiet", action="store_true", help="no per-epoch progress")
    args = ap.parse_args(argv)
    if args.ratio < 1:
        raise SystemExit(f"--ratio: invalid value {args.ratio}; expected >= 1 negative film per positive one")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"--seeds: invalid value {args.seeds!r}; expected integers, e.g. 1,2,3") from None
    check_inputs(args.data, args.weights)
    from medtl.tfimport import import_tensorflow

    import_tensorflow()  # without TensorFlow's C++ start-up lines, as the medtl command

    work = args.work or Path(tempfile.mkdtemp(prefix="medtl-bench-cw-"))
    try:
        print(f"MobileNetV2 (ImageNet) at {args.size} px, head {args.epochs or args.head_epochs} ep + top "
              f"{args.unfreeze} blocks {args.epochs or args.tune_epochs} ep, batch {args.batch}, no augmentation; "
              f"rare positive class: {args.positive} (1:{args.ratio:g}); {os.cpu_count()} CPU cores", flush=True)
        t0 = time.perf_counter()
        results = [run_seed(args, seed, work) for seed in seeds]
        total = time.perf_counter() - t0
        print("\n" + format_table(results))
        print(f"\nTotal {total / 60:.1f} min. Sensitivity/specificity/balanced accuracy at the fixed 0.5 threshold "
              f"unless marked @youden; differences are paired patient-bootstrap 95% intervals.")
        if args.out:
            settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"benchmark": "class_weights", "settings": settings,
                                            "cpu_count": os.cpu_count(), "minutes": round(total / 60, 2),
                                            "results": results}, indent=2, default=float) + "\n")
            print(f"Results written to {args.out}")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
