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
import hmac
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

import pydicom
from pydicom.errors import InvalidDicomError

import pandas as pd
import yaml

from medtl.io.atomic import read_json, write_json
from medtl.io.pseudonyms import SALT_FILE, hash_patient_id, run_salt  # re-exported: the report's API
from medtl.run.layout import (
    CV_FILE, DEID_INDEX_FILE, FOLDS_FILE, MODEL_INFO_FILE, OVERLAYS_FILE, OOF_FILE, PREDICTIONS_FILE, SKIPPED_FILE, SPLIT_FILE, TEST_PREDICTIONS,
    TEST_SKIPPED, VAL_PREDICTIONS, is_cv_run,
)

__all__ = [
    "LOCAL_FILES",
    "PHI_TAGS",
    "SALT_FILE",
    "build_deid_index",
    "deid_check",
    "find_in_text",
    "find_phi",
    "guard_strings",
    "identifying_strings",
    "looks_identifying",
    "run_identifiers",
    "shareable_config",
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

# Signatures of the image files medtl reads besides DICOM (never parsed as DICOM by force).
_IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"BM")
# Patient, study, series and image groups: a forced read that finds none was no DICOM file.
_DICOM_GROUPS = {0x0008, 0x0010, 0x0018, 0x0020, 0x0028}

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

    A file without the 128-byte preamble and 'DICM' marker (some PACS exports) is read with
    ``force`` and counts as DICOM when it holds patient, study or image elements.

    Example:
        >>> read_phi("sample_data/images/P0001_1.dcm")[:2]   # doctest: +SKIP
        ['TESTPHI^ANNA0001', 'TESTPHI']
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if head.startswith(_IMAGE_MAGIC):  # a PNG/JPEG/TIFF/BMP parsed with force is noise
                return []
            fh.seek(0)
            try:
                ds = pydicom.dcmread(fh, stop_before_pixels=True)
            except InvalidDicomError:
                fh.seek(0)
                ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True)
                if not any(tag.group in _DICOM_GROUPS for tag in ds.keys()):
                    return []
    except OSError:
        return []
    except Exception:  # noqa: BLE001 - pydicom raises many types on a damaged or non-DICOM file
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


# --------------------------------------------------------------------------------------------
# What identifies the patients of a run, and the guard's matching rules

#: The salted-hash index of a run's identifying strings (no raw value), beside ``deid.salt``.
#: Run-folder files that list the user's own films and patients: they stay local, and
#: :func:`deid_check` of a folder skips them unless asked (``include_local=True``).
LOCAL_FILES = frozenset({FOLDS_FILE, SPLIT_FILE, OOF_FILE, VAL_PREDICTIONS, TEST_PREDICTIONS, SKIPPED_FILE,
                         TEST_SKIPPED, PREDICTIONS_FILE, OVERLAYS_FILE.name, SALT_FILE, DEID_INDEX_FILE})
_INDEX_HASH_BYTES = 8  # 64 bits: no chance collision among millions of scanned tokens
_MAX_TOKENS = 24  # longest value (in word tokens) the index can find, e.g. a DICOM UID
_TOKEN = re.compile(r"[^\W_]+")  # letters and digits of any script; '_' separates
_NAME_LIKE = re.compile(r"[A-Z][A-Za-z'\-]*(?:[_ ,^]+[A-Z][A-Za-z'\-]*)+")  # DOE_JOHN, Doe, John
_TEXT_RUN = re.compile(rb"[\x20-\x7e]{6,}")  # printable runs in binary data, as `strings` finds them


def looks_identifying(name: str) -> bool:
    """Whether a folder name looks like a patient id or a person's name (``12345678``,
    ``P0001``, ``DOE^JOHN``, ``Doe_John``), not like a word such as ``images`` or ``train``."""
    name = name.strip()
    return len(name) >= 4 and (any(ch.isdigit() for ch in name) or "^" in name or bool(_NAME_LIKE.fullmatch(name)))


def identifying_strings(files: Iterable[str], patients: Iterable[Any] = (), classes: Iterable[str] = ()) -> list[str]:
    """Raw strings that identify the patients behind ``files``; kept in memory, never written.

    For each file: its path, name and stem, the DICOM PHI values of its header (read with
    ``force``, so preamble-less files count), and the folder names between the files' common
    folder and the file that :func:`looks_identifying` (class names excepted); plus the
    patient ids.

    Example:
        >>> identifying_strings(["/d/DOE_JOHN/12345678.dcm", "/d/x/1.png"], ["12345678"])[:3]
        ['12345678', '/d/DOE_JOHN/12345678.dcm', '12345678.dcm']
    """
    files = [str(f) for f in dict.fromkeys(files) if str(f).strip()]
    out = [str(p).strip() for p in patients]
    skip = {str(c).casefold() for c in classes}
    parents = {str(Path(f).parent) for f in files}
    root = Path(os.path.commonpath(list(parents))) if len(parents) > 1 else None
    for f in files:
        path = Path(f)
        out += [f, path.name, path.stem, *read_phi(f, parts=False)]
        if root is not None:
            try:
                folders = path.parent.relative_to(root).parts
            except ValueError:  # mixed absolute and relative paths: no common folder
                folders = ()
            out += [d for d in folders if looks_identifying(d) and d.casefold() not in skip]
    return list(dict.fromkeys(s for s in out if s))


