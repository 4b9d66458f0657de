"""``medtl init``: a commented starter config that fits a dataset.

The dataset is read the way ``medtl inspect`` reads it (same column guesses, same manifest
loader; no pixel decoding), then each setting is chosen from what was found and explained in a
comment beside it: classes and columns, where patient ids come from, the task, a backbone and
fine-tuning stages suited to the number of images, class weighting for imbalance, and a number
of folds the rarest class can fill. The config is validated (and its manifest loaded) before it
is written.

Example:
    >>> from medtl.init import write_starter_config
    >>> path = write_starter_config("sample_data/labels.csv", "config.yaml")
    >>> cfg = load_config(path)   # ready for `medtl cv config.yaml`
"""

from __future__ import annotations

import math
import os
import re
import textwrap
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from medtl.config import config_from_dict
# The column guesses and the listing are medtl inspect's, so init and inspect agree.
from medtl.data import inspect as insp
from medtl.data.manifest import dicom_header_ids, is_integer_value, load_manifest
from medtl.io import is_dicom
from medtl.io.atomic import write_atomic

__all__ = ["DatasetSurvey", "survey_dataset", "starter_config", "write_starter_config"]

# Class names that mean "no finding"; in a binary task that class is put first (negative), so
# the positive class -- the one sensitivity and heat maps are about -- is the finding.
_NEGATIVE_NAMES = frozenset({
    "normal", "negative", "neg", "healthy", "no_finding", "nofinding", "no", "none", "absent",
    "benign", "control", "false", "0",
})
_SMALL, _MEDIUM = 300, 3000  # image counts where the suggested backbone changes
_IMBALANCE = 1.5  # majority:minority ratio above which the loss is class-weighted
_MAX_FOLDS = 5
_VAL_PARTS = 5  # data.val_fraction 0.2


@dataclass
class DatasetSurvey:
    """What :func:`survey_dataset` found.

    Attributes:
        source: the labels CSV or class-folder tree the config will point at.
        task: ``binary``, ``multiclass`` or ``multilabel``.
        classes: class names (binary: negative first); multilabel: the label columns.
        class_counts: images per class (multilabel: positive images per label).
        patients_per_class: patients with at least one image of the class (or positive label).
        n_images, n_patients: totals (without patient ids every image counts as a patient).
        path_column, label_column: CSV columns (None for a folder tree).
        patient_column: a CSV column, ``dicom:PatientID``, or None (no patient ids).
        films_per_patient: the most films one patient has.
        n_dicom: how many files are DICOM (by content or suffix).
        notes: things the user should know, written into the config as comments.
    """

    source: Path
    task: str
    classes: list[str]
    class_counts: dict[str, int]
    patients_per_class: dict[str, int]
    n_images: int
    n_patients: int
    path_column: str | None = None
    label_column: str | list[str] | None = None
    label_separator: str | None = None
    patient_column: str | None = None
    films_per_patient: int = 1
    n_dicom: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def imbalance(self) -> float:
        """Largest majority:minority ratio (multilabel: negatives:positives of the rarest label)."""
        if self.task == "multilabel":
            ratios = [max(n, self.n_images - n) / max(min(n, self.n_images - n), 1)
                      for n in self.class_counts.values()]
            return max(ratios, default=1.0)
        counts = list(self.class_counts.values())
        return max(counts) / max(min(counts), 1)


# --------------------------------------------------------------------------------------------
# Looking at the data


