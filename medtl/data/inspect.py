"""``medtl inspect``: what is in a dataset, and which files cannot be used.

Every file is decoded (in parallel worker processes), so the report lists each unreadable file
with its reason, not just the ones whose header looks wrong, and each file read with a warning
(alpha composited, few bits used, decoded at reduced scale). Whatever ``medtl train`` would
refuse is an error here too: an unreadable file, or a dataset-level problem (a class without
films; an empty, header-only, non-CSV or duplicated manifest is refused outright with a
one-line error). It also counts images per class
and per patient, image sizes, byte-identical duplicates, and summarises the DICOM headers
(modality, body part, view, photometric interpretation, bits, transfer syntax).

Example:
    >>> report = inspect_data("sample_data")
    >>> print(format_report(report))
    >>> report.n_errors
    0
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.uid import UID

from medtl.config import Config, ConfigError, load_config
from medtl.data.cache import describe_error, file_sha256
from medtl.data.manifest import DataError, load_manifest, read_csv_table
from medtl.data.pool import run_chunked
from medtl.io import is_dicom, read_header, read_image
from medtl.io.dicom import DEFAULT_MAX_PIXELS
from medtl.io.errors import ImageReadWarning
from medtl.io.image import is_image_file

HEADER_FIELDS = (
    "Modality", "BodyPartExamined", "ViewPosition", "PhotometricInterpretation", "BitsStored",
    "BitsAllocated", "TransferSyntaxUID", "NumberOfFrames",
)
_CHEST_MODALITIES = {"CR", "DX"}
_PATH_COLUMNS = ("file", "path", "filename", "image", "image_path")
_LABEL_COLUMNS = ("label", "class", "class_name", "target")
_PATIENT_COLUMNS = ("patient_id", "PatientID", "person_id", "patient", "subject_id")
_WARNINGS_SHOWN = 20  # one cause usually repeats over many files; the count says how many
_NO_FINDING = re.compile(r"^(no[ _-]?findings?|none|normal|negative)$", re.IGNORECASE)


@dataclass
class InspectReport:
    """What :func:`inspect_data` found. ``n_errors`` > 0 means some files cannot be used."""

    source: str
    task: str | None = None
    classes: list[str] | None = None
    n_files: int = 0
    class_counts: dict[str, int] = field(default_factory=dict)
    patient_source: str = ""
    n_patients: int = 0
    films_per_patient: dict[int, int] = field(default_factory=dict)
    mixed_label_patients: list[str] = field(default_factory=list)
    formats: dict[str, int] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    dicom: dict[str, dict[str, int]] = field(default_factory=dict)
    header_patients: int = 0
    duplicate_groups: list[list[str]] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    #: Files that were read, but changed on the way or suspicious: (path, reason; fix).
    warnings: list[tuple[str, str]] = field(default_factory=list)
    #: Problems of the dataset as a whole that ``medtl train`` would refuse (one line each).
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def n_errors(self) -> int:
        """Number of files that cannot be read."""
        return len(self.errors)

    @property
    def ok(self) -> bool:
        """True when training could use this dataset: every file reads and no problem was found."""
        return not self.errors and not self.problems

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON output."""
        d = dataclasses.asdict(self)
        d["n_errors"] = self.n_errors
        d["ok"] = self.ok
        return d


# --------------------------------------------------------------------------------------------
# Probing files (runs in worker processes, forked from a server that has this module loaded)


def _probe_chunk(paths: list[str], read: dict[str, Any] | str) -> list[dict[str, Any]]:
    """Worker: decode each file (``read``: read_image's window, frame, max_pixels; or just the
    window) and read its header; never raises for a bad file."""
    if isinstance(read, str):
        read = {"window": read}

    out = []
    for path in paths:
        rec: dict[str, Any] = {"path": path, "error": None, "shape": None, "header": None, "sha": None, "warnings": []}
        try:
            rec["sha"] = file_sha256(path)
            is_dcm = is_dicom(path)
            rec["format"] = "DICOM" if is_dcm else (Path(path).suffix.lstrip(".").upper() or "unknown")
            if is_dcm:
                header = read_header(path)
                keys = (*HEADER_FIELDS, "PatientID")
                rec["header"] = {k: None if header.get(k) is None else str(header.get(k)) for k in keys}
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ImageReadWarning)
                img = read_image(path, **read)
            rec["warnings"] = [
                str(w.message).removeprefix(f"{path}: ") for w in caught if issubclass(w.category, ImageReadWarning)
            ]
            rec["shape"] = tuple(int(s) for s in img.shape[:2])
        except MemoryError:
            raise
        except Exception as exc:  # reported per file
            rec["error"] = describe_error(exc, path)
        out.append(rec)
    return out


