"""Write the synthetic chest X-ray DICOM set the demo and tests run on.

Usage: python scripts/make_sample_data.py [--out sample_data] [--patients N] [--seed S]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without install

from medtl.data.synthetic import make_sample_data  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="sample_data", help="output folder (default: sample_data)")
    parser.add_argument("--patients", type=int, default=60, help="number of patients (default: 60)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--uncompressed", action="store_true",
                        help="store every file uncompressed (default: mix in JPEG 2000 and RLE)")
    args = parser.parse_args(argv)
    csv_path = make_sample_data(args.out, n_patients=args.patients, seed=args.seed,
                                compressed=not args.uncompressed)
    n_files = sum(1 for _ in csv_path.open()) - 1
    print(f"wrote {n_files} DICOM files and {csv_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