def survey_dataset(data: str | os.PathLike, columns: dict[str, Any] | None = None) -> DatasetSurvey:
    """Find the columns, classes, task and patients of a labels CSV or class-folder tree.

    Args:
        data: a labels CSV, a folder holding ``labels.csv``, or a folder with one sub-folder
            of images per class.
        columns: CSV columns to use instead of guessing them: ``path_column``,
            ``label_column`` (a list: one 0/1 column per finding, multilabel),
            ``label_separator`` (multilabel from one column of joined finding names, e.g.
            ``|``), ``patient_column`` (``none`` for no patient ids).

    Returns:
        A :class:`DatasetSurvey`.

    Raises:
        FileNotFoundError: ``data`` does not exist.
        ValueError: no file column or no labels could be found (the message says what to add).

    Example:
        >>> s = survey_dataset("sample_data")
        >>> s.task, s.classes, s.patient_column
        ('binary', ['normal', 'lesion'], 'patient_id')
    """
    target = Path(data)
    if not target.exists():
        raise FileNotFoundError(f"{target}: not found; give a labels CSV or a folder with one sub-folder per class")
    if target.suffix.lower() in (".yaml", ".yml"):
        raise ValueError(f"{target}: this is already a config; give the labels CSV or image folder it is for")
    csv = target / "labels.csv" if target.is_dir() and (target / "labels.csv").is_file() else target
    guessed = None
    named = {k: v for k, v in (columns or {}).items() if v}
    if csv.is_file():
        guessed, _ = insp._guess_config(csv, named)
        if not guessed.data.label_column:
            listing = _multilabel_listing(csv, guessed)
        else:
            listing = insp._listing_for(csv, guessed if named else None)
    else:
        if named:
            raise ValueError(f"{target}: column options ({', '.join(named)}) are for a labels CSV; this is a "
                             "folder with one sub-folder per class")
        listing = insp._listing_for(target, None)
    if listing.classes is None or listing.labels is None:
        why = "; ".join(listing.notes) or "no labels"
        raise ValueError(
            f"{target}: cannot tell the classes ({why}); give a labels CSV with a 'label' column "
            "(or one 0/1 column per finding), or a folder with one sub-folder per class"
        )

    survey = DatasetSurvey(
        source=Path(listing.source), task=str(listing.task), classes=list(listing.classes),
        class_counts={}, patients_per_class={}, n_images=len(listing.paths), n_patients=0,
        notes=[n for n in listing.notes if "positive class (alphabetical)" not in n],
    )
    if guessed is not None:
        survey.path_column = guessed.data.path_column
        survey.label_column = guessed.data.label_column
        survey.label_separator = guessed.data.label_separator
        if survey.task == "multiclass":
            survey.notes += _joined_names_hint(csv, str(survey.label_column))
        if listing.patients is not None and listing.patient_source.startswith("column"):
            survey.patient_column = guessed.data.patient_column
    survey.n_dicom = _count_dicom(listing.paths)
    patients = listing.patients if survey.patient_column else None
    if patients is None:
        patients = _dicom_patients(survey, listing.paths)
    if patients is None:
        patients = [f"file:{p}" for p in listing.paths]
    _count(survey, listing.labels, patients)
    if survey.task == "binary" and not _int_labels(csv, survey.label_column):
        _negative_first(survey)
    return survey


def _multilabel_listing(csv: Path, cfg: Any):
    """A listing for a CSV whose labels are several 0/1 columns (one per finding)."""
    df = pd.read_csv(csv)
    skip = {cfg.data.path_column, cfg.data.patient_column}
    binary = [str(c) for c in df.columns if c not in skip and _is_01(df[c])]
    if len(binary) < 2:
        raise ValueError(
            f"{csv}: no label column (looked for {', '.join(insp._LABEL_COLUMNS)}; columns: "
            f"{', '.join(map(str, df.columns))}); rename the label column to 'label', or give one 0/1 column per finding"
        )
    cfg.task = "multilabel"
    cfg.data.label_column = binary
    return insp._from_manifest(cfg)


def _joined_names_hint(csv: Path, col: str) -> list[str]:
    """A note when a class column looks like several findings joined (NIH: "Effusion|Mass")."""
    values = pd.read_csv(csv, usecols=[col])[col].dropna().astype(str)
    for sep in ("|", ";"):
        if values.str.contains(sep, regex=False).mean() > 0.05:
            return [f"values of {col!r} look like findings joined by {sep!r}; for several findings per film "
                    f"run medtl init again with --label-separator '{sep}' (a multilabel config)"]
    return []


def _is_01(col: pd.Series) -> bool:
    values = pd.to_numeric(col, errors="coerce")
    return bool(values.notna().all() and values.isin([0, 1]).all() and values.nunique() == 2)


def _count_dicom(paths: list[str]) -> int:
    n = 0
    for p in paths:
        try:
            n += bool(is_dicom(p))
        except OSError:  # a missing file is inspect's business, not init's
            pass
    return n


