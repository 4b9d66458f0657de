"""External-test benchmark (issue 19): train what ``medtl init`` writes, score another test set.

Writes the starter config ``medtl init`` writes for ``--train`` (a labels CSV), changes only
what a CPU needs (``model.backbone``, ``model.weights``, ``data.image_size``) plus any
``--set`` levers, trains it (``medtl train``: one run, threshold and calibration chosen on its
validation split only), then scores ``--test`` with ``medtl evaluate`` (nothing re-fitted on
it). Prints one JSON line: roc_auc, accuracy, balanced_accuracy, sensitivity, specificity,
threshold, minutes (training plus scoring), and the levers used.

The test CSV must use the training CSV's column names.

Example:
    python benchmarks/bench_external.py --train train/labels.csv --test test/labels.csv
    python benchmarks/bench_external.py --train train.csv --test test.csv --set predict.tta=shift \\
        --set augment.preset=chest_xray_robust
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _kermany import WEIGHTS_FILE  # noqa: E402

KEYS = ("roc_auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity", "threshold")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=Path, required=True, help="labels CSV of the training films")
    ap.add_argument("--test", type=Path, required=True, help="labels CSV of the external test films")
    ap.add_argument("--backbone", default="mobilenetv2", help="CPU override of model.backbone")
    ap.add_argument("--weights", default=str(WEIGHTS_FILE), help="CPU override of model.weights")
    ap.add_argument("--size", type=int, default=160, help="CPU override of data.image_size")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a lever to try (repeatable)")
    ap.add_argument("--work", type=Path, help="keep the run here (default: a temporary folder)")
    args = ap.parse_args(argv)
    for what, p in (("--train", args.train), ("--test", args.test)):
        if not p.is_file():
            raise SystemExit(f"{what}: {p} not found; pass a labels CSV")
    import medtl
    from medtl.init import write_starter_config

    t0 = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_external_"))
    cfg_path = write_starter_config(args.train.resolve(), work / "config.yaml", force=True)
    overrides = [f"model.backbone={args.backbone}", f"model.weights={args.weights}",
                 f"data.image_size=[{args.size},{args.size}]", f"data.cache_dir={work / 'cache'}",
                 f"output_dir={work / 'runs'}", *args.set]
    res = medtl.train(str(cfg_path), overrides=overrides, progress=False)
    m = medtl.evaluate(res.run_dir, str(args.test.resolve()), work / "eval", progress=False)
    out = {k: m.get(k) for k in KEYS}
    out.update({"minutes": round((time.perf_counter() - t0) / 60, 2), "n_test": m.get("n"),
                "levers": args.set, "run": str(res.run_dir)})
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