def _is_strong(s: str) -> bool:
    """Letters and digits, not only hex: cannot turn up inside other text by chance."""
    return (any(ch.isdigit() for ch in s) and any(ch.isalpha() for ch in s)
            and not re.fullmatch(r"[0-9a-fA-F]+", s))


def guard_strings(strings: Iterable[Any]) -> list[str]:
    """The identifying strings worth looking for: 4+ characters, and numbers only from 6 digits
    on (a record number; shorter numbers are counts and file numbering)."""
    out = []
    for s in map(str, strings):
        s = s.strip()
        digits = s.replace(".", "").replace("-", "")
        if len(s) >= 4 and not (digits.isdigit() and len(digits) < 6):
            out.append(s)
    return list(dict.fromkeys(out))


def find_in_text(text: str, strings: Iterable[str]) -> list[str]:
    """The ``strings`` found in ``text`` (case-insensitive).

    A value of letters and digits (``P0001``, ``TESTPHI^ANNA0001``, a path) is found anywhere;
    a number, a hex-only or a digit-free value (``12345678``, ``ab12cd``, ``Doe``) only as a
    whole token, so an MRN is not 'found' inside a longer number or a salted hash.

    Example:
        >>> find_in_text("MRN: 12345678; hash a12345678b", ["12345678", "DOE"])
        ['12345678']
    """
    low = text.lower()
    found = []
    for s in dict.fromkeys(strings):
        needle = s.lower()
        if not needle:
            continue
        if _is_strong(s):
            if needle in low:
                found.append(s)
        elif re.search(r"(?<![^\W_])" + re.escape(needle) + r"(?![^\W_])", low):
            found.append(s)
    return found


def _is_path(v: str) -> bool:
    return ("/" in v or "\\" in v) and "://" not in v


def shareable_config(text: str) -> str:
    """A run's ``config.yaml`` text with every file-system path cut to its last name
    (``/data/DOE_JOHN/labels.csv`` -> ``labels.csv``); URLs and other values unchanged.

    Example:
        >>> shareable_config("data:\\n  manifest: /data/cxr/labels.csv\\n")
        'data:\\n  manifest: labels.csv\\n'
    """
    def cut(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: cut(x) for k, x in v.items()}
        if isinstance(v, list):
            return [cut(x) for x in v]
        if isinstance(v, str) and _is_path(v):
            return re.split(r"[\\/]", v.rstrip("/\\"))[-1] or v
        return v

    return yaml.safe_dump(cut(yaml.safe_load(text) or {}), sort_keys=False, allow_unicode=True)


def run_identifiers(run_dir: str | Path) -> list[str]:
    """:func:`identifying_strings` of every film and patient a run's tables list (a CV run's
    ``folds.csv`` and fold splits, a training run's validation predictions, skipped files).

    A training run lists only its validation films; its training films are not in the folder.
    """
    run = Path(run_dir)
    tables = [run / FOLDS_FILE, *run.glob(f"*/{SPLIT_FILE}")] if is_cv_run(run) else [run / VAL_PREDICTIONS]
    tables += [run / SKIPPED_FILE, *run.glob(f"*/{SKIPPED_FILE}"), *run.glob(f"*/{TEST_SKIPPED}")]
    files: list[str] = []
    patients: list[str] = []
    for t in tables:
        if not t.is_file():
            continue
        df = pd.read_csv(t, dtype=str, keep_default_na=False)
        files += [v for c in ("file", "path") if c in df for v in df[c]]
        patients += [v for c in ("patient", "patient_id") if c in df for v in df[c]]
    info = run / (CV_FILE if is_cv_run(run) else MODEL_INFO_FILE)
    classes = read_json(info).get("classes") or [] if info.is_file() else []
    return identifying_strings(files, patients, classes)


# --------------------------------------------------------------------------------------------
# The salted index and deid_check


def _canon(s: str) -> str:
    """A value as lower-case word tokens joined by one space: ``DOE^John`` -> ``doe john``."""
    return " ".join(m.group().casefold() for m in _TOKEN.finditer(s))


def _index_forms(s: str) -> set[str]:
    """The canonical forms a value is looked for under (a person name also family name last)."""
    forms = {_canon(s)}
    parts = [p for p in s.split("^") if p.strip()]
    if len(parts) >= 2:
        forms.add(_canon(" ".join([parts[1], parts[0], *parts[2:]])))
    out = set()
    for f in forms:
        compact = f.replace(" ", "")
        if len(compact) >= 4 and not (compact.isdigit() and len(compact) < 6):
            out.add(f)
    return out


def _digest(salt: bytes, text: str) -> str:
    return hmac.digest(salt, text.encode("utf-8"), "sha256")[:_INDEX_HASH_BYTES].hex()


