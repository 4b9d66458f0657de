"""The ``medtl`` command: a thin layer over the public API.

Every subcommand has ``--help`` with an example. Errors print one line and exit non-zero;
``--debug`` shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path
from typing import Callable, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


def _not_yet(name: str, issue: int) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        raise CommandError(f"'medtl {name}' is not implemented yet (tracked in issue {issue})")

    return run


def _load_cfg(args: argparse.Namespace):
    from medtl.config import load_config

    return load_config(args.config, overrides=args.set or ())


# --- subcommands -----------------------------------------------------------------------------


def cmd_inspect(args: argparse.Namespace) -> int:
    from medtl.data.inspect import format_report, inspect_data

    report = inspect_data(args.target)
    print(format_report(report))
    return 1 if report.n_errors else 0


def cmd_train(args: argparse.Namespace) -> int:
    cfg = _load_cfg(args)  # before the TensorFlow import: config errors come back at once
    from medtl.train.trainer import train

    result = train(cfg, resume=args.resume, progress=not args.quiet)
    print(f"run folder: {result.run_dir}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from medtl.train.predict import collect_paths, predict_paths

    paths = collect_paths(args.inputs)
    if not paths:
        raise CommandError(f"no DICOM/PNG/JPEG files found in {' '.join(args.inputs)}")
    df = predict_paths(args.model, paths, batch_size=args.batch_size)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    n_err = int(df["error"].notna().sum()) if "error" in df.columns else 0
    print(f"wrote {len(df)} rows to {out}" + (f" ({n_err} unreadable files, see the error column)" if n_err else ""))
    return 1 if n_err else 0


# --- parser ----------------------------------------------------------------------------------


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="run config (YAML)")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.batch_size=8 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser for all subcommands."""
    parser = argparse.ArgumentParser(
        prog="medtl",
        description="Train, cross-validate and explain radiology classifiers from one YAML file.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent(
            """\
            examples:
              medtl inspect sample_data/labels.csv
              medtl train configs/demo.yaml --set train.batch_size=8
              medtl predict runs/demo/20260101-120000 new_films/ --out predictions.csv
            """
        ),
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    from medtl import __version__

    parser.add_argument("--version", action="version", version=f"medtl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help_: str, example: str, func: Callable) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=func)
        return p

    p = add(
        "inspect",
        "summarise a dataset: classes, patients, image sizes, DICOM headers and unreadable files",
        "medtl inspect sample_data/labels.csv",
        cmd_inspect,
    )
    p.add_argument("target", help="labels CSV, class-per-folder tree, or run config YAML")

    p = add(
        "train",
        "fine-tune a backbone in stages and save the best model in a run folder",
        "medtl train configs/demo.yaml --set train.stages.0.epochs=2",
        cmd_train,
    )
    _add_config(p)
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = add(
        "predict",
        "score new DICOM/PNG/JPEG files with a trained run, using its training-time preprocessing",
        "medtl predict runs/demo/20260101-120000 new_films/ --out predictions.csv",
        cmd_predict,
    )
    p.add_argument("model", help="run folder or model.keras file")
    p.add_argument("inputs", nargs="+", help="files or folders (searched recursively)")
    p.add_argument("--out", default="predictions.csv", help="output CSV (default: predictions.csv)")
    p.add_argument("--batch-size", type=int, default=16)

    p = add("cv", "patient-grouped k-fold cross-validation (not yet implemented)", "medtl cv configs/demo.yaml", _not_yet("cv", 4))
    _add_config(p)
    p = add(
        "evaluate",
        "score a trained run on an external test set (not yet implemented)",
        "medtl evaluate runs/demo/20260101-120000 external.csv --out eval/",
        _not_yet("evaluate", 4),
    )
    p.add_argument("model")
    p.add_argument("data")
    p = add(
        "report",
        "write the self-contained HTML report of a run (not yet implemented)",
        "medtl report runs/demo/20260101-120000 --out report.html",
        _not_yet("report", 5),
    )
    p.add_argument("run")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medtl`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("medtl: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place that turns errors into one line
        if args.debug:
            raise
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        print(f"medtl {args.command}: error: {lines[0]}", file=sys.stderr)
        # A multi-line message is a list (e.g. every unreadable file): show it, never drop it.
        for line in lines[1:]:
            print(f"  {line}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
