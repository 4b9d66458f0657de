"""A small synthetic chest X-ray DICOM dataset for demos and tests.

The films are drawn, not simulated: a dark air background, a brighter body with two dark lung
fields, a mediastinum, heart, spine, clavicles, rib-like bands and noise. Positive ("lesion")
films carry a bright round opacity (the shadow of a spherical nodule) wholly inside a lung field
at a place recorded in the labels CSV, so localisation (Grad-CAM) can be checked against ground
truth.

The headers vary the way real PACS exports do (MONOCHROME1/2, 12- and 16-bit, rescale, window
tags or none, JPEG 2000 lossless, RLE lossless and uncompressed) and carry fake PHI, listed in
``phi.json``, so de-identification can be tested by searching outputs for it.

Every random choice comes from generators seeded with ``(seed, patient, film)``, so a seed gives
the same bytes. The transfer syntax is drawn from its own stream, so ``compressed=True`` and
``compressed=False`` give the same pixel values (a lossless pair for decoder tests).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    PYDICOM_IMPLEMENTATION_UID,
    RLELossless,
    generate_uid,
)
from scipy.ndimage import distance_transform_edt

__all__ = ["make_sample_data", "CLASS_NAMES", "CSV_COLUMNS"]

CLASS_NAMES = ("normal", "lesion")
CSV_COLUMNS = (
    "file", "label", "class_name", "patient_id", "lesion_x", "lesion_y", "lesion_r",
    "photometric", "bits_stored", "transfer_syntax",
)

_CR_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1")
_DX_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1.1")  # Digital X-Ray, For Presentation

# pydicom cannot encode JPEG-LS without pyjpegls, so RLE Lossless (encoded natively) stands in
# for the second lossless codec.
_COMPRESSED_MIX = ((JPEG2000Lossless, 0.25), (RLELossless, 0.2), (ImplicitVRLittleEndian, 0.1))
_UNCOMPRESSED_MIX = ((ImplicitVRLittleEndian, 0.1),)

_GIVEN = ("ALICE", "BOB", "CAROL", "DAVID", "EVE", "FRANK", "GRACE", "HENRY", "IRIS", "JACK")
_INSTITUTIONS = (
    "Fakeham General Hospital", "Mockford Royal Infirmary", "Synthetica Medical Centre",
)
_PHYSICIANS = ("HOUSEFAKE^GREGORY", "QUINNPHI^MICHAELA", "KILDAREFAKE^JAMES")


@dataclass(frozen=True)
class _Patient:
    """Anatomy and identity shared by all films of one patient."""

    index: int
    patient_id: str
    label: int
    n_films: int
    size: tuple[int, int]  # (rows, columns)
    lung_dx: float  # lung centre offset from the midline, in image-width units
    lung_cy: float
    lung_ax: float
    lung_ay: float
    heart_ax: float
    heart_ay: float
    body_ax: float
    rib_step: float
    body_level: float
    modality: str


def make_sample_data(
    out_dir: str | Path,
    n_patients: int = 60,
    seed: int = 0,
    image_size: tuple[int, int] = (256, 256),
    prevalence: float = 0.2,
    compressed: bool = True,
) -> Path:
    """Write a synthetic chest X-ray DICOM dataset and return the path of its labels CSV.

    ``out_dir`` receives ``images/P0001_1.dcm ...``, ``labels.csv`` (columns in
    ``CSV_COLUMNS``; lesion_x/lesion_y are the lesion centre's column/row and lesion_r its radius,
    in pixels of the original image, empty for normal films), ``phi.json`` (the fake PHI planted
    in the headers) and ``README.txt``.

    Args:
        out_dir: Folder to write into (created if missing; existing files are overwritten).
        n_patients: Number of patients; each has 2 or 3 films.
        seed: Seed for everything; the same seed gives byte-identical files.
        image_size: Base (rows, columns); patients vary around it, e.g. 256x256, 240x288, 288x256.
        prevalence: Fraction of patients with a lesion (all their films are positive).
        compressed: Store some files JPEG 2000 lossless and RLE lossless; False keeps every file
            uncompressed (with the same pixel values).

    Returns:
        Path of ``labels.csv``.

    Example:
        >>> csv_path = make_sample_data("sample_data", n_patients=60, seed=0)
        >>> csv_path.name
        'labels.csv'
    """
    if n_patients < 1:
        raise ValueError(f"n_patients={n_patients}: need at least 1 patient")
    if not 0.0 <= prevalence <= 1.0:
        raise ValueError(f"prevalence={prevalence}: must be between 0 and 1")
    rows0, cols0 = (int(v) for v in image_size)
    if min(rows0, cols0) < 64:
        raise ValueError(f"image_size={image_size}: use at least 64 pixels per side")

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)

    patients = _make_patients(n_patients, seed, (rows0, cols0), prevalence)
    films = [(p, k) for p in patients for k in range(1, p.n_films + 1)]
    headers = _header_variants(len(films), seed, compressed)

    rows: list[dict[str, object]] = []
    phi: dict[str, dict[str, object]] = {}
    for (patient, film), variant in zip(films, headers):
        rng = np.random.default_rng([seed, patient.index, film])
        image, lesion = _render_film(patient, rng)
        ds, accession = _build_dataset(image, patient, film, variant, seed)
        rel = f"images/{patient.patient_id}_{film}.dcm"
        ds.save_as(out / rel, enforce_file_format=True)

        entry = phi.setdefault(patient.patient_id, _patient_phi(patient, seed))
        entry.setdefault("AccessionNumber", []).append(accession)
        rows.append({
            "file": rel,
            "label": patient.label,
            "class_name": CLASS_NAMES[patient.label],
            "patient_id": patient.patient_id,
            "lesion_x": "" if lesion is None else lesion[0],
            "lesion_y": "" if lesion is None else lesion[1],
            "lesion_r": "" if lesion is None else f"{lesion[2]:.1f}",
            "photometric": variant["photometric"],
            "bits_stored": variant["bits_stored"],
            "transfer_syntax": str(variant["transfer_syntax"]),
        })

    csv_path = out / "labels.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    _write_phi(out / "phi.json", phi)
    _write_readme(out / "README.txt", seed, patients, len(rows), compressed)
    return csv_path


def _make_patients(
    n: int, seed: int, base: tuple[int, int], prevalence: float
) -> list[_Patient]:
    # An exact positive count (not a coin per patient) keeps the 1:4 ratio even for small n.
    n_pos = int(round(prevalence * n))
    positives = set(np.random.default_rng([seed, 7]).permutation(n)[:n_pos].tolist())
    r0, c0 = base
    sizes = ((r0, c0), (r0 - r0 // 16, c0 + c0 // 8), (r0 + r0 // 8, c0))
    patients = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        patients.append(_Patient(
            index=i,
            patient_id=f"P{i + 1:04d}",
            label=int(i in positives),
            n_films=int(rng.integers(2, 4)),
            size=sizes[int(rng.integers(len(sizes)))],
            lung_dx=float(rng.uniform(0.18, 0.21)),
            lung_cy=float(rng.uniform(-0.06, -0.02)),
            lung_ax=float(rng.uniform(0.135, 0.155)),
            lung_ay=float(rng.uniform(0.28, 0.32)),
            heart_ax=float(rng.uniform(0.14, 0.17)),
            heart_ay=float(rng.uniform(0.12, 0.14)),
            body_ax=float(rng.uniform(0.44, 0.48)),
            rib_step=float(rng.uniform(0.060, 0.070)),
            body_level=float(rng.uniform(0.48, 0.56)),
            modality="CR" if rng.random() < 0.5 else "DX",
        ))
    return patients


def _header_variants(n_files: int, seed: int, compressed: bool) -> list[dict[str, object]]:
    """Per-file header choices, in fixed proportions shuffled so small sets still see each."""

    def spread(options: tuple[tuple[object, float], ...], default: object, stream: int) -> list:
        values: list[object] = []
        for value, share in options:
            values += [value] * max(1, int(round(share * n_files)))
        values = (values + [default] * n_files)[:n_files]
        order = np.random.default_rng([seed, 1000 + stream]).permutation(n_files)
        return [values[j] for j in order]

    photometric = spread((("MONOCHROME1", 0.3),), "MONOCHROME2", 1)
    bits = spread(((16, 0.4),), 12, 2)
    rescale = spread((((0.5, 0.0), 0.15), ((1.0, -1024.0), 0.15)), None, 3)
    window = spread(((False, 0.2),), True, 4)
    syntax = spread(_COMPRESSED_MIX if compressed else _UNCOMPRESSED_MIX, ExplicitVRLittleEndian, 5)
    return [
        {"photometric": photometric[j], "bits_stored": bits[j], "rescale": rescale[j],
         "window": window[j], "transfer_syntax": syntax[j]}
        for j in range(n_files)
    ]


def _soft_ellipse(a: np.ndarray, b: np.ndarray, cx: float, cy: float, ax: float, ay: float,
                  edge: float = 0.04) -> np.ndarray:
    q = np.sqrt(((a - cx) / ax) ** 2 + ((b - cy) / ay) ** 2)
    return 1.0 / (1.0 + np.exp(np.clip((q - 1.0) / edge, -50, 50)))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


def _render_film(
    p: _Patient, rng: np.random.Generator
) -> tuple[np.ndarray, tuple[int, int, float] | None]:
    """Draw one film as display brightness in [0, 1] (air dark) and place its lesion, if any."""
    h, w = p.size
    # Film-level jitter: the same anatomy, positioned and exposed a little differently each time.
    tx, ty = rng.uniform(-0.03, 0.03, size=2)
    scale = rng.uniform(0.96, 1.04)
    theta = math.radians(rng.uniform(-2.0, 2.0))
    gain, offset = rng.uniform(0.92, 1.08), rng.uniform(-0.03, 0.03)

    v, u = np.mgrid[0:h, 0:w].astype(np.float32)
    u = (u + 0.5) / w - 0.5 - tx
    v = (v + 0.5) / h - 0.5 - ty
    cos, sin = math.cos(theta), math.sin(theta)
    a = (cos * u + sin * v) / scale  # anatomy coordinates: a across, b down, origin mid-chest
    b = (-sin * u + cos * v) / scale

    q_body = np.sqrt((a / p.body_ax) ** 2 + ((b - 0.15) / 0.7) ** 2)
    body = 1.0 / (1.0 + np.exp(np.clip((q_body - 1.0) / 0.03, -50, 50)))
    body = np.maximum(body, _soft_ellipse(a, b, 0.0, -0.5, p.body_ax + 0.03, 0.2, 0.12))
    thickness = np.sqrt(np.clip(1.0 - q_body**2, 0.0, 1.0))  # a rounded trunk fades to its edges
    heart = _soft_ellipse(a, b, 0.05, p.lung_cy + 0.16, p.heart_ax, p.heart_ay, 0.08)
    lungs = np.zeros_like(a)
    for side, shrink in ((-1.0, 1.0), (1.0, 0.95)):
        # Narrow apex, wide base: scale the half-width with height.
        ax = p.lung_ax * shrink * (1.0 + 0.35 * np.clip((b - p.lung_cy) / p.lung_ay, -1, 1))
        q = np.sqrt(((a - side * p.lung_dx) / ax) ** 2 + ((b - p.lung_cy) / p.lung_ay) ** 2)
        lungs += 1.0 / (1.0 + np.exp(np.clip((q - 1.0) / 0.04, -50, 50)))
    lungs = np.clip(lungs, 0, 1) * (1.0 - heart)
    mediastinum = (0.06 * np.exp(-(a / 0.07) ** 4) + 0.07 * np.exp(-(a / 0.03) ** 4)) * body

    side = np.abs(a)
    ribs = np.zeros_like(a)
    for k in range(9):
        centre = p.lung_cy - 0.33 + k * p.rib_step + 1.8 * (side - 0.06) ** 2
        ribs += np.exp(-((b - centre) / 0.011) ** 2)
    ribs *= (side > 0.04) * (side < p.lung_dx + p.lung_ax * 1.3)
    clavicle = np.exp(-((b - (-0.37 + 0.6 * (side - 0.1) ** 2)) / 0.014) ** 2) * (side < 0.3)

    img = 0.04 + body * (p.body_level - 0.16 + 0.12 * thickness + 0.08 * (b + 0.5))
    img += mediastinum + 0.04 * heart * body
    img -= lungs * (p.body_level - 0.18)
    img += (0.05 * ribs + 0.08 * clavicle) * body
    img += 0.025 * _smooth_noise(rng, (h, w), 12) * lungs  # vessel-like mottling

    lesion = None
    if p.label:
        lesion = _place_lesion(lungs > 0.5, w, rng)
        cx, cy, r = lesion
        yy, xx = np.mgrid[0:h, 0:w]
        d = np.hypot(xx - cx, yy - cy)
        contrast = rng.uniform(0.35, 0.45)
        # The shadow of a uniform spherical nodule: an X-ray sums density along each ray, so
        # brightness follows the chord length, highest at the centre. A flat disc (a cylinder
        # seen end-on) has nothing at its centre to detect, and models trained on it learned
        # one rim, so their heat maps peaked outside the lesion.
        img += contrast * np.sqrt(np.clip(1.0 - (d / r) ** 2, 0.0, 1.0))

    img = gain * img + offset + rng.normal(0.0, 0.012, size=(h, w))
    return np.clip(img, 0.0, 1.0).astype(np.float32), lesion


def _place_lesion(
    lung_mask: np.ndarray, width: int, rng: np.random.Generator
) -> tuple[int, int, float]:
    """Pick a centre whose whole disc (plus a margin) lies inside a lung field."""
    room = distance_transform_edt(lung_mask)
    r = float(rng.uniform(0.06, 0.09) * width)
    for _ in range(20):
        ys, xs = np.nonzero(room >= r + 3)
        if len(ys):
            j = int(rng.integers(len(ys)))
            return int(xs[j]), int(ys[j]), r
        r *= 0.9
    raise RuntimeError("no room for a lesion inside the lung fields; use a larger image_size")


def _to_stored(image: np.ndarray, variant: dict[str, object], rng: np.random.Generator
               ) -> tuple[np.ndarray, dict[str, float]]:
    """Map display brightness to stored values, and choose window tags that show the anatomy."""
    bits = int(variant["bits_stored"])
    top = (1 << bits) - 1
    lo = rng.uniform(0.02, 0.06) * top  # detector pedestal
    span = rng.uniform(0.80, 0.90) * top
    stored = np.clip(np.rint(lo + span * image), 0, top)
    mono1 = variant["photometric"] == "MONOCHROME1"
    if mono1:
        stored = top - stored  # MONOCHROME1 stores air bright; a correct viewer inverts it back
    slope, intercept = variant["rescale"] or (1.0, 0.0)

    def out(x: float) -> float:
        s = lo + span * x
        return slope * ((top - s) if mono1 else s) + intercept

    a, b = out(0.0), out(0.9)  # window spans air to the brightest anatomy
    window = {"center": round((a + b) / 2, 1), "width": round(abs(b - a), 1)}
    return stored.astype(np.uint16), window


def _uid(seed: int, *parts: object) -> UID:
    return generate_uid(entropy_srcs=["medtl-synthetic", str(seed), *map(str, parts)])


def _patient_phi(p: _Patient, seed: int) -> dict[str, object]:
    rng = np.random.default_rng([seed, p.index, 99])
    year, month, day = rng.integers(1935, 2000), rng.integers(1, 13), rng.integers(1, 29)
    return {
        "PatientName": f"TESTPHI^{_GIVEN[p.index % len(_GIVEN)]}{p.index + 1:04d}",
        "PatientBirthDate": f"{year:04d}{month:02d}{day:02d}",
        "InstitutionName": _INSTITUTIONS[int(rng.integers(len(_INSTITUTIONS)))],
        "ReferringPhysicianName": _PHYSICIANS[int(rng.integers(len(_PHYSICIANS)))],
        "PatientSex": "F" if rng.random() < 0.5 else "M",
    }


def _build_dataset(
    image: np.ndarray, p: _Patient, film: int, variant: dict[str, object], seed: int
) -> tuple[Dataset, str]:
    rng = np.random.default_rng([seed, p.index, film, 1])
    stored, window = _to_stored(image, variant, rng)
    phi = _patient_phi(p, seed)
    sop_class = _CR_STORAGE if p.modality == "CR" else _DX_STORAGE
    sop_uid = _uid(seed, p.patient_id, film, "sop")
    accession = f"ACC{int(rng.integers(10**6, 10**7))}"
    study_date = f"{2015 + film * 2 + p.index % 3:04d}{1 + p.index % 12:02d}{1 + film * 7:02d}"

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = f"{8 + film:02d}{(7 * p.index) % 60:02d}00"
    ds.AccessionNumber = accession
    ds.Modality = p.modality
    ds.Manufacturer = "medtl synthetic"
    ds.InstitutionName = phi["InstitutionName"]
    ds.ReferringPhysicianName = phi["ReferringPhysicianName"]
    ds.StudyDescription = "CHEST 1 VIEW"
    ds.SeriesDescription = "CHEST"
    ds.PatientName = phi["PatientName"]
    ds.PatientID = p.patient_id
    ds.PatientBirthDate = phi["PatientBirthDate"]
    ds.PatientSex = phi["PatientSex"]
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA" if (p.index + film) % 3 else "AP"
    ds.PatientOrientation = ["L", "F"]  # 'L' on the right of the image, as in a PA film
    ds.StudyInstanceUID = _uid(seed, p.patient_id, film, "study")
    ds.SeriesInstanceUID = _uid(seed, p.patient_id, film, "series")
    ds.StudyID = str(film)
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    if p.modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImagerPixelSpacing = [0.4, 0.4]
    else:
        ds.PixelSpacing = [0.4, 0.4]
    if variant["rescale"] is not None:
        ds.RescaleIntercept, ds.RescaleSlope = variant["rescale"][1], variant["rescale"][0]
        ds.RescaleType = "US"
    if variant["window"]:
        ds.WindowCenter, ds.WindowWidth = window["center"], window["width"]
        ds.VOILUTFunction = "LINEAR"

    ds.set_pixel_data(stored, str(variant["photometric"]), int(variant["bits_stored"]),
                      generate_instance_uid=False)
    syntax = variant["transfer_syntax"]
    if syntax in (JPEG2000Lossless, RLELossless):
        # Without generate_instance_uid=False pydicom draws a random UID, breaking determinism.
        ds.compress(syntax, stored, generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = syntax
    return ds, accession


def _write_phi(path: Path, phi: dict[str, dict[str, object]]) -> None:
    strings: set[str] = set()
    for entry in phi.values():
        for value in entry.values():
            for item in value if isinstance(value, list) else [value]:
                if len(str(item)) > 1:  # a one-letter sex code is not searchable
                    strings.add(str(item))
    payload = {
        "note": "Fake PHI planted in the DICOM headers of this synthetic set; none is real.",
        "patients": phi,
        "strings": sorted(strings),
    }
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def _write_readme(path: Path, seed: int, patients: list[_Patient], n_files: int,
                  compressed: bool) -> None:
    n_pos = sum(p.label for p in patients)
    path.write_text(
        "SYNTHETIC DATA - not from any patient.\n\n"
        f"Made by medtl.data.synthetic.make_sample_data (seed={seed}, "
        f"compressed={compressed}): {len(patients)} patients ({n_pos} lesion, "
        f"{len(patients) - n_pos} normal), {n_files} chest-like DICOM films in images/.\n"
        "labels.csv: file, label (1 = lesion), class_name, patient_id, lesion_x/lesion_y "
        "(centre column/row) and lesion_r (radius) in pixels of the original image, "
        "photometric, bits_stored, transfer_syntax.\n"
        "phi.json lists the FAKE names, dates, institutions and accession numbers planted in "
        "the headers so de-identification can be tested.\n"
        "Regenerate with: python scripts/make_sample_data.py --out sample_data\n"
    )
