"""Annotations of findings (boxes or masks) for scoring where heat maps point.

One CSV names them, with one row per box or mask (several rows per film are allowed):

- boxes: columns ``file, x, y, w, h`` in the film's own pixels (x, y: the box's top-left
  column and row; w, h: its width and height); a pixel (row r, column c) is inside when its
  centre is: ``x <= c + 0.5 < x + w`` and ``y <= r + 0.5 < y + h`` (integer boxes: columns x ..
  x + w - 1).
- masks: columns ``file, mask``, the mask a PNG or DICOM image of the film's own size; pixels
  at or above half the mask's maximum are the finding (binary masks: the non-zero pixels).

Optional columns: ``label`` (the finding's name; for a multiclass or multilabel run, the class
whose map the box is scored against, one of the run's class names) and ``patient_id``.
Relative ``file`` and ``mask`` paths are resolved against the CSV's folder (as a labels CSV made
by :func:`medtl.data.synthetic.make_sample_data` names its films).

Example:
    >>> ann = read_annotations("sample_data/boxes.csv")
    >>> regions = ann.regions(ann.files()[0], (256, 256))   # one boolean (H, W) array per row
"""

from __future__ import annotations

import csv
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medtl.io.image import read_image

__all__ = ["Annotations", "AnnotationError", "read_annotations", "annotations_digest", "BOX_COLUMNS"]

BOX_COLUMNS = ("file", "x", "y", "w", "h")
_HELP = ("an annotations CSV needs columns file, x, y, w, h (a box in the film's pixels) or file, mask "
         "(a mask image of the film's size); label and patient_id are optional")


class AnnotationError(ValueError):
    """An annotations CSV or mask is unreadable or wrong; the message names file, row and column."""


@dataclass(frozen=True)
class _Row:
    """One annotation row: a box (x, y, w, h) or a mask file, where it came from."""

    where: str  # "boxes.csv row 3": the CSV and its data row (1 = the first row below the header)
    box: tuple[float, float, float, float] | None
    mask: str | None
    label: str


@dataclass
class Annotations:
    """The rows of an annotations CSV grouped by film (absolute paths)."""

    source: Path
    rows: dict[str, list[_Row]] = field(default_factory=dict)
    patients: dict[str, str] = field(default_factory=dict)

    def files(self) -> list[str]:
        """The annotated films, in the CSV's order."""
        return list(self.rows)

    def labels(self, file: str) -> list[str]:
        """The distinct ``label`` values of ``file``'s rows, in the CSV's order ('' for no label).

        Example:
            >>> ann.labels("/data/images/P0001_1.dcm")
            ['effusion', 'nodule']
        """
        return list(dict.fromkeys(row.label for row in self.rows[file]))

    def regions(self, file: str, shape: tuple[int, int], label: str | None = None) -> list[np.ndarray]:
        """One boolean (H, W) array per annotation row of ``file``, for a film of ``shape``.

        Args:
            file: the film (absolute path, as :meth:`files` gives it).
            shape: the film's (H, W).
            label: only the rows with this ``label`` (None: every row).

        Raises:
            AnnotationError: a box reaches outside the film, or a mask is not the film's size.

        Example:
            >>> ann.regions("/data/images/P0001_1.dcm", (256, 256))[0].sum()
        """
        h, w = shape
        out = []
        for row in self.rows[file]:
            if label is not None and row.label != label:
                continue
            if row.mask is not None:
                m = read_image(row.mask, window="minmax")
                if m.shape != (h, w):
                    raise AnnotationError(
                        f"{row.where}, column mask: {row.mask} is {m.shape[0]}x{m.shape[1]} (rows x columns) but "
                        f"film {file} is {h}x{w}; give a mask of the film's own size")
                region = m >= 0.5 * m.max() if m.max() > 0 else np.zeros((h, w), bool)
            else:
                x, y, bw, bh = row.box  # type: ignore[misc]
                if x < 0 or y < 0 or x + bw > w or y + bh > h:
                    raise AnnotationError(
                        f"{row.where}: box x={x:g}, y={y:g}, w={bw:g}, h={bh:g} reaches outside film {file} of "
                        f"{w}x{h} (width x height); give x, y, w, h in the film's own pixels")
                cols = np.arange(w) + 0.5
                rws = np.arange(h) + 0.5
                region = ((rws >= y) & (rws < y + bh))[:, None] & ((cols >= x) & (cols < x + bw))[None, :]
            if not region.any():
                raise AnnotationError(f"{row.where}: the annotation covers no pixel of {file}; "
                                      "give a box at least one pixel wide and high, or a non-empty mask")
            out.append(region)
        return out


