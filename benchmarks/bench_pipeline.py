"""Input pipeline speed: a plain pydicom loop vs medtl's first (decoding) and cached epochs.

Prints images per second, from one run, for:

1. plain: a single-process loop of ``pydicom.dcmread`` + ``pixel_array`` + ``cv2.resize``
   (no windowing, no cache, no batching: the least a loader can do);
2. medtl first epoch: ``ImagePipeline(cfg)``, ``prepare`` (parallel decode, window, letterbox,
   write the cache) and one full pass over ``dataset(training=True)``. The decoder processes'
   server is started before the plain loop, as ``medtl train``/``cv`` start it before they
   import TensorFlow; ``--cold-server`` leaves it to the first pipeline instead (~0.1 s more);
3. medtl cached epoch: the same with a fresh ``ImagePipeline`` over the warm cache, after
   clearing the in-process hash memo (so it finds entries the way a new process would).

Files are read once before timing so every variant starts from the OS page cache.
Without ``--data`` it writes a synthetic DICOM set (medtl.data.synthetic) to a temporary folder.

Usage:
    python benchmarks/bench_pipeline.py                       # ~300 synthetic 512 px DICOMs -> 224
    python benchmarks/bench_pipeline.py --data sample_data/labels.csv --size 224
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _plain_loop(paths: list[str], size: int) -> None:
    import cv2
    import numpy as np
    import pydicom

    for p in paths:
        arr = pydicom.dcmread(p).pixel_array.astype(np.float32)
        cv2.resize(arr, (size, size), interpolation=cv2.INTER_AREA)


def _epoch(cfg, manifest, workers: int | None) -> tuple[float, int]:
    from medtl.data.pipeline import ImagePipeline

    t0 = time.perf_counter()
    pipe = ImagePipeline(cfg, workers=workers)
    m = pipe.prepare(manifest)
    n = 0
    for x, _ in pipe.dataset(m, training=True, epoch=0):
        n += int(x.shape[0])
    return time.perf_counter() - t0, n


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="labels CSV of a DICOM set (default: write a synthetic one)")
    ap.add_argument("--patients", type=int, default=120, help="synthetic patients (2-3 films each)")
    ap.add_argument("--source-size", type=int, default=512, help="synthetic film size in pixels")
    ap.add_argument("--size", type=int, default=224, help="model input size")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None, help="decoding processes (default: one per core)")
    ap.add_argument("--workdir", help="keep the synthetic data here and reuse it on later runs")
    ap.add_argument("--augment", default="none", choices=["none", "light", "chest_xray"],
                    help="augmentation in the medtl epochs (the plain loop has none)")
    ap.add_argument("--cold-server", action="store_true",
                    help="do not start the decoder server early (as a script that builds a pipeline at once)")
    args = ap.parse_args(argv)

    # Imports and TensorFlow's one-off runtime start happen before timing, as for the plain loop.
    import cv2  # noqa: F401
    import pydicom  # noqa: F401
    from medtl.tfimport import import_tensorflow

    import_tensorflow()  # without TensorFlow's C++ start-up lines, as the medtl command
    import tensorflow as tf

    import medtl.data.pipeline  # noqa: F401  (albumentations, tf)
    from medtl.config import config_from_dict
    from medtl.data.cache import clear_memo
    from medtl.data.pool import default_workers, start_decoder_server
    from medtl.data.manifest import load_manifest

    probe = tf.data.Dataset.range(4).map(lambda i: tf.numpy_function(lambda a: a, [i], tf.int64))
    list(probe.prefetch(1))

    tmp = Path(tempfile.mkdtemp(prefix="medtl-bench-"))
    try:
        if args.data:
            csv_path = Path(args.data)
        else:
            from medtl.data.synthetic import make_sample_data

            data_dir = Path(args.workdir) if args.workdir else tmp / "data"
            csv_path = data_dir / "labels.csv"
            stamp = data_dir / f".made-{args.patients}-{args.source_size}"
            if not stamp.exists():
                t0 = time.perf_counter()
                make_sample_data(data_dir, n_patients=args.patients, seed=0, image_size=(args.source_size, args.source_size))
                stamp.touch()
                print(f"wrote {data_dir} in {time.perf_counter() - t0:.1f} s")
        cfg = config_from_dict({
            "seed": 0,
            "data": {
                "manifest": str(csv_path.resolve()), "patient_column": "patient_id",
                "image_size": [args.size, args.size], "cache_dir": str(tmp / "cache"),
                **({"classes": ["normal", "lesion"]} if not args.data else {}),
            },
            "augment": {"preset": args.augment},
            "train": {"batch_size": args.batch},
        })
        manifest = load_manifest(cfg)
        paths = manifest.paths
        for p in paths:  # page cache warm for everyone
            Path(p).read_bytes()

        if not args.cold_server:
            start_decoder_server()
        t0 = time.perf_counter()
        _plain_loop(paths, args.size)
        t_plain = time.perf_counter() - t0
        t_first, n1 = _epoch(cfg, manifest, args.workers)
        clear_memo()
        t_cached, n2 = _epoch(cfg, manifest, args.workers)
        assert n1 == n2 == len(paths), (n1, n2, len(paths))

        n = len(paths)
        ips = {k: n / t for k, t in (("plain", t_plain), ("first", t_first), ("cached", t_cached))}
        load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
        print(f"{n} DICOM files -> {args.size}x{args.size}, batch {args.batch}, augment {args.augment}, "
              f"{default_workers(args.workers)} workers, {os.cpu_count()} CPUs, load average {load[0]:.2f}, "
              f"decoder server started {'by the first pipeline' if args.cold_server else 'early'}")
        print(f"  plain pydicom loop    {ips['plain']:9.1f} images/s  ({t_plain:.2f} s)")
        print(f"  medtl first epoch     {ips['first']:9.1f} images/s  ({t_first:.2f} s)")
        print(f"  medtl cached epoch    {ips['cached']:9.1f} images/s  ({t_cached:.2f} s)")
        print(f"  first / plain  = {ips['first'] / ips['plain']:.2f}x   (target >= 1.6x on 2 cores)")
        print(f"  cached / first = {ips['cached'] / ips['first']:.2f}x   (target >= 10x)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
