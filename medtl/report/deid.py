"""De-identification: the DICOM PHI tag list, scrubbing, and a PHI scanner (the salted
patient-id hashes live in :mod:`medtl.io.pseudonyms` and are re-exported here).

The report never shows a raw patient id; it shows ``hash_patient_id(pid, salt)``, a keyed
SHA-256 (HMAC) cut to a short hex string. The salt is random, one per run, kept in the run
folder (:func:`run_salt`, file ``deid.salt``) and never printed, so the same patient gets the
same hash within a run (folds can be compared) while hashes cannot be reversed by hashing a
list of candidate ids without the run folder.

:func:`find_phi` is the check behind the "no PHI anywhere" promise: it searches every file
under a folder for given strings, looking inside the places text hides in binary files (zip
members such as a ``.keras`` model, gzip, compressed PNG text chunks, base64 ``data:`` URIs in
HTML) and in file names.

Example:
    >>> salt = run_salt("runs/demo/cv-1a2b")          # created on first use
    >>> hash_patient_id("P0001", salt)                 # doctest: +SKIP
    '3f9c1a0b7e2d'
    >>> find_phi("runs/demo/cv-1a2b", ["TESTPHI^ANNA0001"])
    []
"""

from __future__ import annotations

import base64
import gzip
import html
import io
import json
import os
import re
import struct
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from medtl.io.pseudonyms import SALT_FILE, hash_patient_id, run_salt  # re-exported: the report's API

__all__ = [
    "PHI_TAGS",
    "SALT_FILE",
    "find_phi",
    "hash_patient_id",
    "phi_values",
    "read_phi",
    "run_salt",
    "scrub_text",
]

# DICOM keywords whose values identify a patient, or the people and places around one
# (after the DICOM PS3.15 Annex E basic confidentiality profile and the HIPAA identifiers).
PHI_TAGS: list[str] = [
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientAge",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "MedicalRecordLocator",
    "MilitaryRank",
    "Occupation",
    "PatientComments",
    "AdditionalPatientHistory",
    "ResponsiblePerson",
    "ReferringPhysicianName",
    "ReferringPhysicianAddress",
    "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "PhysiciansOfRecord",
    "RequestingPhysician",
    "OperatorsName",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "StationName",
    "DeviceSerialNumber",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
]

_MAX_DEPTH = 4  # nesting of containers (zip in zip ...) that find_phi opens
_DATA_URI = re.compile(rb"data:[\w.+/-]*;base64,([A-Za-z0-9+/=]+)")
_PDF_STREAM = re.compile(rb"stream\r?\n(.*?)\r?\nendstream", re.DOTALL)


# --------------------------------------------------------------------------------------------
# PHI values and scrubbing


