"""Training loop speed: plain ``model.fit`` vs medtl's loop, and the head-stage feature cache.

Prints per-epoch seconds, from one run on the same model and the same in-memory images, for:

1. fine-tuning (the top ``--unfreeze`` blocks): a plain ``model.fit`` on numpy arrays (same
   loss, metrics, optimizer, batch size and validation set) against medtl's ``train()``, which
   calls ``fit`` once per epoch, reseeds, builds the epoch's tf.data input from the in-memory
   cache, checkpoints weights and optimizer state and writes history and TensorBoard logs.
   Target: medtl within 5% of plain (ratio <= 1.05) after the first (tracing) epoch.
2. the head-only stage: a plain ``fit`` with the backbone frozen against medtl's head stage on
   cached backbone features (``train.feature_cache``, no augmentation). Target: >= 5x faster
   per epoch after the first (which pays for computing the features once).

Without ``--data`` it writes a synthetic DICOM set (medtl.data.synthetic) to a temporary folder.

Usage:
    python benchmarks/bench_training.py                 # ~250 synthetic films, MobileNetV2 96 px
    python benchmarks/bench_training.py --size 160 --epochs 4 --weights none
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_SHARED_WEIGHTS = (Path(__file__).resolve().parents[2] / "shared" / "weights" / "mobilenet_v2_imagenet"
                   / "mobilenet_v2_1.0_224_imagenet_notop.weights.h5")


def _config(args, labels: Path, work: Path, stage: dict, feature_cache: bool):
    from medtl.config import config_from_dict

    weights = args.weights or (str(_SHARED_WEIGHTS) if _SHARED_WEIGHTS.exists() else "none")
    return config_from_dict({
        "name": "bench", "seed": 0, "output_dir": str(work / "runs"),
        "data": {"manifest": str(labels), "path_column": "file", "patient_column": "patient_id",
                 "image_size": [args.size, args.size], "cache_dir": str(work / "cache"),
                 "val_fraction": 0.2},
        "augment": {"preset": "none"},
        "model": {"backbone": args.backbone, "weights": weights},
        "train": {"batch_size": args.batch, "stages": [stage], "patience": 1000,
                  "mixed_precision": "off", "distribute": "none", "feature_cache": feature_cache},
    })


def _plain_fit(cfg, data, epochs: int) -> list[float]:
    """Per-epoch seconds of a textbook model.fit on in-memory arrays (validation included)."""
    import keras

    from medtl.models import build_model, set_trainable
    from medtl.train.losses import compute_class_weights, make_loss
    from medtl.train.trainer import _make_metrics, _make_optimizer

    (x_tr, y_tr), (x_va, y_va), classes = data
    st = cfg.train.stages[0]
    keras.utils.set_random_seed(cfg.seed)
    model = build_model(cfg, 1)
    set_trainable(model, st.unfreeze)
    weights = compute_class_weights(y_tr, cfg.train.loss.class_weight, classes, task="binary")
    steps = -(-len(x_tr) // cfg.train.batch_size)
    model.compile(optimizer=_make_optimizer(st, steps), loss=make_loss(cfg.train.loss, "binary", weights),
                  metrics=_make_metrics("binary", 1), jit_compile=False)
    times: list[float] = []
    t0 = [0.0]
    timer = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda e, logs: t0.__setitem__(0, time.perf_counter()),
        on_epoch_end=lambda e, logs: times.append(time.perf_counter() - t0[0]))
    model.fit(x_tr, y_tr, batch_size=cfg.train.batch_size, epochs=epochs, validation_data=(x_va, y_va),
              shuffle=True, verbose=0, callbacks=[timer])
    return times


def _medtl(cfg, run_dir: Path) -> tuple[list[float], list[float]]:
    """Per-epoch seconds of medtl's train(): wall time incl. checkpointing, and fit time alone."""
    from medtl.train.trainer import train

    res = train(cfg, run_dir=run_dir, progress=False)
    return res.history["seconds"].tolist(), res.history["fit_seconds"].tolist()


