"""On-disk cache of decoded, windowed, resized images (no TensorFlow here).

An entry holds one image exactly as the model sees it (float16, target size, letterboxed) and
the original image size, so the resize can be undone. Its key is the SHA-256 of the file's
bytes, and entries live in a folder named after every setting that changes the pixels (window,
image size, keep_aspect, frame, cache format and medtl version): change a setting and the old
entries are simply never looked at again. Each entry is written to a temporary file and renamed
into place, so an interrupted run never leaves a half-written entry behind.

Filling runs in the crash-tolerant worker pool of :mod:`medtl.data.pool`; workers import only
``medtl.io`` and this module, so a file that crashes its decoder is reported as that file's
error instead of ending the run.

Example:
    >>> cache = ImageCache(".medtl-cache", image_size=(224, 224))
    >>> results = cache.fill(["a.dcm", "b.png"])
    >>> img, geo = cache.read(results[0].entry)
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medtl import __version__
from medtl.data.pool import run_chunked
from medtl.io import read_image
from medtl.io.atomic import write_bytes
from medtl.io.dicom import DEFAULT_MAX_PIXELS, open_file
from medtl.data.resize import Geometry, letterbox, plan

CACHE_FORMAT = 2  # 2: one flat folder per settings (1 had a sub-folder per first hash byte)
_MAGIC = b"MTLC"
_HEADER = struct.Struct("<4sIIIII8x")  # magic, format, h, w, orig_h, orig_w, padding -> 32 bytes
SUFFIX = ".f16"


# --------------------------------------------------------------------------------------------
# Content hashes


_MEMO: dict[str, tuple[tuple[int, ...], str]] = {}
_MEMO_LOCK = threading.Lock()


def _stat_key(st: os.stat_result) -> tuple[int, ...]:
    # ctime changes on any write and cannot be set by tools that copy timestamps (cp -p, rsync -t).
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file's bytes, remembered per process while the file is unchanged."""
    p = os.fspath(path)
    key = _stat_key(os.stat(p))
    hit = _MEMO.get(p)
    if hit and hit[0] == key:
        return hit[1]
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    with _MEMO_LOCK:
        _MEMO[p] = (key, digest)
    return digest


def file_sha256_many(paths: Sequence[str], threads: int | None = None) -> list[str]:
    """Hashes of many files, read in threads (hashlib releases the GIL while hashing)."""
    if len(paths) < 8:
        return [file_sha256(p) for p in paths]
    with cf.ThreadPoolExecutor(threads or min(8, (os.cpu_count() or 1) * 2)) as ex:
        return list(ex.map(file_sha256, paths, chunksize=16))


def clear_memo() -> None:
    """Forget remembered hashes (benchmarks use it to act like a new process)."""
    with _MEMO_LOCK:
        _MEMO.clear()


class _HashIndex:
    """Path -> hash for files whose size and times are unchanged, kept in the cache folder.

    It lets a warm cache be found without reading every file again (like git's index).
    """

    def __init__(self, path: Path):
        self.path = path
        self.dirty = False
        try:
            self.data: dict[str, list] = json.loads(path.read_text())
        except (OSError, ValueError):
            self.data = {}

    def get(self, p: str) -> str | None:
        try:
            key = list(_stat_key(os.stat(p)))
        except OSError:
            return None
        rec = self.data.get(p)
        if rec and rec[:-1] == key:
            with _MEMO_LOCK:
                _MEMO[p] = (tuple(key), rec[-1])
            return rec[-1]
        hit = _MEMO.get(p)
        if hit and list(hit[0]) == key:
            self.put(p, hit[0], hit[1])
            return hit[1]
        return None

    def put(self, p: str, key: Sequence[int], sha: str) -> None:
        self.data[p] = [*key, sha]
        self.dirty = True
        with _MEMO_LOCK:
            _MEMO[p] = (tuple(key), sha)

    def save(self) -> None:
        if not self.dirty:
            return
        # Another process may have added entries since we read the file; keep both.
        try:
            merged = json.loads(self.path.read_text())
        except (OSError, ValueError):
            merged = {}
        merged.update(self.data)
        _atomic_write(self.path, json.dumps(merged, separators=(",", ":")).encode())
        self.dirty = False


