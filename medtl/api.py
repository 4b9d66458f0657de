"""The ``medtl`` commands as Python functions: one per subcommand, named after it.

Each function takes the command's arguments (``--set`` is ``overrides``, ``--quiet`` is
``progress=False``, ``--no-cams`` is ``cams=False``, ``--no-report`` is ``report=False``) and
returns what the command prints from, as a value. ``medtl.cli`` only parses arguments, calls
these and prints; errors it shows as one line are raised here as exceptions with that line as
their message.

This module imports nothing heavy at import time (``import medtl.api`` loads neither
TensorFlow nor scipy): each function imports the layer it drives when called.

Example:
    >>> import medtl
    >>> medtl.init("sample_data/labels.csv", out="sample.yaml", force=True)
    PosixPath('sample.yaml')
    >>> run = medtl.cv("sample.yaml", overrides=["evaluate.folds=2"], progress=False)
    >>> medtl.report(run)
    PosixPath('runs/sample/cv-1a2b3c4d5e/report.html')
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence, Union

from medtl.data.pool import start_decoder_server  # stdlib only
from medtl.tfimport import import_tensorflow  # imports nothing heavy until called

if TYPE_CHECKING:
    import pandas as pd

    from medtl.config import Config
    from medtl.data.inspect import InspectReport
    from medtl.train.trainer import TrainResult

__all__ = ["inspect", "init", "train", "cv", "predict", "evaluate", "compare", "explain", "report",
           "localise", "deid_check", "export", "NoPatientIdsWarning"]

PathLike = Union[str, "os.PathLike[str]"]
ConfigLike = Union[PathLike, "Config"]


class NoPatientIdsWarning(UserWarning):
    """The config has no patient ids (``data.patient_column: none``): splits may share patients."""


# --- helpers ---------------------------------------------------------------------------------


def _config(config: ConfigLike, overrides: Iterable[str] | str | None) -> Config:
    """A validated Config from a YAML path or a Config, with ``key=value`` overrides applied."""
    from medtl.config import Config, config_from_dict, load_config  # why: scipy (threshold rules), 0.7 s

    over = [overrides] if isinstance(overrides, str) else list(overrides or ())
    if isinstance(config, Config):
        # Its paths are already resolved, so the overrides are applied without a base folder.
        return config_from_dict(config.to_dict(), overrides=over) if over else config
    return load_config(config, overrides=over)


def _start_up() -> None:
    """Start the decoder processes' server (it imports pydicom while this process imports
    TensorFlow), then import TensorFlow without its C++ start-up lines."""
    start_decoder_server()
    import_tensorflow()


def _image_paths(inputs: PathLike | Sequence[PathLike]) -> list[str]:
    """The image files under ``inputs`` (files or folders, searched recursively); at least one."""
    from medtl.run.predictor import collect_paths  # why: pandas; keeps `import medtl.api` light

    given = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    paths = collect_paths(given)
    if not paths:
        raise FileNotFoundError(f"no DICOM/PNG/JPEG files found in {' '.join(map(str, given))}")
    return paths


# --- one function per command ----------------------------------------------------------------


def inspect(target: PathLike) -> InspectReport:
    """Summarise a dataset and try to decode every file, as ``medtl inspect`` does.

    Args:
        target: a labels CSV, a class-per-folder tree, a folder of images, or a run config YAML.

    Returns:
        The :class:`~medtl.data.inspect.InspectReport`: classes, patients, sizes, DICOM headers;
        ``report.ok`` is False when a file is unreadable or the dataset has a problem
        (``report.errors``, ``report.problems``). ``medtl.data.inspect.format_report`` gives the
        command's text.

    Example:
        >>> report = medtl.inspect("sample_data/labels.csv")
        >>> report.ok, report.class_counts
        (True, {'normal': 96, 'lesion': 24})
    """
    from medtl.data.inspect import inspect_data  # why: pandas and the decoders; loaded when used

    return inspect_data(target)


def init(data: PathLike, out: PathLike = "config.yaml", force: bool = False, path_column: str | None = None,
         label_column: str | Sequence[str] | None = None, patient_column: str | None = None,
         label_separator: str | None = None) -> Path:
    """Look at a dataset and write a commented starter config for it, as ``medtl init`` does.

    Args:
        data: a labels CSV, a folder with ``labels.csv``, or a folder with one sub-folder per class.
        out: the config file to write.
        force: overwrite ``out`` if it exists.
        path_column: CSV column with the image paths (default: guessed).
        label_column: CSV column with the class, or several 0/1 finding columns (a list, or
            names separated by commas) for a multilabel config (default: guessed).
        patient_column: CSV column with patient ids, or ``"none"`` (default: guessed).
        label_separator: the label column holds finding names joined by this, e.g. ``"|"``.

    Returns:
        The path of the config written.

    Raises:
        FileExistsError: ``out`` exists and ``force`` is False.

    Example:
        >>> medtl.init("sample_data/labels.csv", out="sample.yaml")
        PosixPath('sample.yaml')
    """
    from medtl.init import write_starter_config  # why: pandas and the config; loaded when used

    label: Any = label_column
    if isinstance(label, str) and "," in label:  # several 0/1 finding columns: a multilabel config
        label = [c.strip() for c in label.split(",")]
    elif label is not None and not isinstance(label, str):
        label = list(label)
    columns = {"path_column": path_column, "patient_column": patient_column, "label_column": label,
               "label_separator": label_separator}
    return write_starter_config(data, out, force=force, columns=columns)


def train(config: ConfigLike, overrides: Iterable[str] | None = None, resume: PathLike | None = None,
          progress: bool = True) -> TrainResult:
    """Fine-tune the config's backbone in stages into a run folder, as ``medtl train`` does.

    Warns (:class:`NoPatientIdsWarning`) before training when the config has no patient ids:
    the validation split may then share patients with training. For a given manifest, split
    or run folder, use :func:`medtl.train.trainer.train`.

    Args:
        config: a run config YAML file or a :class:`~medtl.config.Config`.
        overrides: ``key=value`` strings applied to it, as ``--set`` takes them.
        resume: a run folder to continue from its last completed epoch.
        progress: print stage headers and per-epoch progress.

    Returns:
        The :class:`~medtl.train.trainer.TrainResult` (``run_dir``, ``model``, ``history``,
        ``metrics``, ``val_predictions``).

    Raises:
        ConfigError: the config is missing or has a bad key or value (before TensorFlow loads).

    Example:
        >>> result = medtl.train("configs/demo.yaml", overrides=["train.stages.0.epochs=2"])
        >>> result.run_dir
        PosixPath('runs/demo/20260101-120000')
    """
    cfg = _config(config, overrides)  # before the TensorFlow import: config errors come back at once
    from medtl.evaluate.cv import NO_PATIENTS_WARNING, has_patient_ids  # why: scipy, pandas

    if not has_patient_ids(cfg):
        warnings.warn(NO_PATIENTS_WARNING, NoPatientIdsWarning, stacklevel=2)
    _start_up()
    from medtl.train import trainer  # why: loads TensorFlow; looked up here so tests can replace train

    return trainer.train(cfg, resume=resume, progress=progress)


def cv(config: ConfigLike | None = None, overrides: Iterable[str] | None = None, fold: int | None = None,
       run: PathLike | None = None, merge: PathLike | None = None,
       progress: bool = True) -> Path | dict[str, Any]:
    """Patient-grouped, stratified k-fold cross-validation, as ``medtl cv`` does.

    Args:
        config: a run config YAML file or a :class:`~medtl.config.Config`; not needed with ``merge``.
        overrides: ``key=value`` strings applied to it, as ``--set`` takes them.
        fold: run only this fold (0 .. folds-1), e.g. as one job of a cluster array.
        run: the run folder (default: derived from the config); an existing one is continued.
        merge: instead of running, pool the finished folds of this run folder.
        progress: print fold headers, the trainer's progress and the final table.

    Returns:
        The run folder; with ``merge``, the pooled metrics dict (``pooled``, ``pooled_ci``,
        ``per_fold`` ...; ``medtl.format_cv`` makes the command's table of it).

    Raises:
        ValueError: neither ``config`` nor ``merge`` is given.

    Example:
        >>> run = medtl.cv("configs/demo.yaml", fold=0, progress=False)   # one job of an array
        >>> metrics = medtl.cv(merge=run)                                  # pool what is finished
        >>> metrics["pooled"]["roc_auc"]
        0.87
    """
    if merge:
        from medtl.evaluate.cv import merge_cv  # why: scipy, pandas; loaded when used

        return merge_cv(merge)
    if not config:
        raise ValueError("give a config (medtl cv CONFIG) or a run to pool (medtl cv --merge RUN)")
    cfg = _config(config, overrides)
    _start_up()
    from medtl.evaluate.cv import run_cv  # why: the folds train with TensorFlow

    return run_cv(cfg, run_dir=run, fold=fold, progress=progress)


def predict(model: PathLike, inputs: PathLike | Sequence[PathLike], out: PathLike | None = None,
            batch_size: int = 16, dicom_sr: PathLike | None = None, site: PathLike | None = None,
            tta: str | None = None) -> pd.DataFrame:
    """Score image files with a finished run, using its training-time preprocessing, as
    ``medtl predict`` does.

    Args:
        model: a CV run, a training run or fold folder, or a ``model.keras`` file.
        inputs: files or folders (searched recursively), or one of them.
        out: also write the table to this CSV (folders made as needed); None writes nothing.
        batch_size: images per model call.
        dicom_sr: also write a DICOM Structured Report per DICOM film into this folder (score,
            class, threshold, model name and version; in the film's study, named by
            SOPInstanceUID) and add a ``dicom_sr`` column (the file, or why none was written).
            They keep the patient's identity: for the hospital's own PACS only. Needs
            ``pip install 'medtl[dicom]'``.
        site: a site post-processing file (``site_postprocess.json`` from ``medtl evaluate
            RUN DATA --recalibrate K``): its calibrator (if any) maps the run's scores and its
            threshold decides, instead of the run's.
        tta: test-time augmentation (none, flip, shift, flip+shift); None: the run's
            ``predict.tta``. Another mode than the threshold was chosen under warns
            (:class:`medtl.run.predictor.TTAMismatchWarning`).

    Returns:
        One row per file: ``path``, score column(s), ``prediction`` and ``error`` (a reason for
        unreadable files, which get no scores), and with the run's feature summary ``ood`` and
        ``ood_percentile`` per film. ``df.attrs["threshold_source"]`` says where the decision
        threshold came from; ``df.attrs["shift"]`` holds how far the films lie from the training
        films (domain AUC, share out of range, ``warning``), or None for a run without a summary.

    Raises:
        FileNotFoundError: no image file under ``inputs``, or ``model`` does not exist.

    Example:
        >>> df = medtl.predict("runs/demo/cv-1a2b3c4d5e", ["new_films/"], out="predictions.csv")
        >>> df[["path", "score", "prediction"]].head(1)
    """
    paths = _image_paths(inputs)
    _start_up()
    from medtl.run.predictor import Predictor  # why: pandas; the model loads TensorFlow

    predictor = Predictor(model, site=site, tta=tta)
    df, shift = predictor.predict_with_shift(paths, batch_size=batch_size)
    df.attrs["threshold_source"] = predictor.threshold_source
    df.attrs["shift"] = shift.as_dict() if shift is not None else None
    if dicom_sr is not None:
        from medtl.run.dicom_sr import write_prediction_srs  # why: highdicom, an optional extra

        df = write_prediction_srs(predictor, df, dicom_sr)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(out, index=False)
    return df


def evaluate(model: PathLike, data: ConfigLike, out: PathLike, progress: bool = True,
             recalibrate: int | None = None, site_calibration: str = "none", report: bool = True,
             tta: str | None = None) -> dict[str, Any]:
    """Score a trained run on an external test set with its saved threshold, as
    ``medtl evaluate`` does, and write ``out/report.html``.

    Args:
        model: a CV run, a training run folder or a ``model.keras`` file.
        data: the test set: a labels CSV, a class-per-folder tree, or a config (YAML or Config).
        out: folder for ``metrics.json`` and ``predictions.csv``.
        progress: print progress.
        recalibrate: K: refit the run's threshold (and ``site_calibration``) on K local
            patients, report the other patients before and after with patient-bootstrap
            intervals (``recalibration`` in the metrics) and write ``out/site_postprocess.json``
            for ``predict(..., site=)``. None: the run's post-processing unchanged.
        site_calibration: none, platt or temperature, fitted with ``recalibrate`` on the run's scores.
        report: also write the self-contained HTML report ``out/report.html`` (the shift
            warning or figures first, then the metrics, score distribution, films to refer and
            recalibration; :func:`medtl.report.evaluation.write_evaluation_report`). A page that
            would name a film or patient is not written, and that is warned about
            (:class:`medtl.report.ReportWarning`); the metrics stand.
        tta: test-time augmentation, as for :func:`predict`; None: the run's ``predict.tta``.

    Returns:
        The metrics dict written to ``out/metrics.json`` (``medtl.evaluate.external.format_external``
        makes the command's table of it).

    Example:
        >>> metrics = medtl.evaluate("runs/demo/cv-1a2b3c4d5e", "external/labels.csv", "eval/")
        >>> metrics["roc_auc"]
        0.84
        >>> m = medtl.evaluate("runs/demo/cv-1a2b3c4d5e", "site2/labels.csv", "eval/site2", recalibrate=20)
        >>> m["recalibration"]["after"]["balanced_accuracy"]
    """
    _start_up()
    from medtl.evaluate.external import evaluate_external  # why: scipy, pandas; the model loads TensorFlow

    metrics = evaluate_external(model, data, out, progress=progress, recalibrate=recalibrate,
                                site_calibration=site_calibration, tta=tta)
    if report:
        # why: matplotlib and jinja2 load only when a report is wanted; evaluate cannot import report
        from medtl.report.evaluation import write_evaluation_report
        from medtl.report.html import PHIError, ReportWarning  # why: as above

        try:
            write_evaluation_report(out)
        except PHIError as exc:  # the metrics are written; the page is refused, said in one line
            warnings.warn(ReportWarning(f"{Path(out) / 'report.html'} not written: {exc}"), stacklevel=2)
    return metrics


def compare(run_a: PathLike, run_b: PathLike) -> dict[str, Any]:
    """Paired comparison of two runs' pooled ROC AUC (DeLong and patient bootstrap), as
    ``medtl compare`` does.

    Args:
        run_a: the first run folder.
        run_b: the second run folder.

    Returns:
        The comparison dict (``medtl.evaluate.external.format_compare`` makes the command's text).

    Example:
        >>> result = medtl.compare("runs/a/cv-1a2b", "runs/b/cv-3c4d")
        >>> sorted(result)[:2]
    """
    from medtl.evaluate.external import compare_runs  # why: scipy, pandas; loaded when used

    return compare_runs(run_a, run_b)


def explain(model: PathLike, inputs: PathLike | Sequence[PathLike], out: PathLike, method: str | None = None,
            target_layer: str | None = None, class_name: str | None = None, save_maps: bool = False,
            patch: float | None = None, stride: float | None = None, keep_names: bool = False,
            dicom_out: PathLike | None = None) -> pd.DataFrame:
    """Write heat-map overlays over the original films, as ``medtl explain`` does.

    Args:
        model: a CV run, a training run folder or a ``model.keras`` file.
        inputs: files or folders (searched recursively), or one of them.
        out: folder for the overlay PNGs and ``explanations.csv``.
        method: a map method (``medtl.registry.map_methods()``); default: the run's ``report.cam``.
        target_layer: layer for the gradient methods (default: the last feature map).
        class_name: class to map the evidence for, or ``"predicted"`` (``--class``).
        save_maps: also write each map at the film's resolution as a 16-bit greyscale PNG.
        patch: occlusion patch side as a fraction of the image side (0 < patch <= 1).
        stride: occlusion step as a fraction of the image side (0 < stride <= 1).
        keep_names: name overlays after the input files; by default they are named by a salted
            hash of the input path, so a file name holding a patient's name or id never
            reaches them.
        dicom_out: also write each DICOM film's overlay as a Secondary Capture in the film's
            study into this folder (captioned "research use, not for diagnosis"; files named by
            SOPInstanceUID). They keep the patient's identity: for the hospital's own PACS only.
            PNG/JPEG inputs get a note in the ``dicom_out`` column instead. Needs
            ``pip install 'medtl[dicom]'``.

    Returns:
        The explanations table (also written to ``out/explanations.csv``): one row per file
        with its scores, ``map_class``, ``heat_off_film`` and ``error``.

    Raises:
        ValueError: ``patch`` or ``stride`` is not in (0, 1].
        FileNotFoundError: no image file under ``inputs``.

    Example:
        >>> df = medtl.explain("runs/demo/cv-1a2b3c4d5e", "sample_data/images/P0001_1.dcm", out="cams/")
        >>> df[["path", "map_class"]]
    """
    for flag, value in (("--patch", patch), ("--stride", stride)):
        if value is not None and not 0.0 < value <= 1.0:
            raise ValueError(f"{flag} {value}: expected a fraction of the image side, 0 < F <= 1 (e.g. 0.125)")
    paths = _image_paths(inputs)
    import_tensorflow()
    from medtl.explain.files import explain_paths  # why: matplotlib; the models load TensorFlow

    return explain_paths(model, paths, out, method=method, target_layer=target_layer, class_name=class_name,
                         save_maps=save_maps, patch=patch, stride=stride, keep_names=keep_names,
                         dicom_out=dicom_out)


def localise(model: PathLike, annotations: PathLike | None, out: PathLike, method: Sequence[str] | str | None = None,
             hot_fraction: float = 0.5, iou_hit: float = 0.3, iobb_hit: float = 0.1, n_boot: int = 1000,
             seed: int = 0) -> dict[str, Any]:
    """Score whether a run's heat maps point at annotated findings, as ``medtl localise`` does.

    Per method: the pointing game, the share of heat inside the annotation and IoU / IoBB hit
    rates, each with a patient-bootstrap interval, beside chance baselines (flat map, film
    centre, mean-annotation prior). Only annotated films the run calls positive are scored
    (definitions: :mod:`medtl.stats.localisation`). A multiclass or multilabel run scores each
    box against the map of the class its ``label`` names, on the films the run calls that class,
    with figures per class (``classes``) and over all (film, class) pairs.

    Args:
        model: a CV run, a training run folder or a ``model.keras`` file (binary, multiclass or
            multilabel).
        annotations: a CSV of boxes (file, x, y, w, h in the film's pixels) or masks (file, mask),
            with a ``label`` column naming the class for a non-binary run; None: the run's
            ``data.annotations``.
        out: folder for ``localisation.json`` and the per-film ``localisation.csv``.
        method: one or more map methods (default: the run's ``report.cam`` and ``report.compare``).
        hot_fraction: the hot region for IoU / IoBB, a fraction of the map's maximum (0.5).
        iou_hit: IoU above this is a hit (0.3).
        iobb_hit: IoBB above this is a hit (0.1).
        n_boot: bootstrap replicates.
        seed: the bootstrap's seed.

    Returns:
        The dict written to ``out/localisation.json`` (``medtl.explain.localise.format_localisation``
        makes the command's text of it); ``verdicts`` says per method, in words, whether its maps
        are better than chance.

    Example:
        >>> r = medtl.localise("runs/demo/cv-1a2b3c4d5e", "sample_data/boxes.csv", out="loc/")
        >>> r["verdicts"]["gradcam"]
    """
    methods = [method] if isinstance(method, str) else list(method or [])
    import_tensorflow()
    from medtl.explain.localise import localise_run  # why: the models load TensorFlow

    return localise_run(model, annotations, out, methods=methods, hot_fraction=hot_fraction, iou_hit=iou_hit,
                        iobb_hit=iobb_hit, n_boot=n_boot, seed=seed)


def report(run: PathLike, out: PathLike | None = None, pdf: bool = False, cams: bool = True,
           compare: str | None = None, annotations: PathLike | None = None) -> Path:
    """Write the self-contained, de-identified HTML report of a run, as ``medtl report`` does.

    A gallery film or map that cannot be made is said on the page and warned about
    (:class:`medtl.report.ReportWarning`); the ``medtl report`` command then exits 1. An
    output folder of ``medtl evaluate`` (metrics.json and predictions.csv, no config) gets its
    evaluation report re-rendered instead (``cams`` and ``compare`` do not apply to it).

    Args:
        run: a CV run or training run folder, or a ``medtl evaluate`` output folder.
        out: the HTML file to write (default: ``RUN/report.html``).
        pdf: also write ``<out>.pdf`` (needs weasyprint or chromium).
        cams: draw the heat-map gallery (False is faster: ``--no-cams``).
        compare: also map each gallery case with this method (default: the run's report.compare).
        annotations: a CSV of boxes or masks to score the maps against in the report's "Do the
            maps point at the findings?" section, instead of the run's ``data.annotations``
            (``RUN/localisation/`` is read when it was scored against this CSV, else made again;
            with ``cams=False`` it is only read).

    Returns:
        The path of the HTML file written.

    Example:
        >>> medtl.report("runs/demo/cv-1a2b3c4d5e", out="report.html", cams=False)
        PosixPath('report.html')
    """
    from medtl.run.layout import REPORT_FILE  # why: medtl.run loads pandas and scipy; `import medtl.api` does not

    target = Path(out) if out else Path(run) / REPORT_FILE
    # why: matplotlib and jinja2; loaded when used
    from medtl.report.evaluation import is_evaluation_dir, write_evaluation_report

    if is_evaluation_dir(run):
        path = write_evaluation_report(run, target)
        if pdf:
            from medtl.report.html import export_pdf  # why: as above

            export_pdf(path, path.with_suffix(".pdf"))
        return path
    if cams:  # the fold models are loaded for the heat maps
        import_tensorflow()
    from medtl.report.html import write_report  # why: matplotlib; loaded when used

    return write_report(run, target, pdf=pdf, compute_cams=cams, compare=compare, annotations=annotations)


def export(run: PathLike, out: PathLike, format: str = "savedmodel", overwrite: bool = False) -> Path:
    """Export a run as one inference graph plus a sidecar JSON, as ``medtl export`` does.

    The graph holds the model's own normalisation, every member model (a CV ensemble is one
    graph: the mean of the fold models), each member's calibrator: its output equals
    ``medtl predict``'s score columns. It takes the film as medtl reads it (float32 (N, H, W, 1)
    in [0, 1] after decoding and resizing, which are not graph operations);
    ``OUT/medtl_export.json`` records the classes, thresholds, calibration, input size and pixel
    settings, and is checked for the run's patients before the graph is written.

    Args:
        run: a CV run, a training run or fold folder, or a ``model.keras`` file.
        out: output folder (``saved_model/``, ``model.onnx`` or ``model.tflite``, and the sidecar).
        format: ``savedmodel``, ``onnx`` (needs tf2onnx) or ``litert`` (a ``.tflite`` file).
        overwrite: replace an existing export of this format in ``out``.

    Returns:
        The exported file or folder.

    Raises:
        ValueError: unknown format. ImportError: the format's converter is missing.
        PermissionError: the sidecar would name a patient of the run (nothing is exported).

    Example:
        >>> medtl.export("runs/demo/cv-1a2b3c4d5e", "deploy/", format="onnx")
        PosixPath('deploy/model.onnx')
    """
    import_tensorflow()
    from medtl.report.deid import deid_check as check  # why: loaded when used, like the report
    from medtl.run.export import export_run  # why: builds the graph with Keras (TensorFlow)

    model_run = Path(run) if Path(run).is_dir() else Path(run).parent

    def no_phi(sidecar: Path) -> None:
        hits = check([sidecar], model_run)
        if hits:
            raise PermissionError(f"{sidecar}: would name a patient of {model_run} ({hits[0][1]}); nothing "
                                  "was exported. Check the class names for identifying data")

    return export_run(run, out, fmt=format, overwrite=overwrite, check=no_phi)


def deid_check(run: PathLike, paths: PathLike | Sequence[PathLike], include_local: bool = False) -> list[tuple[str, str]]:
    """Look for a run's patients in files meant to be shared, as ``medtl deid-check`` does.

    The run's identifying strings (film paths, names and stems, DICOM PHI values, patient ids,
    id-like folder names) are kept in the run only as salted hashes (``deid_index.json``); the
    text and the file and folder names under ``paths`` are hashed the same way and compared.

    Args:
        run: the CV or training run whose patients to look for.
        paths: files or folders to check (a report, an export, a copy of the run folder), or one.
        include_local: also check the run's own tables that list the films (folds.csv,
            predictions CSVs ...), which are meant to stay local and so name them.

    Returns:
        Sorted (file, where) pairs naming each place a run's identifying string was found,
        never the value; [] when nothing was found.

    Raises:
        FileNotFoundError: the run or a path does not exist.

    Example:
        >>> medtl.deid_check("runs/demo/cv-1a2b3c4d5e", ["share/report.html", "share/overlays/"])
        []
    """
    from medtl.report.deid import deid_check as check  # why: loaded when used, like the report

    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    return check(items, run, include_local=include_local)