def _dicom_patients(survey: DatasetSurvey, paths: list[str]) -> list[str] | None:
    """Patient ids from the DICOM headers when every file is DICOM and names its PatientID."""
    if not paths or survey.n_dicom < len(paths):
        return None
    ids = dicom_header_ids(paths, "PatientID", survey.source, strict=False)
    missing = sum(1 for p, i in zip(paths, ids) if i == f"file:{p}")
    if missing:
        survey.notes.append(f"{missing} of {len(paths)} DICOM file(s) have no PatientID, so the headers "
                            "cannot group films by patient")
        return None
    survey.patient_column = "dicom:PatientID"
    return ids


def _count(survey: DatasetSurvey, labels: list, patients: list[str]) -> None:
    k = len(survey.classes)
    if survey.task == "multilabel":
        hits = [[bool(lab[j]) for lab in labels] for j in range(k)]
    else:
        hits = [[lab == j for lab in labels] for j in range(k)]
    for name, col in zip(survey.classes, hits):
        survey.class_counts[name] = int(sum(col))
        survey.patients_per_class[name] = len({p for p, h in zip(patients, col) if h})
    films = Counter(patients)
    survey.n_patients = len(films)
    survey.films_per_patient = max(films.values(), default=1)


def _int_labels(csv: Path, label_column: Any) -> bool:
    """True when the CSV's labels are class indices (their order is then fixed by the data)."""
    if not isinstance(label_column, str) or not csv.is_file():
        return False
    values = pd.read_csv(csv, usecols=[label_column])[label_column].dropna()
    return bool(len(values)) and all(is_integer_value(v) for v in values)


def _negative_first(survey: DatasetSurvey) -> None:
    def is_negative(name: str) -> bool:
        return re.sub(r"[\s\-]+", "_", name.strip().lower()) in _NEGATIVE_NAMES

    a, b = survey.classes
    if is_negative(b) and not is_negative(a):
        survey.classes = [b, a]
        survey.class_counts = {c: survey.class_counts[c] for c in survey.classes}
        survey.patients_per_class = {c: survey.patients_per_class[c] for c in survey.classes}


# --------------------------------------------------------------------------------------------
# Choosing the settings


@dataclass
class _Plan:
    backbone: str
    batch_size: int
    dropout: float
    stages: list[dict]
    why_backbone: str
    folds: int
    why_folds: str
    val_parts: int  # data.val_fraction = 1 / val_parts (patient_holdout makes val_parts folds)


def _plan(s: DatasetSurvey) -> _Plan:
    n = s.n_images
    if n < _SMALL:
        backbone, batch, dropout = "mobilenetv2", 16, 0.3
        stages = [{"unfreeze": "head", "epochs": 5, "lr": 1e-3}, {"unfreeze": 1, "epochs": 10, "lr": 1e-4}]
        why = (f"{n} images (< {_SMALL}): a small ImageNet backbone (MobileNetV2, 2.3 M parameters) "
               "overfits less; only its head and top block are trained")
    elif n < _MEDIUM:
        backbone, batch, dropout = "resnet50", 32, 0.3
        stages = [{"unfreeze": "head", "epochs": 5, "lr": 1e-3}, {"unfreeze": 2, "epochs": 8, "lr": 1e-4},
                  {"unfreeze": "all", "epochs": 5, "lr": 1e-5}]
        why = (f"{n} images ({_SMALL}-{_MEDIUM}): ResNet50, fine-tuned head first, then the top two "
               "blocks, then everything at a low learning rate")
    else:
        backbone, batch, dropout = "densenet121", 32, 0.2
        stages = [{"unfreeze": "head", "epochs": 3, "lr": 1e-3}, {"unfreeze": 2, "epochs": 6, "lr": 1e-4},
                  {"unfreeze": "all", "epochs": 10, "lr": 1e-5, "schedule": "cosine"}]
        why = (f"{n} images (>= {_MEDIUM}): DenseNet121 (the CheXNet backbone), enough data to "
               "fine-tune all of it in the last stage")
    folds, val_parts, why_folds = _folds_for(s)
    return _Plan(backbone, batch, dropout, stages, why, folds, why_folds, val_parts)


