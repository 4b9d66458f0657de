"""The ``medtl`` command: a thin layer over the public API (:mod:`medtl.api`, one function per
subcommand, with the same arguments): each subcommand calls its function and prints the result.

Every subcommand has ``--help`` with an example. Errors print one line and exit non-zero;
``--debug`` shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Callable, Iterator, Sequence, TextIO

from medtl import __version__, api  # api imports nothing heavy until a command runs
from medtl.registry import map_methods, method_label

_TTA_MODES = ("none", "flip", "shift", "flip+shift")  # medtl.run.tta.TTA_MODES, without importing TensorFlow

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class _NoRetracingNotice(logging.Filter):
    """Drops TensorFlow's "triggered tf.function retracing" notice: CV, the ensemble and the
    CAMs run several models (each traces its own predict function), which is expected and
    costs nothing per image, but the notice tells users to restructure their code."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


logging.getLogger("tensorflow").addFilter(_NoRetracingNotice())


@contextlib.contextmanager
def _plain_warnings(category: type[Warning]) -> Iterator[None]:
    """Inside: warnings of ``category`` are printed at once as their bare message on standard
    error, the one-line form the command uses; other warnings are shown as usual."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", category)
        shown = warnings.showwarning

        def show(message: Warning | str, cat: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:
            if issubclass(cat, category):
                print(message, file=sys.stderr)
            else:
                shown(message, cat, filename, lineno, file, line)

        warnings.showwarning = show
        yield


# --- subcommands: each calls its function of medtl.api and prints what it returns ------------


def cmd_inspect(args: argparse.Namespace) -> int:
    from medtl.data.inspect import format_report  # loads when a command runs: `medtl --help` stays quick

    report = api.inspect(args.target)
    print(format_report(report))
    return 0 if report.ok else 1


def cmd_init(args: argparse.Namespace) -> int:
    path = api.init(args.data, args.out, force=args.force, path_column=args.path_column,
                    label_column=args.label_column, patient_column=args.patient_column,
                    label_separator=args.label_separator)
    header = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line.lstrip("# "))
    print(f"wrote {path}")
    print("\n".join(f"  {line}" for line in header[1:]))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    # The no-patient-ids warning comes before training starts, as one line.
    with _plain_warnings(api.NoPatientIdsWarning):
        result = api.train(args.config, overrides=args.set, resume=args.resume, progress=not args.quiet)
    print(f"run folder: {result.run_dir}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from medtl.run.predictor import TTAMismatchWarning  # loads when a command runs: `medtl --help` stays quick

    out = Path(args.out)
    with _plain_warnings(TTAMismatchWarning):  # threshold chosen under other test-time views: one line
        df = api.predict(args.model, args.inputs, out=out, batch_size=args.batch_size, dicom_sr=args.dicom_sr,
                         site=args.site, tta=args.tta)
    n_err = int((df["error"].fillna("") != "").sum()) if "error" in df.columns else 0
    print(f"wrote {len(df)} rows to {out} (threshold: {df.attrs['threshold_source']})")
    shift = df.attrs.get("shift")
    if shift is not None:
        from medtl.evaluate.formatting import format_shift  # loads when a command runs: `medtl --help` stays quick

        print(format_shift(shift))
        if shift.get("warning"):
            print(f"WARNING {shift['warning']}", file=sys.stderr)
    if n_err:
        print(f"{n_err} unreadable file(s); their reasons are in the error column", file=sys.stderr)
    return 1 if n_err else 0


def cmd_cv(args: argparse.Namespace) -> int:
    from medtl.evaluate.cv import format_cv  # loads when a command runs: `medtl --help` stays quick

    if args.merge:
        print(format_cv(api.cv(merge=args.merge)))
        return 0
    run = api.cv(args.config, overrides=args.set, fold=args.fold, run=args.run, progress=not args.quiet)
    if args.fold is not None:
        print(f"fold {args.fold} done in {run}; pool finished folds with: medtl cv --merge {run}")
        from medtl.config import load_config  # loads when a command runs: `medtl --help` stays quick

        if load_config(args.config, overrides=args.set or ()).evaluate.final_model == "retrain":
            again = shlex.join(["medtl", "cv", args.config, *[a for s in args.set or () for a in ("--set", s)],
                                "--run", str(run)])
            print(f"evaluate.final_model is retrain: once every fold is done, `{again}` "
                  "trains the final model on all images")
    elif args.quiet:
        print(format_cv(api.cv(merge=run)))
    print(f"run folder: {run}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from medtl.evaluate.external import format_external  # loads when a command runs: `medtl --help` stays quick
    from medtl.run.predictor import TTAMismatchWarning  # loads when a command runs: `medtl --help` stays quick

    with _plain_warnings(TTAMismatchWarning):  # threshold chosen under other test-time views: one line
        metrics = api.evaluate(args.model, args.data, args.out, progress=not args.quiet,
                               recalibrate=args.recalibrate, site_calibration=args.site_calibration,
                               report=not args.no_report, tta=args.tta)
    print(format_external(metrics))
    site = " and site_postprocess.json" if args.recalibrate is not None else ""
    page = Path(args.out) / "report.html"
    shown = f", {page}" if not args.no_report and page.is_file() else ""
    print(f"wrote {Path(args.out) / 'metrics.json'}, {Path(args.out) / 'predictions.csv'}{shown}{site}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from medtl.evaluate.external import format_compare  # loads when a command runs: `medtl --help` stays quick

    print(format_compare(api.compare(args.run_a, args.run_b)))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from medtl.report.html import ReportWarning  # loads when a command runs: `medtl --help` stays quick

    # The API warns for each gallery case it could not make; the command prints each as one
    # line and exits 1, so a script sees an incomplete report.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ReportWarning)
        path = api.report(args.run, args.out, pdf=args.pdf, cams=not args.no_cams, compare=args.compare,
                          annotations=args.annotations)
    print(f"report: {path}")
    if args.pdf:
        print(f"pdf: {path.with_suffix('.pdf')}")
    incomplete = [w for w in caught if issubclass(w.category, ReportWarning)]
    for w in caught:
        if w in incomplete:
            print(f"warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return 1 if incomplete else 0


def cmd_export(args: argparse.Namespace) -> int:
    path = api.export(args.run, args.out, format=args.format, overwrite=args.overwrite)
    print(f"exported: {path}")
    print(f"sidecar: {Path(args.out) / 'medtl_export.json'} (classes, thresholds, calibration, input size "
          "and pixel settings)")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from medtl.explain.files import OFF_FILM_NOTE  # loads when a command runs: `medtl --help` stays quick

    df = api.explain(args.model, args.inputs, args.out, method=args.method, target_layer=args.target_layer,
                     class_name=args.class_name, save_maps=args.save_maps, patch=args.patch, stride=args.stride,
                     keep_names=args.keep_names, dicom_out=args.dicom_out)
    n_err = int((df["error"].fillna("") != "").sum())
    shown = sorted(set(df["map_class"].fillna("").astype(str)) - {""})
    print(f"wrote {len(df) - n_err} overlays and explanations.csv to {args.out} "
          f"(maps of evidence for: {', '.join(shown) or '-'})")
    off = df["heat_off_film"] >= OFF_FILM_NOTE
    if off.any():
        print(f"note: {int(off.sum())} of {len(df) - n_err} maps put {OFF_FILM_NOTE:.0%} or more of their heat "
              "on the letterbox padding outside the film, which the overlays cannot show; the model may be "
              "reading the padding or the film's edges (heat_off_film in explanations.csv)", file=sys.stderr)
    if n_err:
        first = df.loc[df["error"].fillna("") != "", "error"].iloc[0]
        more = f" and {n_err - 1} more, listed" if n_err > 1 else ""
        print(f"{n_err} unreadable file(s): {first}{more} in the error column of explanations.csv",
              file=sys.stderr)
    return 1 if n_err else 0


def cmd_localise(args: argparse.Namespace) -> int:
    from medtl.explain.localise import format_localisation  # loads when a command runs: `medtl --help` stays quick

    if args.annotations and args.annotations_option and args.annotations != args.annotations_option:
        raise ValueError(f"annotations: given twice ({args.annotations} and --annotations "
                         f"{args.annotations_option}); give one")
    annotations = args.annotations_option or args.annotations
    result = api.localise(args.model, annotations, args.out, method=args.method, hot_fraction=args.hot_fraction,
                          iou_hit=args.iou_hit, iobb_hit=args.iobb_hit, n_boot=args.n_boot, seed=args.seed)
    print(format_localisation(result))
    print(f"wrote localisation.json and localisation.csv to {args.out}")
    return 0


def cmd_deid_check(args: argparse.Namespace) -> int:
    hits = api.deid_check(args.run, args.paths, include_local=args.include_local)
    for path, where in hits:
        print(f"{path}: {where} holds an identifying string of a patient of {args.run}")
    if hits:
        print(f"{len(hits)} place(s) with PHI; do not share them", file=sys.stderr)
        return 1
    print(f"no identifying string of the patients of {args.run} found in {' '.join(args.paths)}")
    return 0


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
        "init",
        "look at a labels CSV or class-per-folder tree and write a commented starter config for it",
        "medtl init sample_data/labels.csv --out sample.yaml",
        cmd_init,
    )
    p.add_argument("data", help="labels CSV, folder with labels.csv, or folder with one sub-folder per class")
    p.add_argument("--out", default="config.yaml", help="config file to write (default: config.yaml)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--path-column", metavar="NAME", help="CSV column with the image paths (default: guessed)")
    p.add_argument("--label-column", metavar="NAME[,NAME...]",
                   help="CSV column with the class, or several 0/1 finding columns separated by commas "
                        "(multilabel; default: guessed)")
    p.add_argument("--patient-column", metavar="NAME",
                   help="CSV column with patient ids, or none (default: guessed)")
    p.add_argument("--label-separator", metavar="SEP",
                   help="the label column holds finding names joined by SEP, e.g. '|' (NIH ChestX-ray14): "
                        "a multilabel config")

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
    p.add_argument("--dicom-sr", metavar="DIR",
                   help="also write a DICOM Structured Report per DICOM film into DIR, for the hospital's own "
                        "PACS: it keeps the patient's identity, never share it (needs medtl[dicom])")
    p.add_argument("--site", metavar="FILE",
                   help="site post-processing from `medtl evaluate RUN DATA --recalibrate K` "
                        "(site_postprocess.json): its threshold (and calibrator) replace the run's")
    p.add_argument("--tta", choices=_TTA_MODES, default=None,
                   help="test-time augmentation: scores averaged over these views (default: the run's "
                        "predict.tta; a mode other than the one its threshold was chosen under warns)")

    p = add(
        "cv",
        "patient-grouped, stratified k-fold cross-validation with an honest pooled estimate",
        "medtl cv configs/demo.yaml            # all folds, resumes an interrupted run\n"
        "  medtl cv configs/demo.yaml --fold 2   # one fold, e.g. one job of a cluster array\n"
        "  medtl cv configs/demo.yaml --merge runs/demo/cv-1a2b3c4d5e",
        cmd_cv,
    )
    p.add_argument("config", nargs="?", help="run config (YAML); not needed with --merge")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--fold", type=int, help="run only this fold (0 .. folds-1)")
    p.add_argument("--run", metavar="DIR", help="run folder (default: derived from the config)")
    p.add_argument("--merge", metavar="RUN", help="pool the finished folds of RUN and print the metrics")
    p.add_argument("--quiet", action="store_true", help="no progress output")

    p = add(
        "evaluate",
        "score a trained run on an external test set with its saved threshold",
        "medtl evaluate runs/demo/cv-1a2b3c4d5e external/labels.csv --out eval/",
        cmd_evaluate,
    )
    p.add_argument("model", help="CV run, training run folder or model.keras")
    p.add_argument("data", help="labels CSV, class-per-folder tree or config YAML of the test set")
    p.add_argument("--out", required=True, help="output folder for metrics.json and predictions.csv")
    p.add_argument("--recalibrate", type=int, metavar="K",
                   help="refit the threshold on K local patients, report the other patients before/after and "
                        "write OUT/site_postprocess.json for medtl predict --site")
    p.add_argument("--site-calibration", choices=("none", "platt", "temperature"), default="none",
                   help="with --recalibrate, also fit this calibrator on the run's scores (default: none)")
    p.add_argument("--tta", choices=_TTA_MODES, default=None,
                   help="test-time augmentation: scores averaged over these views (default: the run's "
                        "predict.tta; a mode other than the one its threshold was chosen under warns)")
    p.add_argument("--no-report", action="store_true",
                   help="do not write OUT/report.html (the shift warning, metrics, score distribution and films "
                        "to refer as one self-contained page; `medtl report OUT` writes it later)")
    p.add_argument("--quiet", action="store_true")

    p = add(
        "compare",
        "paired comparison of two runs' pooled ROC AUC (DeLong and patient bootstrap)",
        "medtl compare runs/a/cv-1a2b runs/b/cv-3c4d",
        cmd_compare,
    )
    p.add_argument("run_a")
    p.add_argument("run_b")

    p = add(
        "report",
        "write the self-contained, de-identified HTML report of a run",
        "medtl report runs/demo/cv-1a2b3c4d5e --out report.html",
        cmd_report,
    )
    p.add_argument("run", help="CV run or training run folder, or the --out folder of medtl evaluate")
    p.add_argument("--out", help="output HTML file (default: RUN/report.html)")
    p.add_argument("--pdf", action="store_true", help="also write a PDF (needs weasyprint or chromium)")
    p.add_argument("--no-cams", action="store_true", help="skip the heat-map gallery (faster)")
    p.add_argument("--compare", choices=map_methods(),
                   help="also map each gallery case with this method, beside the first map "
                        "(default: the run's report.compare)")
    p.add_argument("--annotations", metavar="CSV",
                   help="boxes (file, x, y, w, h in the film's pixels) or masks (file, mask) to score the maps "
                        "against in the report's localisation section (default: the run's data.annotations)")

    p = add(
        "export",
        "export a run (a CV ensemble as one graph) as SavedModel, ONNX or LiteRT, with a sidecar JSON",
        "medtl export runs/demo/cv-1a2b3c4d5e --format onnx --out deploy/",
        cmd_export,
    )
    p.add_argument("run", help="CV run, training run folder or model.keras")
    p.add_argument("--format", choices=["savedmodel", "onnx", "litert"], default="savedmodel",
                   help="savedmodel (a TF SavedModel folder), onnx (needs medtl[export]) or litert (.tflite); "
                        "default: savedmodel")
    p.add_argument("--out", required=True, help="output folder for the model and medtl_export.json")
    p.add_argument("--overwrite", action="store_true", help="replace an export of this format in --out")

    p = add(
        "explain",
        f"write {' / '.join(map(method_label, map_methods()))} overlays for given files",
        "medtl explain runs/demo/cv-1a2b3c4d5e sample_data/images/P0001_1.dcm --out cams/",
        cmd_explain,
    )
    p.add_argument("model", help="CV run, training run folder or model.keras")
    p.add_argument("inputs", nargs="+", help="files or folders (searched recursively)")
    p.add_argument("--out", required=True, help="output folder for the overlay PNGs")
    p.add_argument("--method", choices=map_methods(), help="default: the run's report.cam")
    p.add_argument("--target-layer", help="layer for the gradient methods (default: last feature map)")
    p.add_argument("--class", dest="class_name", metavar="NAME",
                   help="class to map the evidence for, or 'predicted' (binary: the class decided at the "
                        "threshold); default: binary, the positive class; multiclass, the predicted class; "
                        "multilabel, the highest-scoring label")
    p.add_argument("--save-maps", action="store_true",
                   help="also write each map at the film's resolution as a 16-bit greyscale PNG "
                        "(<name>_map.png, 65535 = the map's peak), to measure localisation against your "
                        "own annotations")
    p.add_argument("--patch", type=float, metavar="F",
                   help="occlusion only: patch side as a fraction of the image side, about the finding's "
                        "size (default: the run's report.occlusion_patch, 0.125)")
    p.add_argument("--stride", type=float, metavar="F",
                   help="occlusion only: step as a fraction of the image side; smaller is finer and slower "
                        "(default: the run's report.occlusion_stride, half the patch)")
    p.add_argument("--keep-names", action="store_true",
                   help="name overlays after the input files (default: a salted hash of each path, so no "
                        "patient name or id in a file name reaches them)")
    p.add_argument("--dicom-out", metavar="DIR",
                   help="also write each DICOM film's overlay as a Secondary Capture in its study into DIR, for "
                        "the hospital's own PACS: it keeps the patient's identity, never share it "
                        "(needs medtl[dicom])")

    p = add(
        "localise",
        "score whether the heat maps point at annotated findings (pointing game, heat in box, IoU / IoBB), "
        "with patient-bootstrap intervals beside chance baselines",
        "medtl localise runs/demo/cv-1a2b3c4d5e sample_data/boxes.csv --out loc/ --method gradcam "
        "--method occlusion",
        cmd_localise,
    )
    p.add_argument("model", help="CV run, training run folder or model.keras (binary, multiclass or multilabel)")
    p.add_argument("annotations", nargs="?",
                   help="CSV of boxes (file, x, y, w, h in the film's pixels) or masks (file, mask), with a "
                        "label column naming the class for a multiclass or multilabel run; default: the run's "
                        "data.annotations")
    p.add_argument("--annotations", dest="annotations_option", metavar="CSV",
                   help="the annotations CSV as an option, as medtl report takes it")
    p.add_argument("--out", required=True, help="output folder for localisation.json and localisation.csv")
    p.add_argument("--method", action="append", choices=map_methods(),
                   help="map method (repeatable; default: the run's report.cam and report.compare)")
    p.add_argument("--hot-fraction", type=float, default=0.5, metavar="F",
                   help="hot region for IoU / IoBB: pixels at or above F of the map's maximum (default 0.5)")
    p.add_argument("--iou-hit", type=float, default=0.3, help="IoU above this is a hit (default 0.3)")
    p.add_argument("--iobb-hit", type=float, default=0.1, help="IoBB above this is a hit (default 0.1)")
    p.add_argument("--bootstrap", dest="n_boot", type=int, default=1000, metavar="N",
                   help="patient-bootstrap replicates (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="the bootstrap's seed (default 0)")

    p = add(
        "deid-check",
        "look for a run's patients (names, ids, film names, DICOM PHI) in files you mean to share",
        "medtl deid-check runs/demo/cv-1a2b3c4d5e share/",
        cmd_deid_check,
    )
    p.add_argument("run", help="CV run or training run folder whose patients to look for")
    p.add_argument("paths", nargs="+", help="files or folders to check")
    p.add_argument("--include-local", action="store_true",
                   help="also check the run's own tables that list the films (folds.csv, predictions ...)")
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
        if isinstance(exc, OSError) and exc.filename and exc.strerror:  # raised by the OS, not by medtl
            lines = [f"{exc.filename}: {exc.strerror}; check the path and its permissions"]
        print(f"medtl {args.command}: error: {lines[0]}", file=sys.stderr)
        # A multi-line message is a list (e.g. every unreadable file): show it, never drop it.
        for line in lines[1:]:
            print(f"  {line}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
