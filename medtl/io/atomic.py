"""Crash-safe file writes: every file medtl writes goes to a temporary name beside it and is
renamed into place, so a killed process leaves either the old file or the new one, never half
of one. The run folder (:mod:`medtl.run`), the trainer's checkpoints and the decoded-image
cache all write through here.

Nothing here imports TensorFlow or the rest of medtl; it sits at the bottom of the package.

Example:
    >>> write_json("runs/x/metrics.json", {"roc_auc": np.float32(0.9), "ece": float("nan")})
    >>> read_json("runs/x/metrics.json")
    {'roc_auc': 0.8999999761581421, 'ece': None}
"""

from __future__ import annotations

import json
import math
import os
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd

__all__ = ["tmp_path", "write_atomic", "write_bytes", "write_json", "read_json", "write_csv",
           "create_once", "jsonable"]


def tmp_path(path: str | Path) -> Path:
    """A hidden temporary name beside ``path``, unique per process and call, same suffix.

    The suffix is kept because some writers (Keras's ``Model.save``) choose the format by it.
    """
    path = Path(path)
    return path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")


def write_atomic(path: str | Path, write: Callable[[str], Any]) -> Path:
    """Call ``write(tmp)`` to write a temporary file, then rename it to ``path``.

    Args:
        path: the file to create or replace.
        write: writes the whole file to the path it is given (e.g. ``model.save``).

    Returns:
        ``path``. The temporary file is removed if ``write`` fails.
    """
    path = Path(path)
    tmp = tmp_path(path)
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_bytes(path: str | Path, data: bytes | Iterable[bytes]) -> Path:
    """Write ``data`` (one bytes object or several parts, written in order) atomically."""
    def dump(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            for part in [data] if isinstance(data, bytes) else data:
                fh.write(part)

    return write_atomic(path, dump)


def jsonable(x: Any) -> Any:
    """``x`` with numpy types made plain, paths made text and NaN/inf made None (strict JSON
    has no NaN)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Path):
        return str(x)
    return x


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented strict JSON (see :func:`jsonable`), atomically."""
    text = json.dumps(jsonable(obj), indent=2) + "\n"
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def read_json(path: str | Path) -> dict:
    """Read a JSON file, with an error naming it when it is missing or broken.

    Raises:
        FileNotFoundError: no such file (the message asks whether the run is finished).
        ValueError: the file is not valid JSON.
    """
    p = Path(path)
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{p}: not found; is this a finished medtl run folder?") from None
    except ValueError as exc:
        raise ValueError(f"{p}: not valid JSON ({exc}); the file is damaged, delete it and re-run") from None


def write_csv(path: str | Path, df: pd.DataFrame) -> Path:
    """Write ``df`` as CSV without its index, atomically."""
    return write_atomic(path, lambda tmp: df.to_csv(tmp, index=False))


def create_once(path: str | Path, text: str) -> bool:
    """Create ``path`` with ``text`` unless it exists; safe when several processes race (folds
    of one cross-validation run started as separate cluster jobs).

    Returns:
        True if this call created the file, False if it already existed (keep that one).
    """
    path = Path(path)
    if path.exists():
        return False
    tmp = tmp_path(path)
    tmp.write_text(text)
    try:
        os.link(tmp, path)  # atomic, and fails if another process created the file first
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