def _later(times: list[float]) -> float:
    return statistics.median(times[1:]) if len(times) > 1 else times[0]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="labels CSV with file/label/patient_id columns (default: synthetic)")
    ap.add_argument("--patients", type=int, default=100, help="synthetic patients (2-3 films each)")
    ap.add_argument("--size", type=int, default=96, help="model input size")
    ap.add_argument("--backbone", default="mobilenetv2")
    ap.add_argument("--weights", help="backbone weights (default: ../shared ImageNet MobileNetV2, else none)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--unfreeze", default="2", help="blocks unfrozen in the fine-tuning comparison")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each variant (the fastest is kept)")
    args = ap.parse_args(argv)
    from medtl.tfimport import import_tensorflow

    import_tensorflow()  # without TensorFlow's C++ start-up lines, as the medtl command

    from medtl.data.manifest import load_manifest
    from medtl.data.pipeline import ImagePipeline
    from medtl.data.splits import patient_holdout

    with tempfile.TemporaryDirectory(prefix="medtl-bench-") as tmp:
        work = Path(tmp)
        if args.data:
            labels = Path(args.data).resolve()
        else:
            from medtl.data.synthetic import make_sample_data

            labels = make_sample_data(work / "data", n_patients=args.patients, seed=0, image_size=(128, 128))
        unfreeze = int(args.unfreeze) if args.unfreeze.isdigit() else args.unfreeze
        tune = {"unfreeze": unfreeze, "epochs": args.epochs, "lr": 1e-4}
        head = {"unfreeze": "head", "epochs": args.epochs, "lr": 1e-3}

        cfg = _config(args, labels, work, tune, feature_cache=False)
        pipe = ImagePipeline(cfg)
        m = pipe.prepare(load_manifest(cfg))  # warms the shared cache for every variant below
        tr, va = patient_holdout(m, cfg.data.val_fraction, cfg.seed)
        data = (pipe.arrays(m.subset(tr)), pipe.arrays(m.subset(va)), m.classes)
        print(f"{len(tr)} training / {len(va)} validation images, {args.backbone} at {args.size} px, "
              f"batch {args.batch}, {args.epochs} epochs each, best of {args.repeats} runs, "
              f"weights {cfg.model.weights}")

        head_cfg = _config(args, labels, work, head, feature_cache=True)
        runs: dict[str, list[list[float]]] = {}
        # Alternate the variants and keep each one's fastest repeat: on a shared machine other
        # processes only ever slow a run down.
        for r in range(args.repeats):
            ours, ours_fit = _medtl(cfg, work / "runs" / f"tune{r}")
            cached, _ = _medtl(head_cfg, work / "runs" / f"head{r}")
            for name, t in ((f"plain model.fit, unfreeze {unfreeze}", _plain_fit(cfg, data, args.epochs)),
                            ("medtl train()", ours), ("  (its fit calls alone)", ours_fit),
                            ("plain model.fit, frozen backbone", _plain_fit(head_cfg, data, args.epochs)),
                            ("medtl head stage, cached features", cached)):
                runs.setdefault(name, []).append(t)
        rows = [(name, min(ts, key=_later)) for name, ts in runs.items()]
        plain, ours, _, plain_head, cached = (t for _, t in rows)

        print(f"\n{'':36s}{'epoch 1':>9s}{'later: median':>15s}{'mean':>8s}   all epochs")
        for name, t in rows:
            later = statistics.mean(t[1:]) if len(t) > 1 else t[0]
            print(f"{name:36s}{t[0]:8.2f}s{_later(t):14.3f}s{later:7.3f}s   "
                  + " ".join(f"{x:.2f}" for x in t))
        ratio = _later(ours) / _later(plain)
        speedup = _later(plain_head) / _later(cached)
        print(f"\nmedtl / plain per epoch: {ratio:.3f} (target <= 1.05)")
        print(f"feature-cached head stage speed-up per epoch: {speedup:.1f}x (target >= 5x)")


if __name__ == "__main__":
    main()