# --------------------------------------------------------------------------------------------
# Entries


_MADE_DIRS: set[Path] = set()


def _atomic_write(path: Path, data: bytes | Sequence[bytes]) -> None:
    """:func:`medtl.io.atomic.write_bytes`, creating the folder once per process."""
    if path.parent not in _MADE_DIRS:  # one mkdir per folder, not per entry
        path.parent.mkdir(parents=True, exist_ok=True)
        _MADE_DIRS.add(path.parent)
    try:
        write_bytes(path, data)
    except FileNotFoundError:  # the folder was removed since (a cleared cache)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(path, data)


def write_entry(path: Path, img: np.ndarray, orig_hw: tuple[int, int]) -> None:
    """Store a 2-D image as float16 with its original size, atomically."""
    arr = np.ascontiguousarray(img, dtype=np.float16)
    header = _HEADER.pack(_MAGIC, CACHE_FORMAT, arr.shape[0], arr.shape[1], int(orig_hw[0]), int(orig_hw[1]))
    _atomic_write(path, [header, arr.tobytes()])


def read_entry(path: str | os.PathLike) -> tuple[np.ndarray, tuple[int, int]]:
    """Read an entry written by :func:`write_entry`: float16 (H, W) and the original (h, w)."""
    with open(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < _HEADER.size:
        raise ValueError(f"{path}: cache entry too short; delete it (it is rebuilt on the next run)")
    magic, fmt, h, w, oh, ow = _HEADER.unpack_from(raw)
    if magic != _MAGIC or fmt != CACHE_FORMAT or len(raw) != _HEADER.size + 2 * h * w:
        raise ValueError(f"{path}: not a valid medtl cache entry; delete it (it is rebuilt on the next run)")
    return np.frombuffer(raw, np.float16, offset=_HEADER.size).reshape(h, w), (oh, ow)


@dataclass
class CacheResult:
    """Outcome for one file: the entry path, or the reason it could not be decoded."""

    path: str
    sha256: str | None = None
    entry: str | None = None
    error: str | None = None
    stat: tuple[int, ...] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class ImageCache:
    """Decoded model-ready images keyed by file content and preprocessing settings.

    Args:
        cache_dir: root folder (``data.cache_dir``).
        image_size: target (H, W).
        keep_aspect: letterbox (True) or stretch.
        window: ``auto``, ``minmax`` or ``percentile`` (see :func:`medtl.io.read_image`).
        frame: frame of multi-frame files, or None.
        max_pixels: larger images are refused (JPEG: decoded at reduced scale); None: no limit.

    Example:
        >>> cache = ImageCache(".medtl-cache", (224, 224))
        >>> [r.error for r in cache.fill(paths) if not r.ok]
        []
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        image_size: Sequence[int],
        keep_aspect: bool = True,
        window: str = "auto",
        frame: int | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ):
        self.root = Path(cache_dir)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.keep_aspect = bool(keep_aspect)
        self.window = window
        self.frame = frame
        self.max_pixels = max_pixels
        self.settings = {
            "format": CACHE_FORMAT,
            "medtl": __version__,  # a new reader may decode differently
            "window": window,
            "image_size": list(self.image_size),
            "keep_aspect": self.keep_aspect,
            "frame": frame,
            "max_pixels": max_pixels,  # a large JPEG's entry depends on it (reduced-scale decoding)
        }
        key = hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode()).hexdigest()[:16]
        self.dir = self.root / f"v{CACHE_FORMAT}-{key}"

    def entry_path(self, sha: str) -> Path:
        """Where the entry for content hash ``sha`` lives."""
        # Flat: sub-folders by hash prefix cost a mkdir for nearly every entry of a small set.
        return self.dir / f"{sha}{SUFFIX}"

    def read(self, entry: str | os.PathLike) -> tuple[np.ndarray, Geometry]:
        """The cached float16 (H, W) image and its :class:`Geometry`."""
        img, (oh, ow) = read_entry(entry)
        return img, plan(oh, ow, self.image_size, self.keep_aspect)

    def spec(self) -> dict[str, Any]:
        """Picklable arguments that rebuild this cache in a worker process."""
        return {
            "cache_dir": str(self.root), "image_size": self.image_size, "keep_aspect": self.keep_aspect,
            "window": self.window, "frame": self.frame, "max_pixels": self.max_pixels,
        }

    def fill(self, paths: Sequence[str], workers: int | None = None) -> list[CacheResult]:
        """Make sure every file has an entry, decoding the missing ones in parallel.

        Args:
            paths: image files.
            workers: processes to use; None or 0 means one per CPU core.

        Returns:
            One :class:`CacheResult` per path, in order; failed files carry ``error``.
        """
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OSError(f"data.cache_dir: cannot create {self.dir} ({exc.strerror}); set data.cache_dir to a writable folder") from None
        meta = self.dir / "settings.json"
        if not meta.exists():
            _atomic_write(meta, json.dumps(self.settings, indent=1).encode())
        index = _HashIndex(self.root / "hashes.json")
        results: list[CacheResult | None] = [None] * len(paths)
        todo: list[tuple[int, str, str | None]] = []
        for i, p in enumerate(paths):
            p = os.fspath(p)
            sha = index.get(p)
            if sha is not None and self.entry_path(sha).exists():
                results[i] = CacheResult(p, sha, str(self.entry_path(sha)))
            else:
                todo.append((i, p, sha))
        if todo:
            items = [(p, sha) for _, p, sha in todo]
            done = run_chunked(_fill_chunk, items, self.spec(), workers, on_crash=_crashed)
            for (i, p, _), res in zip(todo, done):
                results[i] = res
                if res.sha256 and res.stat:
                    index.put(p, res.stat, res.sha256)
        try:
            index.save()
        except OSError:
            pass  # the index only saves re-hashing; the cache stays correct without it
        return results  # type: ignore[return-value]

    def decode(self, path: str) -> tuple[np.ndarray, Geometry]:
        """Decode and resize one file exactly as an entry would be made, without caching.

        Returns float32 (H, W) values rounded through float16 like the cache, so a model sees
        the same numbers at prediction time as in training.
        """
        img = read_image(path, window=self.window, frame=self.frame, max_pixels=self.max_pixels)
        out, geo = letterbox(np.asarray(img, np.float32), self.image_size, self.keep_aspect)
        return out.astype(np.float16).astype(np.float32), geo


def describe_error(exc: BaseException, path: str) -> str:
    """One-line reason for a failed file, without repeating its path."""
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, OSError) and exc.strerror:
        return f"cannot read ({exc.strerror})"
    msg = " ".join(str(exc).split()) or type(exc).__name__
    if msg.startswith(f"{path}: "):
        msg = msg[len(path) + 2 :]
    if type(exc).__name__ == "ImageReadError":
        return msg
    return f"{type(exc).__name__}: {msg}"


def _crashed(item: tuple[str, str | None], reason: str) -> CacheResult:
    return CacheResult(item[0], item[1], error=reason)


def _fill_chunk(items: list[tuple[str, str | None]], spec: dict[str, Any]) -> list[CacheResult]:
    """Worker: hash, decode, resize and store a chunk of files."""
    cache = ImageCache(**spec)
    out = []
    for path, sha in items:
        res = CacheResult(path, sha)
        try:
            res.stat = _stat_key(os.stat(path))
            data = None
            if sha is None:
                # One read serves the hash and the decoder: the entry holds exactly the hashed bytes.
                with open_file(path) as fh:
                    data = fh.read()
                res.sha256 = hashlib.sha256(data).hexdigest()
                with _MEMO_LOCK:
                    _MEMO[path] = (res.stat, res.sha256)
            entry = cache.entry_path(res.sha256)
            if not entry.exists():
                img = np.asarray(read_image(path, window=cache.window, frame=cache.frame, data=data, max_pixels=cache.max_pixels), np.float32)
                resized, _ = letterbox(img, cache.image_size, cache.keep_aspect)
                write_entry(entry, resized, img.shape[:2])
            res.entry = str(entry)
        except MemoryError:
            raise
        except Exception as exc:  # every failure is reported per file, never dropped
            res.error = describe_error(exc, path)
            res.entry = None
        out.append(res)
    return out

