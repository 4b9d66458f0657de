"""``medtl predict --dicom-sr DIR``: one DICOM Structured Report per scored DICOM film.

Each report is an Enhanced SR filed in the film's study (same patient, same study, a new
series per call) whose content tree says what the model decided, in a form a PACS keeps
beside the film::

    CONTAINER  Imaging Measurement Report (DCM 126000)
      TEXT     Algorithm Name (DCM 111001)          the run's name and backbone
      TEXT     Algorithm Version (DCM 111003)       the run folder and medtl's version
      IMAGE    Source of Measurement (DCM 121112)   the film scored
      NUM      Model score: <class> (99MEDTL)       unit {probability}, one per score column
      NUM      Decision threshold: <class>          unit {probability} (binary/multilabel)
      TEXT     Finding (DCM 121071)                 the predicted class (label)
      TEXT     Comment (DCM 121106)                 "research use, not for diagnosis" ...

The reports keep the patient's identity: they are for the hospital's own PACS only. Each is
named ``<SOPInstanceUID>.dcm``. Films that are not DICOM, or that could not be scored, get no
report; the ``dicom_sr`` column of the predictions table says why.

Example:
    >>> df = Predictor("runs/demo/cv-1a2b").predict_paths(["a.dcm"])
    >>> write_prediction_srs(Predictor("runs/demo/cv-1a2b"), df, "pacs_out/")["dicom_sr"].tolist()
    ['1.2.826.0.1.3680043.8.498.77.dcm']
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import yaml
from pydicom.uid import generate_uid

from medtl.io.dicom import is_dicom
from medtl.io.dicom_results import (
    MANUFACTURER, RESEARCH_CAPTION, load_highdicom, new_series_uid, not_dicom_note, quiet_names, read_source,
    result_name,
)
from medtl.io.errors import one_line
from medtl.run.files import score_columns

__all__ = ["write_prediction_sr", "write_prediction_srs", "model_identity", "SCHEME"]

#: Coding scheme of the concepts DICOM has no code for (a private scheme, PS3.16 8.2).
SCHEME = "99MEDTL"
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate",
          "StudyTime", "ReferringPhysicianName")
_SERIES_DESCRIPTION = f"medtl predictions ({RESEARCH_CAPTION})"


def model_identity(predictor: Any) -> tuple[str, str]:
    """(name, version) of a :class:`~medtl.run.predictor.Predictor`'s model for a report.

    Example:
        >>> model_identity(Predictor("runs/demo/cv-1a2b3c4d5e"))
        ('demo (mobilenetv2, 5-fold ensemble)', 'cv-1a2b3c4d5e, medtl 0.1.0')
    """
    info = predictor.info
    path = Path(predictor.path)
    run = path if path.is_dir() else path.parent
    name = _run_name(run) or run.name
    kind = f"{len(predictor.members)}-fold ensemble" if len(predictor.members) > 1 else "single model"
    return f"{name} ({info.get('backbone', 'model')}, {kind})", f"{run.name}, medtl {_medtl_version()}"


def write_prediction_sr(
    source: str | os.PathLike[str],
    scores: dict[str, float],
    thresholds: dict[str, float] | None,
    prediction: str,
    model_name: str,
    model_version: str,
    out_dir: str | os.PathLike[str],
    series_uid: str,
    instance_number: int,
) -> Path:
    """Write one Enhanced SR with a film's scores and decision into the film's study.

    Args:
        source: the DICOM film that was scored.
        scores: score per class shown (binary: the positive class only).
        thresholds: decision threshold per class of ``scores``; None for multiclass (arg-max).
        prediction: the predicted class (or labels joined, multilabel).
        model_name, model_version: from :func:`model_identity`.
        out_dir: folder for the file (created); named ``<SOPInstanceUID>.dcm``.
        series_uid: the series of this call, shared by its reports.
        instance_number: the report's number in that series.

    Returns:
        The path written.

    Raises:
        ValueError: ``source`` is not DICOM or lacks its UIDs.
        ImportError: highdicom is not installed (``pip install 'medtl[dicom]'``).

    Example:
        >>> write_prediction_sr("a.dcm", {"lesion": 0.91}, {"lesion": 0.42}, "lesion", "demo", "cv-1a2b",
        ...                     "out/", new_series_uid(), 1)
        PosixPath('out/1.2.826.0.1.3680043.8.498.99.dcm')
    """
    hd = load_highdicom()
    from pydicom.sr.codedict import codes  # why: pydicom's SR code tables load slowly; only reports need them

    ref = read_source(source)
    for key in _TYPE2:  # highdicom reads these from the evidence; type 2, so empty when the film has none
        if key not in ref:
            setattr(ref, key, None)
    code = hd.sr.CodedConcept
    prob = code(value="{probability}", scheme_designator="UCUM", meaning="probability")
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    items: list = [
        hd.sr.TextContentItem(name=code("111001", "DCM", "Algorithm Name"), value=model_name[:1024],
                              relationship_type=contains),
        hd.sr.TextContentItem(name=code("111003", "DCM", "Algorithm Version"), value=model_version[:1024],
                              relationship_type=contains),
        hd.sr.ImageContentItem(name=code("121112", "DCM", "Source of Measurement"),
                               referenced_sop_class_uid=ref.SOPClassUID,
                               referenced_sop_instance_uid=ref.SOPInstanceUID, relationship_type=contains),
    ]
    for i, (cls, value) in enumerate(scores.items()):
        items.append(hd.sr.NumContentItem(name=code(f"S{i}", SCHEME, f"Model score: {cls}"[:64]),
                                          value=float(value), unit=prob, relationship_type=contains))
        if thresholds is not None:
            items.append(hd.sr.NumContentItem(name=code(f"T{i}", SCHEME, f"Decision threshold: {cls}"[:64]),
                                              value=float(thresholds[cls]), unit=prob, relationship_type=contains))
    items += [
        hd.sr.TextContentItem(name=codes.DCM.Finding, value=str(prediction) or "none",
                              relationship_type=contains),
        hd.sr.TextContentItem(name=code("121106", "DCM", "Comment"),
                              value=f"{RESEARCH_CAPTION.capitalize()}: a research model's output, not a "
                                    "medical device; it keeps the patient's identity for this hospital's PACS "
                                    "only.", relationship_type=contains),
    ]
    root = hd.sr.ContainerContentItem(name=code("126000", "DCM", "Imaging Measurement Report"))
    root.ContentSequence = hd.sr.ContentSequence(items)
    sop_uid = str(generate_uid())
    with quiet_names():
        sr = hd.sr.EnhancedSR(
            evidence=[ref], content=root, series_instance_uid=series_uid, series_number=9100,
            sop_instance_uid=sop_uid, instance_number=int(instance_number), manufacturer=MANUFACTURER,
            is_complete=True,
        )
    sr.SeriesDescription = _SERIES_DESCRIPTION
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / result_name(sop_uid)
    sr.save_as(path, enforce_file_format=True)
    return path


def write_prediction_srs(predictor: Any, df: pd.DataFrame, out_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """A report per scored DICOM film of ``df`` (``medtl predict``'s table); returns ``df``
    with a ``dicom_sr`` column: the file name written, or why none was.

    All reports of one call share one new series. A film whose report cannot be made is noted
    in its row and the others are still written.

    Example:
        >>> df = write_prediction_srs(predictor, predictor.predict_paths(paths), "pacs_out/")
        >>> df["dicom_sr"].str.endswith(".dcm").all()
        True
    """
    load_highdicom()  # before any film: a missing extra is one error, not one note per film
    cols = score_columns(predictor.task, predictor.classes)
    shown = _shown_classes(predictor.task, predictor.classes, cols)
    thresholds = None if predictor.thresholds is None else dict(zip(shown, predictor.thresholds))
    name, version = model_identity(predictor)
    series = new_series_uid()
    notes: list[str] = []
    n = 0
    for _, row in df.iterrows():
        path = str(row["path"])
        err = str(row.get("error") or "") if "error" in df.columns and pd.notna(row.get("error")) else ""
        if err:
            notes.append("skipped: the film could not be scored (see the error column)")
            continue
        if not is_dicom(path):
            notes.append(not_dicom_note(path))
            continue
        try:
            scores = {c: float(row[col]) for c, col in zip(shown, cols)}
            written = write_prediction_sr(path, scores, thresholds, str(row.get("prediction", "")), name, version,
                                          out_dir, series, n + 1)
        except (ValueError, OSError) as exc:
            notes.append(f"skipped: {one_line(exc, 200)}")
            continue
        n += 1
        notes.append(written.name)
    out = df.copy()
    out.attrs = dict(df.attrs)
    out["dicom_sr"] = notes
    return out


def _shown_classes(task: str, classes: Sequence[str], cols: Sequence[str]) -> list[str]:
    """The class each score column is for (binary: the one positive class)."""
    if task == "binary":
        return [classes[1]]
    return list(classes)[: len(cols)]


def _run_name(run: Path) -> str | None:
    """The ``name`` of the run's config.yaml (its folder's or its parent's), if any."""
    for cand in (run / "config.yaml", run.parent / "config.yaml"):
        if cand.is_file():
            try:
                return str((yaml.safe_load(cand.read_text()) or {}).get("name") or "") or None
            except yaml.YAMLError:
                return None
    return None


def _medtl_version() -> str:
    """The installed medtl's version ('unknown' when run from a tree that is not installed)."""
    try:
        return version("medtl")
    except PackageNotFoundError:
        return "unknown"