def _folds_for(s: DatasetSurvey) -> tuple[int, int, str]:
    """(folds, validation parts, why) that the rarest class's patients can fill.

    Every test fold needs a patient of each class, and so does each of the ``round(1 /
    val_fraction)`` parts that the rest of a fold is split into for validation
    (:func:`medtl.data.splits.patient_holdout`); fewer folds first keep the 20% validation split.
    """
    rarest = min(s.patients_per_class, key=s.patients_per_class.get)
    n = s.patients_per_class[rarest]
    for folds in range(_MAX_FOLDS, 1, -1):
        for parts in range(_VAL_PARTS, 1, -1):
            if n >= folds and n - math.ceil(n / folds) >= parts:
                if (folds, parts) == (_MAX_FOLDS, _VAL_PARTS):
                    return folds, parts, f"the rarest class ({rarest!r}) has {n} patients: enough for {folds}"
                return folds, parts, (f"only {n} patients with {rarest!r}: each test fold and each "
                                      "validation part needs at least one")
    return 2, 2, (f"WARNING: only {n} patient(s) with {rarest!r}; cross-validation needs at least 3 "
                  "(medtl cv will refuse) and far more for figures worth reporting")


# --------------------------------------------------------------------------------------------
# Writing the YAML


def _value(v: Any) -> str:
    text = yaml.safe_dump(v, default_flow_style=True, sort_keys=False, width=10_000).strip()
    return text[: -len("...")].strip() if text.endswith("\n...") else text


class _Lines:
    """YAML lines with a comment beside (short) or above (long) each key."""

    WIDTH = 100
    COLUMN = 30

    def __init__(self) -> None:
        self.lines: list[str] = []

    def comment(self, text: str, indent: int = 0) -> None:
        width = self.WIDTH - 2 * indent - 2
        for para in text.splitlines():
            for line in textwrap.wrap(para, width) or [""]:
                self.lines.append(f"{'  ' * indent}# {line}".rstrip())

    def key(self, key: str, value: Any = None, why: str = "", indent: int = 0, section: bool = False) -> None:
        pad = "  " * indent
        body = f"{pad}{key}:" if section else f"{pad}{key}: {_value(value)}"
        if why and len(body.ljust(self.COLUMN)) + len(why) + 3 > self.WIDTH:
            self.comment(why, indent)
            why = ""
        self.lines.append(f"{body.ljust(self.COLUMN)}  # {why}" if why else body)

    def item(self, value: Any, why: str = "", indent: int = 2) -> None:
        body = f"{'  ' * indent}- {_value(value)}"
        self.lines.append(f"{body.ljust(self.COLUMN + 14)}  # {why}" if why else body)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _relative(path: Path, start: Path) -> str:
    """``path`` relative to ``start`` when it is near (how the loader resolves it), else absolute."""
    path = path.resolve()
    rel = os.path.relpath(path, start.resolve())
    if rel.split(os.sep)[:3] == [os.pardir] * 3:
        return path.as_posix()
    return Path(rel).as_posix()


def _counts_text(s: DatasetSurvey) -> str:
    return ", ".join(f"{c} {n}" for c, n in s.class_counts.items())


