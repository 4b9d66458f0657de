"""Grad-CAM speed: maps per second computed in batches vs one image at a time.

"Batched" and "one at a time" use the same method object after a warm-up call, so graph tracing
is not counted and their ratio measures batching alone. "compute_cam per film" is the naive use
(one call per film, each building and tracing anew). Issue 5 targets batched >= 5x.

A map needs one forward pass of the whole model (the gradient goes back only through the head),
so the model's own inference rate, batched and one image at a time, is printed as the ceiling:
batched maps/s close to batched inference/s means nothing is left to gain from the CAM code,
and the batched / one-at-a-time ratio cannot exceed what batching gives inference itself.

Run:
    python benchmarks/bench_cam.py                       # mobilenetv2, 224 px, 32 images
    python benchmarks/bench_cam.py --method gradcam --n 64 --batch-size 32
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from medtl.tfimport import import_tensorflow  # noqa: E402

import_tensorflow()  # without TensorFlow's C++ start-up lines, as the medtl command

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from medtl.config import Config  # noqa: E402
from medtl.explain.cam import METHODS, compute_cam  # noqa: E402
from medtl.models import build_model  # noqa: E402


def _rate(fn, n: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return n / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="mobilenetv2")
    parser.add_argument("--method", default="gradcam++", choices=["gradcam", "gradcam++"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    cfg = Config(seed=0)
    cfg.model.backbone, cfg.model.weights = args.backbone, "none"
    cfg.data.image_size = [args.size, args.size]
    keras.utils.set_random_seed(0)
    model = build_model(cfg, n_outputs=1)
    x = np.random.default_rng(0).random((args.n, args.size, args.size, 1), dtype=np.float32)
    cam = METHODS[args.method](model)

    cam(x[:2], batch_size=args.batch_size)  # trace the graph once (shape-generic)
    batched = _rate(lambda: cam(x, batch_size=args.batch_size), args.n, args.repeats)
    single = _rate(lambda: [cam(x[i:i + 1], batch_size=1) for i in range(args.n)], args.n,
                   args.repeats)
    # What a caller gets from compute_cam per film: a new method object (and graph) each call.
    k = min(args.n, 4)
    tf.get_logger().setLevel("ERROR")  # its retracing notice is what this row measures
    naive = _rate(lambda: [compute_cam(model, x[i:i + 1], method=args.method) for i in range(k)],
                  k, 1)
    tf.get_logger().setLevel("WARNING")
    infer = tf.function(lambda t: model(t, training=False))
    infer(x[:1])  # trace once
    fwd_batched = _rate(lambda: [infer(x[i:i + args.batch_size]).numpy()
                                 for i in range(0, args.n, args.batch_size)], args.n, args.repeats)
    fwd_single = _rate(lambda: [infer(x[i:i + 1]).numpy() for i in range(args.n)], args.n,
                       args.repeats)
    same = np.allclose(cam(x[:4], batch_size=4),
                       np.concatenate([cam(x[i:i + 1]) for i in range(4)]), atol=1e-4)

    print(f"{args.method} on {args.backbone} {args.size}px, {args.n} images, "
          f"{os.cpu_count()} CPUs (best of {args.repeats})")
    print(f"  batched (batch {args.batch_size}): {batched:8.2f} maps/s")
    print(f"  one at a time:        {single:8.2f} maps/s")
    print(f"  compute_cam per film: {naive:8.2f} maps/s (retraces each call; {k} films)")
    print(f"  batched / one at a time: {batched / single:6.2f}x (issue 5 target: >= 5x); maps equal: "
          f"{same}")
    print(f"  batched / compute_cam per film: {batched / naive:6.1f}x (counts graph building, so not "
          f"the target's comparison)")
    print(f"  ceiling, inference alone: {fwd_batched:8.2f} images/s batched, {fwd_single:8.2f} "
          f"one at a time ({fwd_batched / fwd_single:.2f}x); batched maps at "
          f"{batched / fwd_batched:.0%} of batched inference")


if __name__ == "__main__":
    main()
