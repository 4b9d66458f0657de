"""The manifest: which files, which labels, which patients.

A manifest comes from a labels CSV (``data.manifest: labels.csv``) or from a folder with one
sub-folder per class (``data.manifest: images/``). Every row names an existing file, a label
that is valid for the task and a patient id; anything else stops with a one-line error that
names the file, the key and the value at fault.

Example:
    >>> from medtl.config import load_config
    >>> m = load_manifest(load_config("configs/demo.yaml"))
    >>> len(m), m.classes, m.targets().shape
    (150, ['normal', 'lesion'], (150, 1))
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from medtl.config import Config, ConfigError
from medtl.io import read_header
from medtl.io.image import is_image_file
from medtl.io.pseudonyms import hash_patient_id, run_salt

RESERVED = ("path", "patient_id", "label")
# Separators tried when a CSV's header line holds no comma (European Excel saves ';').
_SEPARATORS = (";", "\t", "|")
# First bytes of files that are certainly not a CSV: ZIP (xlsx, odt), PNG, JPEG, TIFF, GIF, PDF.
_BINARY_MAGIC = (b"PK\x03\x04", b"\x89PNG", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"GIF8", b"%PDF")


class DataError(ValueError):
    """The data (files, labels, patient ids) cannot be used; the message says which and why."""


@dataclass
class Manifest:
    """A table of images with their labels and patients.

    Attributes:
        df: one row per image; columns ``path`` (absolute), ``patient_id`` (str), ``label``
            (class index; for multilabel the 0/1 label columns instead) and the CSV's other
            columns.
        classes: class names; for binary ``classes[1]`` is the positive class; for multilabel
            the label columns.
        task: ``binary``, ``multiclass`` or ``multilabel``.
        source: the CSV or folder it was read from.
    """

    df: pd.DataFrame
    classes: list[str]
    task: str
    source: str = ""
    label_columns: list[str] = field(default_factory=list)
    #: What reading the labels decided that a user should hear (e.g. names outside data.classes).
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.df)

    @property
    def paths(self) -> list[str]:
        """Absolute file paths, in row order."""
        return self.df["path"].tolist()

    @property
    def n_outputs(self) -> int:
        """Model outputs K: 1 for binary, else the number of classes."""
        return 1 if self.task == "binary" else len(self.classes)

    def targets(self) -> np.ndarray:
        """float32 (N, K) targets: 0/1 for binary (K=1), one-hot, or multi-hot."""
        if self.task == "multilabel":
            return self.df[self.label_columns].to_numpy(dtype=np.float32)
        labels = self.df["label"].to_numpy(dtype=np.int64)
        if self.task == "binary":
            return labels.astype(np.float32)[:, None]
        return np.eye(len(self.classes), dtype=np.float32)[labels]

    def class_counts(self) -> np.ndarray:
        """Images per class (binary: [negatives, positives]; multilabel: positives per label)."""
        if self.task == "multilabel":
            return self.targets().sum(axis=0).astype(np.int64)
        return np.bincount(self.df["label"].to_numpy(dtype=np.int64), minlength=len(self.classes))

    def strata(self) -> np.ndarray:
        """One int per row to stratify splits on (multilabel: the rarest positive label, or K)."""
        if self.task != "multilabel":
            return self.df["label"].to_numpy(dtype=np.int64)
        t = self.targets()
        k = t.shape[1]
        rarity = np.argsort(np.argsort(t.sum(axis=0)))  # 0 = rarest label
        ranked = np.where(t > 0, rarity[None, :], k)
        best = ranked.argmin(axis=1)
        return np.where(t.any(axis=1), best, k)

    def subset(self, idx: Sequence[int] | np.ndarray) -> Manifest:
        """Rows ``idx`` (positions) as a new manifest with a fresh 0..n-1 index."""
        idx = np.asarray(idx, dtype=np.int64)
        return Manifest(
            self.df.iloc[idx].reset_index(drop=True), list(self.classes), self.task, self.source,
            list(self.label_columns), list(self.notes),
        )


def load_manifest(cfg: Config, check_files: bool = True, labels: bool = True) -> Manifest:
    """Read the manifest named by ``cfg.data.manifest`` (a CSV or a class-per-folder tree).

    Args:
        cfg: the run config (``data.*`` keys and ``task``).
        check_files: raise when listed files do not exist (``medtl inspect`` turns this off to
            report them with the unreadable ones).
        labels: False reads a CSV without its label column(s) (films to score, e.g. by
            ``medtl evaluate`` on unlabelled films): ``label`` is -1 (multilabel: 0 columns)
            and the classes are ``data.classes`` (or the label column names).

    Returns:
        The validated manifest.

    Raises:
        ConfigError: a column, class list or patient source in the config does not fit the data.
        DataError: missing files, unknown labels, missing patient ids, or an empty manifest.

    Example:
        >>> m = load_manifest(cfg)
        >>> m.df[["path", "patient_id", "label"]].head()
    """
    src = Path(cfg.data.manifest)
    if not src.exists():
        raise ConfigError(f"data.manifest: {src} not found; give a labels CSV or a folder with one sub-folder per class")
    if src.is_dir():
        df, classes = _read_tree(src, cfg)
        label_columns: list[str] = []
    else:
        df, classes, label_columns = _read_csv(src, cfg, labels)
    notes: list[str] = df.attrs.pop("medtl_notes", [])
    if df.empty:
        raise DataError(f"{src}: the manifest has no images; add rows (or class folders with images)")
    if check_files:
        _check_files(df, src, cfg)
    df["patient_id"] = _patient_ids(df, src, cfg, strict=check_files)
    dup = df["path"][df["path"].duplicated()].unique().tolist()
    if dup:
        raise DataError(
            f"{src}: {len(dup)} file(s) listed more than once: {', '.join(dup)}; remove the duplicate rows"
        )
    front = ["path", "patient_id"] + (label_columns if cfg.task == "multilabel" else ["label"])
    df = df[front + [c for c in df.columns if c not in front]].reset_index(drop=True)
    return Manifest(df, classes, cfg.task, str(src), label_columns, notes)


# --------------------------------------------------------------------------------------------
# CSV


def csv_separator(src: str | os.PathLike[str]) -> str:
    """The column separator of a labels CSV, judged from its header line.

    ',' when the header holds a comma (or no separator at all: one column); otherwise the most
    frequent of ';', tab and '|', so a CSV saved by a European Excel reads as it is.

    Raises:
        DataError: the file is empty, binary (e.g. an Excel workbook) or an image.

    Example:
        >>> csv_separator("labels.csv")
        ','
    """
    path = Path(src)
    try:
        with open(path, "rb") as fh:
            head = fh.read(8192)
    except OSError as exc:
        raise DataError(f"{path}: cannot open ({exc.strerror}); check the path and its permissions") from None
    if not head.strip():
        raise DataError(f"{path}: empty file, not a labels CSV; write a header row (e.g. file,label) and one row per image")
    if head[128:132] == b"DICM" or head.startswith(_BINARY_MAGIC) or b"\x00" in head:
        image = head[128:132] == b"DICM" or head.startswith(_BINARY_MAGIC[1:6]) or is_image_file(path)
        what = "an image file" if image else "a binary file (e.g. an Excel workbook, a PDF or UTF-16 text)"
        raise DataError(
            f"{path}: {what}, not a labels CSV; give a CSV with a header row (e.g. file,label; save a spreadsheet "
            "as CSV), a folder of images, or a YAML config"
        )
    first = head.decode("utf-8", errors="replace").lstrip("\ufeff").splitlines()[0]
    if "," in first:
        return ","
    counts = {sep: first.count(sep) for sep in _SEPARATORS}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","


def read_csv_table(src: str | os.PathLike[str], **kwargs: Any) -> pd.DataFrame:
    """``pd.read_csv`` with the separator from :func:`csv_separator` and one-line errors.

    Raises:
        DataError: empty, binary or unparsable file, naming it.
    """
    sep = csv_separator(src)
    try:
        return pd.read_csv(src, sep=sep, **kwargs)
    except Exception as exc:  # pandas raises several types for unreadable CSVs
        raise DataError(
            f"{src}: cannot read as CSV ({' '.join(str(exc).split())}); save it as comma-separated text with a header row"
        ) from None


def _read_csv(src: Path, cfg: Config, labels: bool = True) -> tuple[pd.DataFrame, list[str], list[str]]:
    d = cfg.data
    cols = [str(c) for c in read_csv_table(src, nrows=0).columns]
    # Paths and ids stay text: "007" must not become 7, nor "12" a float with a gap elsewhere.
    as_text = {c: str for c in (d.path_column, d.patient_column) if c in cols}
    raw = read_csv_table(src, dtype=as_text)
    label_cols = d.label_column if isinstance(d.label_column, list) else [d.label_column]
    checked = [("data.label_column", c) for c in label_cols] if labels else []  # unlabelled: none needed
    for key, col in [("data.path_column", d.path_column)] + checked:
        if col not in cols:
            raise ConfigError(f"{key}: column {col!r} not in {src} (columns: {', '.join(cols)}); set {key} to one of them")
    pc = d.patient_column
    if pc and not pc.startswith("dicom:") and pc.lower() != "none" and pc not in cols:
        raise ConfigError(
            f"data.patient_column: column {pc!r} not in {src} (columns: {', '.join(cols)}); "
            "set it to one of them, to dicom:PatientID, or to none"
        )
    root = Path(d.root) if d.root else src.parent
    used = (d.path_column, *label_cols, pc)
    df = raw.rename(columns={c: f"{c}_csv" for c in RESERVED if c in cols and c not in used})
    if df.empty:
        raise DataError(f"{src}: the manifest has no images (a header row only); add one row per image")
    sep = csv_separator(src)
    if sep != ",":
        df.attrs.setdefault("medtl_notes", []).append(f"{src.name} read as {sep!r}-separated (no comma in its header)")
    rel = df[d.path_column]
    blank = [i + 2 for i, v in enumerate(rel) if not isinstance(v, str) or not v.strip()]
    if blank:
        raise DataError(f"{src}: empty {d.path_column!r} on line(s) {_short(blank)}; give a file path in every row")
    df["path"] = [str(_absolute(root, p)) for p in rel]
    if not labels:
        if cfg.task == "multilabel":
            for c in label_cols:
                df[c] = 0
            return df, list(d.classes or label_cols), label_cols
        df["label"] = -1
        return df, list(d.classes or []), []
    if cfg.task == "multilabel" and d.label_separator:
        return _separated_labels(df, d.label_column, d.label_separator, list(d.classes or []), src)
    if cfg.task == "multilabel":
        classes = _multilabel(df, label_cols, src, cfg)
        return df, classes, label_cols
    labels, classes = _encode_labels(df[d.label_column].tolist(), src, d.label_column, cfg)
    df["label"] = labels
    return df, classes, []


def _absolute(root: Path, p: str) -> Path:
    path = Path(p.strip()).expanduser()
    return path if path.is_absolute() else Path(os.path.abspath(root / path))


def is_integer_value(v: Any) -> bool:
    """True for an int, or a finite float with no fraction (not for bools or strings)."""
    if isinstance(v, (bool, np.bool_)):
        return False
    if isinstance(v, (int, np.integer)):
        return True
    if isinstance(v, (float, np.floating)):
        return bool(np.isfinite(v)) and float(v).is_integer()
    return isinstance(v, str) and v.strip().lstrip("-").isdigit()


def _encode_labels(values: list, src: Path, col: str, cfg: Config) -> tuple[list[int], list[str]]:
    """Class indices from ints or class names, checked against data.classes."""
    classes = list(cfg.data.classes) if cfg.data.classes else None
    names = [str(v).strip() for v in values]
    missing = [i + 2 for i, v in enumerate(values) if pd.isna(v) or names[i] == ""]
    if missing:
        raise DataError(f"{src}: empty {col!r} on line(s) {_short(missing)}; give a label in every row")
    if classes is None:
        if all(is_integer_value(v) for v in values):
            top = max(int(float(v)) for v in values)
            if cfg.task == "binary":
                classes = ["negative", "positive"]
            else:
                classes = [str(i) for i in range(max(top + 1, 2))]
        elif cfg.task == "binary":
            found = sorted(set(names))
            raise ConfigError(
                f"data.classes: needed to tell which label in {src} is positive (values: {', '.join(found)}); "
                f"set classes: [<negative>, <positive>]"
            )
        else:
            classes = sorted(set(n for n, v in zip(names, values) if not is_integer_value(v)))
    _check_classes(classes, cfg)
    index = {c: i for i, c in enumerate(classes)}
    out = []
    for line, (v, name) in enumerate(zip(values, names), start=2):
        if name in index:
            out.append(index[name])
        elif is_integer_value(v) and 0 <= int(float(v)) < len(classes):
            out.append(int(float(v)))
        else:
            raise DataError(
                f"{src} line {line}: unknown label {name!r} in column {col!r}; expected one of "
                f"{', '.join(classes)} or 0..{len(classes) - 1} (data.classes)"
            )
    return out, classes


def _check_classes(classes: list[str], cfg: Config) -> None:
    if cfg.task == "binary" and len(classes) != 2:
        raise ConfigError(
            f"data.classes: {classes} has {len(classes)} classes but task is binary; give exactly two, "
            "[negative, positive], or set task: multiclass"
        )
    if cfg.task == "multiclass" and len(classes) < 2:
        raise ConfigError(f"data.classes: {classes} has fewer than two classes; give at least two")
    if len(set(classes)) != len(classes):
        raise ConfigError(f"data.classes: {classes} repeats a class name; give each once")


def _multilabel(df: pd.DataFrame, cols: list[str], src: Path, cfg: Config) -> list[str]:
    problems = []
    for col in cols:
        vals = pd.to_numeric(df[col], errors="coerce")
        bad = [(i + 2, v) for i, (v, n) in enumerate(zip(df[col], vals)) if n not in (0, 1)]
        if bad:
            line, v = bad[0]
            problems.append(f"{col!r} has {v!r} on line {line} ({len(bad)} bad row(s))")
        else:
            df[col] = vals.astype(np.int64)
    if problems:  # every bad column at once, so one fix round is enough
        raise DataError(f"{src}: label column {'; '.join(problems)}; multilabel columns must hold 0 or 1 "
                        "(uncertain or missing labels need deciding first, e.g. as 0)")
    classes = list(cfg.data.classes) if cfg.data.classes else list(cols)
    if len(classes) != len(cols):
        raise ConfigError(
            f"data.classes: {classes} must name the {len(cols)} label columns {cols} one to one (or be left out)"
        )
    return classes


def _separated_labels(df: pd.DataFrame, col: str, sep: str, classes: list[str], src: Path
                      ) -> tuple[pd.DataFrame, list[str], list[str]]:
    """0/1 columns for ``classes`` from one column of names joined by ``sep``.

    Names outside ``classes`` (e.g. "No Finding", or findings left out on purpose) count as no
    finding; how often each occurred is kept as a note, so a misspelt class shows up there.
    """
    values = df[col].tolist()
    empty = [i + 2 for i, v in enumerate(values) if pd.isna(v) or not str(v).strip()]
    if empty:
        raise DataError(f"{src}: empty {col!r} on line(s) {_short(empty)}; give the findings (or a name such "
                        "as 'No Finding') in every row")
    tokens = [{t.strip() for t in str(v).split(sep) if t.strip()} for v in values]
    label_cols = [f"{col}={c}" for c in classes]
    clash = [c for c in label_cols if c in df.columns]
    if clash:
        raise ConfigError(f"{src}: column(s) {', '.join(clash)} already exist; rename them")
    for c, name in zip(classes, label_cols):
        df[name] = np.array([c in t for t in tokens], dtype=np.int64)
    other: dict[str, int] = {}
    for t in tokens:
        for name in t - set(classes):
            other[name] = other.get(name, 0) + 1
    unused = [c for c, name in zip(classes, label_cols) if not df[name].any()]
    if unused:
        raise ConfigError(f"data.classes: no row of {col!r} in {src} names {', '.join(map(repr, unused))}; check "
                          f"the spelling against the names found: {', '.join(sorted(set().union(*tokens))[:20])}")
    if other:
        listed = ", ".join(f"{n} {k}" for n, k in sorted(other.items(), key=lambda kv: (-kv[1], kv[0])))
        df.attrs.setdefault("medtl_notes", []).append(f"names in {col!r} outside data.classes, read as no finding: {listed}")
    return df, classes, label_cols


# --------------------------------------------------------------------------------------------
# Folder tree


def _read_tree(src: Path, cfg: Config) -> tuple[pd.DataFrame, list[str]]:
    if cfg.task == "multilabel":
        raise ConfigError(f"data.manifest: {src} is a folder, but a multilabel task needs a CSV with one 0/1 column per label")
    pc = cfg.data.patient_column
    if pc and not pc.startswith("dicom:") and pc.lower() != "none":
        raise ConfigError(
            f"data.patient_column: {pc!r} names a CSV column but data.manifest {src} is a folder; "
            "use dicom:PatientID or none"
        )
    folders = sorted(p.name for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{src}: no class sub-folders; put each class's images in its own sub-folder or give a labels CSV")
    classes = list(cfg.data.classes) if cfg.data.classes else folders
    _check_classes(classes, cfg)
    extra = sorted(set(folders) - set(classes))
    absent = [c for c in classes if c not in folders]
    if extra or absent:
        raise ConfigError(
            f"data.classes: {classes} does not match the sub-folders of {src} ({', '.join(folders)}); "
            "make data.classes list exactly the class folders"
        )
    rows = []
    for i, c in enumerate(classes):
        for f in sorted((src / c).rglob("*")):
            if f.is_file() and is_image_file(f):
                rows.append({"path": str(f.absolute()), "label": i, "class_name": c})
    return pd.DataFrame(rows, columns=["path", "label", "class_name"]), classes


# --------------------------------------------------------------------------------------------
# Files and patients


def _check_files(df: pd.DataFrame, src: Path, cfg: Config) -> None:
    missing = [p for p in df["path"] if not os.path.isfile(p)]
    if missing:
        where = f"data.root {cfg.data.root}" if cfg.data.root else f"the folder of {src.name}"
        raise DataError(
            f"{src}: {len(missing)} of {len(df)} listed file(s) not found: {', '.join(missing)}; "
            f"fix the paths (relative to {where}) or remove the rows"
        )


def _patient_ids(df: pd.DataFrame, src: Path, cfg: Config, strict: bool = True) -> list[str]:
    pc = cfg.data.patient_column
    if not pc or pc.lower() == "none":
        return [f"file:{p}" for p in df["path"]]  # each image is its own patient
    if pc.startswith("dicom:"):
        return _pseudonyms(dicom_header_ids(df["path"].tolist(), pc.split(":", 1)[1], src, strict), cfg.data.cache_dir)
    ids = df[pc]
    empty = [i + 2 for i, v in enumerate(ids) if pd.isna(v) or not str(v).strip()]
    if empty:
        raise DataError(
            f"{src}: column {pc!r} (data.patient_column) is empty on line(s) {_short(empty)}; "
            "fill in every patient id, or set patient_column: none to treat each image as its own patient"
        )
    return [_clean_id(v) for v in ids]


PATIENT_SALT_FILE = "patient-id.salt"


def _pseudonyms(ids: list[str], cache_dir: str) -> list[str]:
    """Patient ids read from DICOM headers are PHI: they are kept only as salted hashes
    (``pid-`` + 12 hex digits), so run folders, logs and reports never hold them. The salt lives
    in ``data.cache_dir``, which stays on this machine, so the same patient gets the same
    pseudonym in every run that shares the cache (resumed folds, runs to compare)."""
    salt = run_salt(cache_dir, name=PATIENT_SALT_FILE)
    return [i if i.startswith("file:") else f"pid-{hash_patient_id(i, salt)}" for i in ids]


def _clean_id(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))  # pandas reads an int column with gaps as float: 12.0 -> "12"
    return str(v).strip()


def dicom_header_ids(paths: list[str], tag: str, src: Path, strict: bool = True) -> list[str]:
    """Raw patient ids from a DICOM header field, one per path (the manifest pseudonymises them).

    Raises:
        DataError: (``strict``) files without the field; ``strict=False`` gives each of them its
            own id ``file:<path>`` instead.
    """

    out, bad = [], []
    for p in paths:
        try:
            value = read_header(p).get(tag, "__unknown_tag__")
        except Exception as exc:  # an unreadable header is reported like a missing id
            value, reason = None, str(exc)
        else:
            reason = "tag missing or empty"
        if value == "__unknown_tag__":
            raise ConfigError(
                f"data.patient_column: dicom:{tag} is not a header field medtl reads; use dicom:PatientID"
            )
        if value is None or not str(value).strip():
            bad.append(f"{p} ({reason})")
            out.append(f"file:{p}")
        else:
            out.append(str(value).strip())
    if bad and strict:
        raise DataError(
            f"{src}: no DICOM {tag} in {len(bad)} file(s): {', '.join(bad)}; "
            "give patient ids in a CSV column (data.patient_column) instead"
        )
    return out


def _short(lines: list[int], n: int = 20) -> str:
    head = ", ".join(str(x) for x in lines[:n])
    return head + (f" and {len(lines) - n} more" if len(lines) > n else "")