def starter_config(data: str | os.PathLike, config_dir: str | os.PathLike = ".",
                   survey: DatasetSurvey | None = None) -> str:
    """The commented starter config for ``data`` as YAML text.

    Args:
        data: a labels CSV, a folder with ``labels.csv``, or a class-per-folder tree.
        config_dir: the folder the config will be saved in (``data.manifest`` is written
            relative to it, as the config loader resolves it).
        survey: a survey of ``data`` already made (default: made here).

    Returns:
        YAML text that :func:`medtl.config.load_config` accepts.

    Example:
        >>> print(starter_config("sample_data/labels.csv"))
    """
    s = survey or survey_dataset(data)
    p = _plan(s)
    out = _Lines()
    rel = _relative(s.source, Path(config_dir))
    kind = {"binary": "binary", "multiclass": f"{len(s.classes)}-class", "multilabel": "multilabel"}[s.task]
    out.comment(f"Starter config written by `medtl init {data}`.\n"
                f"Dataset: {s.n_images} images, {s.n_patients} {'patients' if s.patient_column else 'images treated as patients'}, "
                f"{kind} ({_counts_text(s)}).\n"
                "Every setting is a starting point chosen from the data; the comments say why.\n"
                "Next: `medtl inspect <this file>` (decodes every file), then `medtl cv <this file>`.")
    for note in s.notes:
        out.comment(f"note: {note}")
    out.lines.append("")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", (s.source.parent if s.source.is_file() else s.source).name) or "medtl-run"
    out.key("name", name, "run folders go to runs/<name>/")
    out.key("seed", 42, "one seed for splits, augmentation and initialisation")
    task_why = {
        "binary": "two classes",
        "multiclass": f"{len(s.classes)} classes, one per image (softmax)",
        "multilabel": (f"{len(s.classes)} findings" if s.label_separator else f"{len(s.classes)} 0/1 columns")
        + ": several findings per film (a sigmoid each)",
    }[s.task]
    out.key("task", s.task, task_why)
    out.key("output_dir", "runs", "relative to where medtl is run")

    out.lines.append("")
    out.key("data", section=True)
    out.key("manifest", rel, "absolute path" if Path(rel).is_absolute() else "relative to this file's folder",
            indent=1)
    if s.path_column:
        out.key("path_column", s.path_column, "image paths, relative to the CSV's folder", indent=1)
        label_why = ("one 0/1 column per finding" if s.task == "multilabel" else "class names or indices")
        if s.label_separator:
            label_why = "finding names per film, joined"
        out.key("label_column", s.label_column, label_why, indent=1)
        if s.label_separator:
            out.key("label_separator", s.label_separator, "names outside classes count as no finding", indent=1)
    _patient_key(out, s)
    if s.label_separator:
        out.key("classes", s.classes, "the findings to learn; drop any you do not want", indent=1)
    elif s.task != "multilabel":
        if s.task == "binary":
            classes_why = f"positive class: {s.classes[1]!r} (the second); swap the two to change"
        else:
            classes_why = "order sets the output order"
        out.key("classes", s.classes, classes_why, indent=1)
    out.key("image_size", [224, 224], "ImageNet size; e.g. 448 for small findings (GPU)", indent=1)
    out.key("keep_aspect", True, "letterbox instead of squashing the film", indent=1)
    dicom_why = "DICOM VOI LUT / window from each file's header" if s.n_dicom else "PNG/JPEG: the full bit-depth range"
    out.key("window", "auto", dicom_why, indent=1)
    out.key("on_error", "fail", "stop on an unreadable file; skip lists them in the run folder", indent=1)
    val_why = "validation split (by patient): early stopping, calibration, youden-type thresholds"
    if p.val_parts != _VAL_PARTS:
        val_why += f"; more than 0.2 so that each of its {p.val_parts} parts has every class"
    out.key("val_fraction", round(1.0 / p.val_parts, 2), val_why, indent=1)

    out.lines.append("")
    out.key("augment", section=True)
    out.key("preset", "chest_xray_robust", "small rotation/shift/zoom, contrast/gamma/CLAHE, blur, noise, JPEG, "
            "down-up-sampling: films from other machines; no left-right flip", indent=1)

    out.lines.append("")
    out.key("model", section=True)
    out.comment(p.why_backbone, 1)
    out.key("backbone", p.backbone, indent=1)
    out.key("weights", "imagenet", "downloaded by Keras on first use (needs internet once)", indent=1)
    out.key("dropout", p.dropout, "before the classifier; more against overfitting small data", indent=1)

    out.lines.append("")
    out.key("train", section=True)
    out.key("batch_size", p.batch_size, "lower it if GPU memory runs out", indent=1)
    loss = "cce" if s.task == "multiclass" else "bce"
    ratio = s.imbalance
    if ratio > _IMBALANCE:
        weight = "balanced"
        weight_why = (f"imbalance {ratio:.1f}:1 (> {_IMBALANCE}): weight the rarer "
                      f"{'labels' if s.task == 'multilabel' else 'classes'} up so they are not ignored")
    else:
        weight = "none"
        weight_why = f"classes are balanced enough ({ratio:.1f}:1 <= {_IMBALANCE}:1)"
    out.key("loss", {"name": loss, "class_weight": weight}, weight_why, indent=1)
    out.comment("Staged fine-tuning: train the new head on frozen ImageNet features first, then unfreeze\n"
                "more of the backbone at lower learning rates. Early stopping and the best checkpoint\n"
                "use the validation split.", 1)
    out.key("stages", section=True, indent=1)
    for st in p.stages:
        what = {"head": "the classifier head only", "all": "the whole backbone"}.get(
            st["unfreeze"], f"+ the top {st['unfreeze']} block{'s' if st['unfreeze'] != 1 else ''}")
        out.item(st, what)
    out.key("monitor", "val_roc_auc", "the validation metric that picks the best epoch", indent=1)
    out.key("patience", 3, "epochs without improvement before a stage stops early", indent=1)
    out.key("mixed_precision", "auto", "float16 on a GPU, off on a CPU", indent=1)

    out.lines.append("")
    out.key("evaluate", section=True)
    out.key("folds", p.folds, p.why_folds, indent=1)
    thr_why = ("the class-balanced loss's own cut: it held better under shift than a cut chosen on "
               "a small validation split; youden, or sensitivity:0.9 for screening, choose one there"
               if s.task != "multiclass" else "not used for multiclass (arg-max)")
    out.key("threshold", "fixed:0.5", thr_why, indent=1)
    out.key("calibration", "none", "temperature or platt to make scores usable as probabilities", indent=1)
    out.key("bootstrap", 1000, "patient-level bootstrap replicates for the 95% intervals", indent=1)

    out.lines.append("")
    out.key("report", section=True)
    out.key("cam", "gradcam", "heat maps over the original films in the HTML report", indent=1)
    out.key("compare", "occlusion", "a second map beside each Grad-CAM map, to check where the model "
            "looks (minutes on a CPU for a large backbone; null to skip)", indent=1)
    out.key("cases", 4, "heat-map films per kind: true/false positives, false negatives", indent=1)
    return out.text()


