"""The on-disk image cache: keys, stale settings, atomic entries, parallel fill, errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from medtl.data import cache as cache_mod
from medtl.data.cache import ImageCache, read_entry, write_entry
from medtl.data.resize import letterbox
from medtl.io import read_image
from tests.data._helpers import make_png_dataset, write_png


def _paths(csv_path: Path) -> list[str]:
    return sorted(str(p) for p in (csv_path.parent / "images").glob("*.png"))


def test_entry_holds_letterboxed_image_and_original_size(tmp_path, png_csv):
    cache = ImageCache(tmp_path / "c", (24, 24))
    path = _paths(png_csv)[0]
    (res,) = cache.fill([path], workers=1)
    assert res.ok and Path(res.entry).is_file() and res.sha256 == cache_mod.file_sha256(path)
    img, geo = cache.read(res.entry)
    assert img.dtype == np.float16 and img.shape == (24, 24)
    assert (geo.orig_h, geo.orig_w) == (40, 32)
    expected, _ = letterbox(read_image(path), (24, 24))
    assert np.abs(img.astype(np.float32) - expected).max() < 1e-3  # float16 rounding only
    decoded, geo2 = cache.decode(path)
    assert np.array_equal(decoded, img.astype(np.float32)) and geo2 == geo


def test_key_depends_on_content_not_name(tmp_path, png_csv):
    cache = ImageCache(tmp_path / "c", (16, 16))
    a = _paths(png_csv)[0]
    b = str(tmp_path / "renamed.png")
    Path(b).write_bytes(Path(a).read_bytes())
    ra, rb = cache.fill([a, b], workers=1)
    assert ra.entry == rb.entry


def test_changed_settings_never_reuse_entries(tmp_path, png_csv):
    path = _paths(png_csv)[:1]
    base = ImageCache(tmp_path / "c", (16, 16)).fill(path, workers=1)[0].entry
    for other in (
        ImageCache(tmp_path / "c", (16, 20)),
        ImageCache(tmp_path / "c", (16, 16), keep_aspect=False),
        ImageCache(tmp_path / "c", (16, 16), window="percentile"),
    ):
        entry = other.fill(path, workers=1)[0].entry
        assert entry != base and Path(entry).is_file()
    again = ImageCache(tmp_path / "c", (16, 16)).fill(path, workers=1)[0].entry
    assert again == base


def test_changed_file_gets_a_new_entry(tmp_path):
    p = tmp_path / "x.png"
    write_png(p, np.zeros((10, 10)))
    cache = ImageCache(tmp_path / "c", (8, 8))
    first = cache.fill([str(p)], workers=1)[0]
    write_png(p, np.ones((10, 10)))
    os.utime(p, ns=(1, 1))  # even with an old mtime the size/ctime check sees the change
    second = cache.fill([str(p)], workers=1)[0]
    assert first.sha256 != second.sha256
    assert cache.read(second.entry)[0].astype(np.float32).max() == pytest.approx(1.0)


def test_warm_cache_found_from_the_index_without_rehashing(tmp_path, png_csv, monkeypatch):
    paths = _paths(png_csv)
    cache = ImageCache(tmp_path / "c", (16, 16))
    first = cache.fill(paths, workers=1)
    cache_mod.clear_memo()
    monkeypatch.setattr(cache_mod, "file_sha256", lambda p: pytest.fail("re-hashed a known file"))
    second = ImageCache(tmp_path / "c", (16, 16)).fill(paths, workers=1)
    assert [r.entry for r in first] == [r.entry for r in second]


def test_cleared_cache_is_rebuilt_in_the_same_process(tmp_path, png_csv):
    import shutil

    paths = _paths(png_csv)[:3]
    cache = ImageCache(tmp_path / "c", (16, 16))
    first = cache.fill(paths, workers=1)
    shutil.rmtree(tmp_path / "c")
    second = cache.fill(paths, workers=1)
    assert all(r.ok and Path(r.entry).is_file() for r in second)
    assert [r.entry for r in first] == [r.entry for r in second]


def test_atomic_write_leaves_no_partial_entry(tmp_path, monkeypatch):
    target = tmp_path / "e" / "ab.f16"

    def boom(self, data):
        raise KeyboardInterrupt  # the run is interrupted mid-write

    real_open = open

    class Exploding:
        def __init__(self, *a, **k):
            self.fh = real_open(*a, **k)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        write = boom

    monkeypatch.setattr("builtins.open", Exploding)
    with pytest.raises(KeyboardInterrupt):
        write_entry(target, np.zeros((4, 4), np.float32), (8, 8))
    monkeypatch.undo()
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # the temporary file is gone too


def test_corrupt_entry_is_detected(tmp_path):
    p = tmp_path / "x.f16"
    write_entry(p, np.full((4, 6), 0.5, np.float32), (40, 60))
    img, (h, w) = read_entry(p)
    assert img.shape == (4, 6) and (h, w) == (40, 60) and float(img[0, 0]) == 0.5
    p.write_bytes(p.read_bytes()[:-2])
    with pytest.raises(ValueError, match="not a valid medtl cache entry; delete it"):
        read_entry(p)


def test_errors_are_reported_per_file(tmp_path, png_csv):
    good = _paths(png_csv)[:2]
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not an image")
    missing = str(tmp_path / "gone.png")
    res = ImageCache(tmp_path / "c", (16, 16)).fill([good[0], str(junk), missing, good[1]], workers=1)
    assert [r.ok for r in res] == [True, False, False, True]
    assert res[1].error and "junk.png" not in res[1].error.split(":")[0]  # reason, not the path again
    assert res[2].error and ("No such file" in res[2].error or "not found" in res[2].error)


def test_parallel_fill_matches_serial(tmp_path):
    csv_path = make_png_dataset(tmp_path / "ds", n_patients=24, films=2, size=(20, 30))
    paths = _paths(csv_path)
    serial = ImageCache(tmp_path / "c1", (16, 16)).fill(paths, workers=1)
    parallel = ImageCache(tmp_path / "c2", (16, 16)).fill(paths, workers=2)
    assert all(r.ok for r in parallel)
    for s, p in zip(serial, parallel):
        assert s.path == p.path and s.sha256 == p.sha256
        assert np.array_equal(read_entry(s.entry)[0], read_entry(p.entry)[0])