def phi_values(header: Any, parts: bool = True) -> list[str]:
    """The non-empty values of :data:`PHI_TAGS` in a DICOM header (pydicom Dataset or dict).

    Multi-valued elements give one string per value. With ``parts``, person names also give
    each of their ``^``-separated parts of 3 or more characters (a report might print either;
    parts are short and can also occur in ordinary words, so leave them out for guards).
    """
    out: list[str] = []
    for tag in PHI_TAGS:
        value = header.get(tag) if isinstance(header, Mapping) else getattr(header, tag, None)
        if value is None:
            continue
        values = list(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" \
            else [value]
        for v in values:
            text = str(v).strip()
            if not text:
                continue
            out.append(text)
            if parts and "^" in text:
                out.extend(part for part in text.split("^") if len(part.strip()) >= 3)
    return list(dict.fromkeys(out))


def read_phi(path: str | Path, parts: bool = True) -> list[str]:
    """:func:`phi_values` of a DICOM file's header (pixels are not read); [] for non-DICOM
    or missing files.

    Example:
        >>> read_phi("sample_data/images/P0001_1.dcm")[:2]   # doctest: +SKIP
        ['TESTPHI^ANNA0001', 'TESTPHI']
    """
    import pydicom  # only needed here; keeps the report importable without it
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except (InvalidDicomError, OSError):
        return []
    return phi_values(ds, parts=parts)


def scrub_text(text: str, strings: Iterable[str] | Mapping[str, str], replacement: str = "[removed]") -> str:
    """Replace every case-insensitive occurrence of each string in ``text``.

    Args:
        text: the text to clean (a log line, an error message).
        strings: the values to remove, or a mapping value -> its own replacement.
        replacement: what replaces a value given in a plain list.

    Longer strings are replaced first, so a full name goes before its parts.

    Example:
        >>> scrub_text("patient DOE^JANE, born 19700101", ["Doe^Jane", "19700101"])
        'patient [removed], born [removed]'
    """
    subs = dict(strings) if isinstance(strings, Mapping) else dict.fromkeys(strings, replacement)
    for s in sorted((k for k in subs if k), key=len, reverse=True):
        text = re.sub(re.escape(s), lambda _m, r=subs[s]: r, text, flags=re.IGNORECASE)
    return text


# --------------------------------------------------------------------------------------------
# Scanning


def _variants(s: str) -> list[bytes]:
    """Byte patterns (lower-cased) under which ``s`` may be stored in a file."""
    forms = {s, html.escape(s, quote=True), json.dumps(s)[1:-1]}
    out = set()
    for f in forms:
        out.add(f.lower().encode("utf-8"))
        out.add(f.lower().encode("utf-16-le"))
    return sorted(out)


def _png_texts(data: bytes) -> Iterator[tuple[str, bytes]]:
    """(chunk type, decompressed text) of a PNG's zTXt and iTXt chunks (tEXt is plain bytes)."""
    pos = 8
    while pos + 8 <= len(data):
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        try:
            if ctype == b"zTXt":
                key, _, rest = body.partition(b"\0")
                yield "zTXt", key + b"\0" + zlib.decompress(rest[1:])
            elif ctype == b"iTXt":
                key, _, rest = body.partition(b"\0")
                compressed, rest = rest[0], rest[2:]
                lang, _, rest = rest.partition(b"\0")
                tkey, _, text = rest.partition(b"\0")
                if compressed:
                    text = zlib.decompress(text)
                yield "iTXt", b"\0".join((key, lang, tkey, text))
        except (zlib.error, IndexError):
            continue  # a damaged chunk: its raw bytes were searched already


def _inner(data: bytes) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) of the containers found in ``data``."""
    if data[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                for info in zf.infolist():
                    if not info.is_dir():
                        yield info.filename, zf.read(info)
        except (zipfile.BadZipFile, OSError, RuntimeError):
            pass
    elif data[:2] == b"\x1f\x8b":
        try:
            yield "<gunzip>", gzip.decompress(data)
        except (OSError, EOFError, zlib.error):
            pass
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        yield from ((f"<{kind}>", text) for kind, text in _png_texts(data))
    elif data[:5] == b"%PDF-":
        for i, m in enumerate(_PDF_STREAM.finditer(data)):
            try:
                yield f"<pdf-stream {i}>", zlib.decompress(m.group(1))
            except zlib.error:
                continue  # not Flate-compressed: its raw bytes were searched already
    if b";base64," in data:
        for i, m in enumerate(_DATA_URI.finditer(data)):
            try:
                yield f"<data-uri {i}>", base64.b64decode(m.group(1), validate=False)
            except ValueError:
                continue


def _scan(data: bytes, label: str, needles: dict[str, list[bytes]], depth: int,
          hits: dict[tuple[str, str], None]) -> None:
    low = data.lower()
    if b";base64," in data:
        # Base64 text is not readable content, and its small alphabet spells short ids by chance
        # (a 5-character id like 'P0009' turns up in a few MB of embedded images): payloads
        # are searched decoded only, as the report's own guard does.
        low = _DATA_URI.sub(lambda m: m.group(0)[:m.start(1) - m.start(0)], data).lower()
    for s, forms in needles.items():
        if any(f in low for f in forms):
            hits[(label, s)] = None
    if depth >= _MAX_DEPTH:
        return
    for name, inner in _inner(data):
        low_name = name.lower().encode("utf-8")
        for s, forms in needles.items():
            if any(f in low_name for f in forms):
                hits[(f"{label}!{name}", s)] = None
        _scan(inner, f"{label}!{name}", needles, depth + 1, hits)


def _walk(root: Path) -> list[Path]:
    out = []
    for folder, dirs, names in os.walk(root, followlinks=False):
        out.extend(Path(folder) / d for d in dirs)
        out.extend(Path(folder) / n for n in names)
    return sorted(out)


def find_phi(root_dir: str | Path, strings: Iterable[str]) -> list[tuple[str, str]]:
    """Every file under ``root_dir`` (or the one file) that holds one of ``strings``.

    The search is case-insensitive and covers raw bytes (UTF-8, UTF-16-LE, HTML- and
    JSON-escaped forms), file and folder names, and, recursively, the members of zip files
    (``.keras``, ``.npz``), gzip data, compressed PNG text chunks, Flate-compressed PDF
    streams and base64 ``data:`` URIs. Text drawn into pixels, or PDF text stored as font
    glyph ids, cannot be found this way.

    Args:
        root_dir: a folder (searched recursively, symlinks not followed) or a file.
        strings: the PHI values to look for (empty strings are ignored).

    Returns:
        Sorted (file, string) pairs. ``file`` is the path; a hit inside a container is
        written ``path!member`` (nested: ``path!member!<zTXt>``).

    Example:
        >>> find_phi("runs/demo", ["TESTPHI^ANNA0001"])
        [('runs/demo/report.html!<data-uri 3>!<zTXt>', 'TESTPHI^ANNA0001')]
    """
    needles = {s: _variants(s) for s in dict.fromkeys(strings) if s}
    root = Path(root_dir)
    if not root.exists():
        raise FileNotFoundError(f"{root}: not found; pass the run or report folder to search")
    hits: dict[tuple[str, str], None] = {}
    if not needles:
        return []
    files = [root] if root.is_file() else _walk(root)
    for path in files:
        rel = path.name if path == root else str(path.relative_to(root))
        low_name = rel.lower().encode("utf-8")
        for s, forms in needles.items():
            if any(f in low_name for f in forms):
                hits[(str(path), s)] = None
        if path.is_symlink() or not path.is_file():
            continue
        _scan(path.read_bytes(), str(path), needles, 0, hits)
    return sorted(hits)