def _crashed(path: str, reason: str) -> dict[str, Any]:
    return {"path": path, "error": reason, "shape": None, "header": None, "sha": None, "warnings": []}


# --------------------------------------------------------------------------------------------
# Finding the files and labels


@dataclass
class _Listing:
    source: str
    paths: list[str]
    patients: list[str] | None = None
    labels: list[Any] | None = None  # class index per file, or a tuple of 0/1 for multilabel
    classes: list[str] | None = None
    task: str | None = None
    patient_source: str = "none (each image is its own patient)"
    notes: list[str] = field(default_factory=list)
    window: str = "auto"
    frame: int | None = None
    max_pixels: int | None = None
    read_set: bool = False  # frame / max_pixels come from a config, not the defaults

    def read_args(self) -> dict[str, Any]:
        """Keyword arguments of read_image, as training would call it."""
        max_pixels = self.max_pixels if self.read_set else DEFAULT_MAX_PIXELS
        return {"window": self.window, "frame": self.frame, "max_pixels": max_pixels}


def _from_manifest(cfg: Any) -> _Listing:
    m = load_manifest(cfg, check_files=False)
    pc = cfg.data.patient_column
    psrc = f"column {pc!r}" if pc and pc.lower() != "none" and not pc.startswith("dicom:") else (
        pc if pc and pc.startswith("dicom:") else "none (each image is its own patient)"
    )
    if m.task == "multilabel":
        labels = [tuple(int(v) for v in row) for row in m.df[m.label_columns].to_numpy()]
    else:
        labels = m.df["label"].astype(int).tolist()
    return _Listing(
        m.source, m.paths, m.df["patient_id"].astype(str).tolist(), labels, m.classes, m.task, psrc,
        notes=list(m.notes), window=cfg.data.window, frame=cfg.data.frame, max_pixels=cfg.data.max_pixels,
        read_set=True,
    )


def _guess_config(csv_path: Path, columns: dict[str, Any] | None = None) -> tuple[Any, list[str]]:
    """A config for a bare CSV: the usual column names, and the task from the label values.

    ``columns`` names columns the caller knows (``path_column``, ``label_column`` (a list for
    several 0/1 finding columns), ``patient_column``); they replace the guesses.
    """
    cols = [str(c) for c in read_csv_table(csv_path, nrows=0).columns]
    given = {k: v for k, v in (columns or {}).items() if v}
    sep = given.pop("label_separator", None)
    for key, value in given.items():
        for name in (value if isinstance(value, list) else [value]):
            if name not in cols and not (key == "patient_column" and name == "none"):
                raise DataError(f"{csv_path}: no column {name!r} for data.{key}; columns: {', '.join(map(str, cols))}")
    if isinstance(given.get("label_column"), list) or sep:
        cfg = Config(task="multilabel")
    else:
        cfg = Config()
    cfg.data.manifest = str(csv_path)
    notes = []
    path_col = given.get("path_column") or next((c for c in _PATH_COLUMNS if c in cols), None)
    if path_col is None:
        raise DataError(
            f"{csv_path}: no file column (looked for {', '.join(_PATH_COLUMNS)}; columns: {', '.join(cols)}); "
            "name it 'file', or inspect a YAML config that sets data.path_column"
        )
    cfg.data.path_column = path_col
    label_col = given.get("label_column") or next((c for c in _LABEL_COLUMNS if c in cols), None)
    cfg.data.label_column = label_col or ""  # none: medtl init looks for 0/1 finding columns
    pc = given.get("patient_column") or next((c for c in _PATIENT_COLUMNS if c in cols), None)
    cfg.data.patient_column = None if pc == "none" else pc
    if label_col and sep:
        if isinstance(label_col, list):
            raise ValueError("a label separator needs one label column holding the joined finding names")
        values = read_csv_table(csv_path, usecols=[label_col])[label_col].dropna().astype(str)
        names = sorted({t.strip() for v in values for t in v.split(sep) if t.strip()})
        cfg.data.label_separator = sep
        cfg.data.classes = [n for n in names if not _NO_FINDING.match(n)]  # the rest: no finding
    elif label_col and not isinstance(label_col, list):
        values = read_csv_table(csv_path, usecols=[label_col])[label_col].dropna().unique()
        if len(values) > 2:
            cfg.task = "multiclass"
        names = _names_for_ints(read_csv_table(csv_path), label_col)
        if names:
            cfg.data.classes = names
        elif not all(str(v).strip().lstrip("-").isdigit() for v in values):
            cfg.data.classes = sorted(str(v).strip() for v in values)
            if len(cfg.data.classes) == 2:
                notes.append(
                    f"no config given: took {cfg.data.classes[1]!r} as the positive class (alphabetical); "
                    "set data.classes to choose"
                )
    return cfg, notes