def _number(text: str, where: str, column: str, positive: bool) -> float:
    try:
        v = float(text)
    except (TypeError, ValueError):
        v = math.nan
    if not math.isfinite(v) or (positive and v <= 0) or (not positive and v < 0):
        need = "a number > 0" if positive else "a number >= 0"
        raise AnnotationError(f"{where}, column {column}: {text!r} is not {need}; give the box in the film's "
                              "own pixels (x, y: top-left column and row; w, h: width and height)")
    return v


def annotations_digest(path: str | Path) -> str:
    """The sha256 of an annotations CSV's bytes (not of the mask files it names).

    ``localisation.json`` records it, so the report can tell whether a stored result was scored
    against the CSV it is asked to show.

    Raises:
        AnnotationError: the file is missing.

    Example:
        >>> len(annotations_digest("sample_data/boxes.csv"))
        64
    """
    src = Path(path)
    if not src.is_file():
        raise AnnotationError(f"{src}: annotations file not found; give a CSV of boxes or masks ({_HELP})")
    return hashlib.sha256(src.read_bytes()).hexdigest()


def read_annotations(path: str | Path) -> Annotations:
    """Read an annotations CSV (boxes or masks; see the module docstring).

    Args:
        path: the CSV file.

    Returns:
        :class:`Annotations`, films keyed by absolute path.

    Raises:
        AnnotationError: the file is missing, lacks a column, or a row has a bad value
            (the message names the file, the row and the column).

    Example:
        >>> ann = read_annotations("sample_data/boxes.csv")
        >>> len(ann.files())
        24
    """
    src = Path(path)
    if not src.is_file():
        raise AnnotationError(f"{src}: annotations file not found; give a CSV of boxes or masks ({_HELP})")
    base = src.resolve().parent
    with src.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        cols = [c.strip() for c in reader.fieldnames or []]
        reader.fieldnames = cols
        has_mask = "mask" in cols
        need = ("file", "mask") if has_mask else BOX_COLUMNS
        missing = [c for c in need if c not in cols]
        if missing:
            raise AnnotationError(f"{src}: missing column(s) {', '.join(missing)}; {_HELP}")
        ann = Annotations(source=src)
        for i, rec in enumerate(reader, start=1):
            where = f"{src} row {i}"
            name = (rec.get("file") or "").strip()
            if not name:
                raise AnnotationError(f"{where}, column file: empty; give the film's path (relative to the CSV)")
            film = str((base / name).resolve())
            if not Path(film).is_file():
                raise AnnotationError(f"{where}, column file: {film} not found; give the film's path relative "
                                      f"to {base} or absolute")
            mask = box = None
            if has_mask:
                mtext = (rec.get("mask") or "").strip()
                if not mtext:
                    raise AnnotationError(f"{where}, column mask: empty; give a mask image of the film's size")
                mask = str((base / mtext).resolve())
                if not Path(mask).is_file():
                    raise AnnotationError(f"{where}, column mask: {mask} not found; give the mask's path "
                                          f"relative to {base} or absolute")
            else:
                box = (_number(rec["x"], where, "x", False), _number(rec["y"], where, "y", False),
                       _number(rec["w"], where, "w", True), _number(rec["h"], where, "h", True))
            ann.rows.setdefault(film, []).append(_Row(where, box, mask, (rec.get("label") or "").strip()))
            pid = (rec.get("patient_id") or "").strip()
            if pid:
                if ann.patients.setdefault(film, pid) != pid:
                    raise AnnotationError(f"{where}, column patient_id: {pid!r} but an earlier row gives "
                                          f"{ann.patients[film]!r} for the same film; give one patient per film")
    if not ann.rows:
        raise AnnotationError(f"{src}: no annotation rows; {_HELP}")
    return ann