def build_deid_index(run_dir: str | Path, strings: Iterable[str] | None = None) -> Path:
    """Write (or extend) ``RUN/deid_index.json``: salted hashes of the run's identifying strings.

    Each string is kept as the HMAC (keyed by the run's salt, :func:`run_salt`) of its
    canonical forms (:func:`_index_forms`), never raw, so :func:`deid_check` can look for the
    run's PHI in any file later, even when the films have moved. Entries already in the index
    are kept (a film that has moved since still counts).

    Args:
        run_dir: the run folder.
        strings: the raw strings; default :func:`run_identifiers` of the run.

    Returns:
        The index file.
    """
    run = Path(run_dir)
    salt = run_salt(run)
    path = run / DEID_INDEX_FILE
    old = read_json(path) if path.is_file() else {}
    entries, starts = set(old.get("entries", [])), set(old.get("starts", []))
    longest = int(old.get("max_tokens", 1))
    for s in guard_strings(run_identifiers(run) if strings is None else strings):
        for form in _index_forms(s):
            tokens = form.split(" ")[:_MAX_TOKENS]
            entries.add(_digest(salt, " ".join(tokens)))
            if len(tokens) > 1:
                starts.add(_digest(salt, tokens[0]))
            longest = max(longest, len(tokens))
    write_json(path, {"format": 1, "hash": f"hmac-sha256/{_INDEX_HASH_BYTES * 8}", "max_tokens": longest,
                      "entries": sorted(entries), "starts": sorted(starts)})
    return path


class _Index:
    def __init__(self, run: Path) -> None:
        path = run / DEID_INDEX_FILE
        if not path.is_file():
            build_deid_index(run)
        raw = read_json(path)
        self.salt = run_salt(run, create=False)
        self.entries, self.starts = set(raw["entries"]), set(raw["starts"])
        self.longest = int(raw["max_tokens"])

    def offsets(self, text: str) -> list[int]:
        """Character offsets in ``text`` where a run value starts."""
        toks = [(m.start(), m.group().casefold()) for m in _TOKEN.finditer(text)]
        out = []
        for i, (pos, tok) in enumerate(toks):
            h = _digest(self.salt, tok)
            if h in self.entries:
                out.append(pos)
            elif h in self.starts:  # only a known first word opens the longer n-grams
                for n in range(2, min(self.longest, len(toks) - i) + 1):
                    if _digest(self.salt, " ".join(t for _, t in toks[i:i + n])) in self.entries:
                        out.append(pos)
                        break
        return out


def _texts(data: bytes) -> list[str]:
    """The readable text of ``data``: all of it for UTF-8 text (HTML entities decoded, base64
    payloads left out: they are searched decoded), else its printable runs."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return [m.group().decode("ascii") for m in _TEXT_RUN.finditer(data)]
    return [html.unescape(_DATA_URI.sub(b"data:", data).decode("utf-8"))] if "base64," in text \
        else [html.unescape(text)]


def _check(data: bytes, label: str, index: _Index, depth: int, hits: list[tuple[str, str]]) -> None:
    for text in _texts(data):
        hits += [(label, f"text at character {pos}") for pos in index.offsets(text)]
    if depth >= _MAX_DEPTH:
        return
    for name, inner in _inner(data):
        if index.offsets(name):
            hits.append((f"{label}!{name}", "member name"))
        _check(inner, f"{label}!{name}", index, depth + 1, hits)


def deid_check(paths: Iterable[str | Path], run_dir: str | Path,
               include_local: bool = False) -> list[tuple[str, str]]:
    """Look for a run's patients (its PHI, film names, patient ids) in files meant to be shared.

    Every file under each path is read as :func:`find_phi` reads it (zip members, gzip, PNG
    text chunks, PDF streams, base64 ``data:`` URIs); its text is split into word tokens whose
    runs are hashed with the run's salt and compared with ``RUN/deid_index.json`` (built from
    the run on first use, see :func:`build_deid_index`). File and folder names are checked the
    same way. Nothing raw is kept or printed: a hit names the place, not the value.

    Args:
        paths: files or folders to check (a report, an export, a run folder).
        run_dir: the run whose patients to look for.
        include_local: also check the run tables that list the user's own films
            (:data:`LOCAL_FILES`), which are meant to stay local and so name them.

    Returns:
        Sorted (file, where) pairs, e.g. ``('out/DOE_JOHN.png', 'file name')``,
        ``('report.html', 'text at character 5120')``; [] when nothing was found.

    Raises:
        FileNotFoundError: a path or the run folder does not exist.

    Example:
        >>> deid_check(["runs/demo/cv-1a2b/report.html"], "runs/demo/cv-1a2b")
        []
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: not a run folder; pass the folder printed by medtl cv or medtl train")
    index = _Index(run)
    hits: list[tuple[str, str]] = []
    for root in map(Path, paths):
        if not root.exists():
            raise FileNotFoundError(f"{root}: not found; pass the files or folders to check")
        for path in [root] if root.is_file() else _walk(root):
            if not include_local and path.name in LOCAL_FILES:
                continue
            if index.offsets(path.name):
                hits.append((str(path), "folder name" if path.is_dir() else "file name"))
            if path.is_file() and not path.is_symlink():
                _check(path.read_bytes(), str(path), index, 0, hits)
    return sorted(set(hits))