def _patient_key(out: _Lines, s: DatasetSurvey) -> None:
    if s.patient_column and s.patient_column.startswith("dicom:"):
        out.key("patient_column", s.patient_column,
                f"no patient column, but every DICOM header names one: {s.n_patients} patients; "
                "splits keep a patient's films together", indent=1)
    elif s.patient_column:
        out.key("patient_column", s.patient_column,
                f"{s.n_patients} patients, up to {s.films_per_patient} film(s) each; "
                "splits keep a patient's films together", indent=1)
    else:
        out.comment("WARNING: no patient ids found (no patient column, no DICOM PatientID), so every image\n"
                    "is treated as a separate patient. If a patient has several films they can end up in\n"
                    "both training and test, and every estimate will be too optimistic. Add a patient\n"
                    "column to a labels CSV and name it here.", 1)
        out.key("patient_column", "none", indent=1)


def write_starter_config(data: str | os.PathLike, out: str | os.PathLike = "config.yaml",
                         force: bool = False, columns: dict[str, Any] | None = None) -> Path:
    """Look at a dataset and write a commented starter config for it.

    The text is validated with the config loader and the manifest it names is loaded (without
    decoding images) before anything is written.

    Args:
        data: a labels CSV, a folder with ``labels.csv``, or a class-per-folder tree.
        out: the YAML file to write.
        force: overwrite ``out`` if it exists.
        columns: CSV columns to use instead of guessing them (see :func:`survey_dataset`).

    Returns:
        The path written.

    Raises:
        FileExistsError: ``out`` exists and ``force`` is False.
        FileNotFoundError, ValueError: see :func:`survey_dataset`.

    Example:
        >>> write_starter_config("sample_data", "sample.yaml")
        PosixPath('sample.yaml')
    """
    path = Path(out)
    if path.exists() and not force:
        raise FileExistsError(f"{path}: already exists; pass --force (force=True) to overwrite it, or choose another --out")
    text = starter_config(data, path.parent, survey_dataset(data, columns))
    cfg = config_from_dict(yaml.safe_load(text), base_dir=path.parent)
    load_manifest(cfg, check_files=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: Path(tmp).write_text(text))
    return path
