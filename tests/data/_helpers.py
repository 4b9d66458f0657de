"""Helpers that build small PNG datasets and configs for the medtl.data tests."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medtl.config import Config, config_from_dict


def write_png(path: Path, img: np.ndarray) -> None:
    """Save a float image in [0, 1] as 8-bit grey PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)).save(path)


def make_png_dataset(
    root: Path,
    n_patients: int = 20,
    films: int = 2,
    pos_every: int = 4,
    size: tuple[int, int] = (40, 32),
    seed: int = 0,
) -> Path:
    """``root/images/*.png`` + ``root/labels.csv`` (file, label, patient_id, site); returns the CSV."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = int(p % pos_every == 0)
        for f in range(films):
            img = rng.random(size).astype(np.float32) * 0.5 + 0.25 * label
            name = f"images/P{p:03d}_{f}.png"
            write_png(root / name, img)
            rows.append({"file": name, "label": label, "patient_id": f"P{p:03d}", "site": "A" if p % 2 else "B"})
    out = root / "labels.csv"
    with out.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out


def make_cfg(manifest: Path | str, cache_dir: Path | str | None = None, **sections: dict[str, Any]) -> Config:
    """A validated Config for ``manifest``; ``data={...}`` etc. override sections."""
    raw: dict[str, Any] = {"data": {"manifest": str(manifest), "patient_column": "patient_id"}}
    if cache_dir is not None:
        raw["data"]["cache_dir"] = str(cache_dir)
    for key, value in sections.items():
        if isinstance(value, dict):
            raw.setdefault(key, {}).update(value)
        else:
            raw[key] = value
    return config_from_dict(raw)