def _names_for_ints(df: Any, label_col: str) -> list[str] | None:
    """Class names from a ``class_name`` column that maps one to one onto integer labels 0..K-1."""
    if "class_name" not in df.columns or label_col == "class_name":
        return None
    pairs = df[[label_col, "class_name"]].dropna().drop_duplicates()
    try:
        ints = sorted(int(v) for v in pairs[label_col])
    except (TypeError, ValueError):
        return None
    if ints != list(range(len(ints))) or pairs["class_name"].nunique() != len(ints):
        return None
    lookup = {int(a): str(b) for a, b in zip(pairs[label_col], pairs["class_name"])}
    return [lookup[i] for i in range(len(ints))]


def _listing_for(target: Path, cfg: Any) -> _Listing:
    if target.suffix.lower() in (".yaml", ".yml"):
        return _from_manifest(load_config(target))
    if target.is_dir() and (target / "labels.csv").is_file():
        target = target / "labels.csv"
    if cfg is not None:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, manifest=str(target)))
        return _from_manifest(cfg)
    if target.is_file():
        return _bare_csv_listing(target)
    if not target.is_dir():
        raise FileNotFoundError(f"{target}: not found; give a labels CSV, a folder of images, or a YAML config")
    subdirs = [p for p in sorted(target.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    loose = [p for p in target.iterdir() if p.is_file() and is_image_file(p)]
    if len(subdirs) >= 2 and not loose:
        cfg = Config()
        cfg.data.manifest = str(target)
        cfg.task = "binary" if len(subdirs) == 2 else "multiclass"
        listing = _from_manifest(cfg)
        if len(subdirs) == 2:
            listing.notes.append(
                f"class folders: took {listing.classes[1]!r} as the positive class (alphabetical); set data.classes to choose"
            )
        return listing
    paths = [str(p.absolute()) for p in sorted(target.rglob("*")) if p.is_file() and is_image_file(p)]
    return _Listing(str(target), paths, notes=["no labels: neither a labels.csv nor class sub-folders"])


def _bare_csv_listing(target: Path) -> _Listing:
    """The listing of a labels CSV given without a config: refused, with one line, wherever
    ``medtl train`` with the guessed columns would refuse it. A guessed patient column that
    does not fit (e.g. ids given for one class only) is dropped with a note instead, since
    nobody chose it."""
    cfg, notes = _guess_config(target)
    if not cfg.data.label_column:
        raise DataError(
            f"{target}: no label column (looked for {', '.join(_LABEL_COLUMNS)}); name it 'label', or inspect a "
            "YAML config that sets data.label_column (a list of 0/1 columns for multilabel)"
        )
    try:
        listing = _from_manifest(cfg)
    except (ConfigError, DataError) as exc:
        if not cfg.data.patient_column:
            raise
        cfg.data.patient_column = None
        listing = _from_manifest(cfg)  # still failing: the error is not about patients
        notes.append(f"patient ids not used: {exc}")
    listing.notes[:0] = notes
    return listing


# --------------------------------------------------------------------------------------------
# The report


def inspect_data(target: str | os.PathLike, cfg: Any = None, workers: int | None = None) -> InspectReport:
    """Summarise a dataset and try to decode every file.

    Args:
        target: a labels CSV, a folder (class sub-folders, a ``labels.csv``, or just images), or
            a YAML run config.
        cfg: a Config whose ``data.*`` settings (columns, classes, window) apply to ``target``;
            without one, the usual column names are guessed.
        workers: decoding processes (default: one per core).

    Returns:
        An :class:`InspectReport`; ``report.n_errors`` counts unreadable files.

    Example:
        >>> r = inspect_data("labels.csv")
        >>> r.class_counts
        {'normal': 120, 'lesion': 30}
    """
    target = Path(target)
    listing = _listing_for(target, cfg)
    probes: list[dict[str, Any]] = []
    if listing.paths:
        # No stealing: a decoder crash on a bad file must end up in the report, not end it.
        probes = run_chunked(_probe_chunk, listing.paths, listing.read_args(), workers, on_crash=_crashed, steal=False)
    r = InspectReport(source=listing.source, task=listing.task, classes=listing.classes, n_files=len(listing.paths))
    r.notes = list(listing.notes)
    r.errors = [(p["path"], p["error"]) for p in probes if p["error"]]
    r.warnings = [(p["path"], w) for p in probes for w in p.get("warnings", ())]
    r.formats = dict(Counter(p.get("format", "unreadable") for p in probes).most_common())
    r.sizes = {f"{h}x{w}": n for (h, w), n in Counter(p["shape"] for p in probes if p["shape"]).most_common()}
    headers = [p["header"] for p in probes if p["header"]]
    for key in HEADER_FIELDS:
        counts = Counter(_show(key, h.get(key)) for h in headers)
        if counts and set(counts) != {"(missing)"}:
            r.dicom[key] = dict(counts.most_common())
    header_ids = {h["PatientID"] for h in headers if h.get("PatientID")}
    r.header_patients = len(header_ids)
    _count_labels(r, listing)
    _count_patients(r, listing)
    by_sha: dict[str, list[str]] = {}
    for p in probes:
        if p["sha"]:
            by_sha.setdefault(p["sha"], []).append(p["path"])
    r.duplicate_groups = [g for g in by_sha.values() if len(g) > 1]
    _add_notes(r, listing, headers)
    _add_problems(r, listing)
    return r


def _add_problems(r: InspectReport, listing: _Listing) -> None:
    """Dataset-level reasons training would fail or learn nothing, one line each."""
    if not listing.paths:
        r.problems.append(f"{listing.source}: no image files found; add DICOM/PNG/JPEG files (or rows to the CSV)")
    if r.class_counts and listing.paths:
        empty = [c for c, n in r.class_counts.items() if n == 0]
        if empty:
            what = "positive films" if listing.task == "multilabel" else "films"
            r.problems.append(
                f"{listing.source}: no {what} of class(es) {', '.join(map(repr, empty))} (counts: "
                + ", ".join(f"{c} {n}" for c, n in r.class_counts.items())
                + "); a classifier needs examples of every class: add them, or check data.classes and the label column"
            )


def _show(key: str, value: str | None) -> str:
    if value is None:
        return "(missing)"
    if key == "TransferSyntaxUID":
        try:
            name = UID(value).name
            return f"{name} ({value})" if name != value else value
        except Exception:  # an odd UID is shown as it is
            return value
    return value


def _count_labels(r: InspectReport, listing: _Listing) -> None:
    if listing.labels is None or listing.classes is None:
        return
    if listing.task == "multilabel":
        r.class_counts = {c: int(sum(lab[i] for lab in listing.labels)) for i, c in enumerate(listing.classes)}
        return
    counts = Counter(listing.labels)
    r.class_counts = {c: int(counts.get(i, 0)) for i, c in enumerate(listing.classes)}


def _count_patients(r: InspectReport, listing: _Listing) -> None:
    r.patient_source = listing.patient_source
    patients = listing.patients or [f"file:{p}" for p in listing.paths]
    films = Counter(patients)
    r.n_patients = len(films)
    r.films_per_patient = dict(sorted(Counter(films.values()).items()))
    if listing.labels is not None and listing.task != "multilabel":
        seen: dict[str, set] = {}
        for pid, lab in zip(patients, listing.labels):
            seen.setdefault(pid, set()).add(lab)
        r.mixed_label_patients = sorted(pid for pid, labs in seen.items() if len(labs) > 1)


def _add_notes(r: InspectReport, listing: _Listing, headers: list[dict]) -> None:
    mods = Counter(h.get("Modality") for h in headers)
    odd = {m: n for m, n in mods.items() if m not in _CHEST_MODALITIES}
    if odd:
        r.notes.append(
            "modality not CR/DX in " + ", ".join(f"{n} file(s) ({m})" for m, n in odd.items())
            + ": check these are radiographs"
        )
    parts = Counter(h.get("BodyPartExamined") for h in headers)
    odd_parts = {b: n for b, n in parts.items() if b not in ("CHEST", None)}
    if odd_parts:
        r.notes.append("body part not CHEST in " + ", ".join(f"{n} file(s) ({b})" for b, n in odd_parts.items()))
    frames = [h for h in headers if h.get("NumberOfFrames") not in (None, "1")]
    if frames and listing.frame is None:
        r.notes.append(
            f"{len(frames)} multi-frame file(s): refused (listed as unreadable); set data.frame: 0 in a config "
            "to read their first frame"
        )
    elif frames:
        r.notes.append(f"{len(frames)} multi-frame file(s): frame {listing.frame} of each is read (data.frame)")
    if listing.patients is None and r.header_patients:
        r.notes.append(
            f"no patient ids given, but the DICOM headers name {r.header_patients} patient(s) for "
            f"{len(headers)} file(s); set data.patient_column: dicom:PatientID to group splits by patient"
        )
    if r.duplicate_groups:
        patients = dict(zip(listing.paths, listing.patients or listing.paths))
        across = sum(1 for g in r.duplicate_groups if len({patients.get(p) for p in g}) > 1)
        r.notes.append(
            f"{len(r.duplicate_groups)} group(s) of byte-identical files ({across} across different patient ids); "
            "splits keep each group on one side"
        )
    if r.mixed_label_patients:
        r.notes.append(f"{len(r.mixed_label_patients)} patient(s) have films with different labels")


def _table(counts: dict[Any, int], total: int | None = None, limit: int = 12) -> list[str]:
    items = list(counts.items())
    width = max((len(str(k)) for k, _ in items[:limit]), default=0)
    lines = []
    for k, n in items[:limit]:
        pct = f"  {100.0 * n / total:5.1f}%" if total else ""
        lines.append(f"    {str(k):<{width}}  {n:>6}{pct}")
    if len(items) > limit:
        lines.append(f"    ... {len(items) - limit} more")
    return lines


def format_report(report: InspectReport) -> str:
    """The report as plain text for the terminal.

    Example:
        >>> print(format_report(inspect_data("sample_data")))
    """
    r = report
    out = [f"dataset: {r.source}", f"files: {r.n_files}   unreadable: {r.n_errors}"]
    if r.formats:
        out.append("formats: " + ", ".join(f"{k} {v}" for k, v in r.formats.items()))
    if r.class_counts:
        out.append(f"classes ({r.task}):")
        out += _table(r.class_counts, total=r.n_files if r.task != "multilabel" else None)
    else:
        out.append("classes: (no labels)")
    out.append(f"patients: {r.n_patients}   (patient ids: {r.patient_source})")
    if r.films_per_patient:
        out.append("  films per patient: " + ", ".join(f"{k} film(s): {v}" for k, v in r.films_per_patient.items()))
    if r.header_patients:
        out.append(f"  distinct DICOM PatientID: {r.header_patients}")
    if r.sizes:
        out.append("image sizes (rows x columns):")
        out += _table(r.sizes, total=sum(r.sizes.values()), limit=8)
    if r.dicom:
        out.append("DICOM headers:")
        for key, counts in r.dicom.items():
            out.append(f"  {key}:")
            out += _table(counts, limit=6)
    if r.notes:
        out.append("notes:")
        out += [f"  - {n}" for n in r.notes]
    if r.warnings:
        files = len({p for p, _ in r.warnings})
        out.append(f"read with warnings ({files} file(s)):")
        out += [f"  {p}: {why}" for p, why in r.warnings[:_WARNINGS_SHOWN]]
        if len(r.warnings) > _WARNINGS_SHOWN:
            out.append(f"  ... {len(r.warnings) - _WARNINGS_SHOWN} more")
    if r.errors:
        out.append(f"unreadable files ({r.n_errors}):")
        out += [f"  {p}: {why}" for p, why in r.errors]
    elif r.n_files:
        out.append("all files decode")
    if r.problems:  # last, so the reason for a non-zero exit is what the user sees
        out.append(f"problems ({len(r.problems)}):")
        out += [f"  {line}" for line in r.problems]
    return "\n".join(out)

