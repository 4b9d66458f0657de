"""ImagePipeline: prepare (parallel decode into the cache) and the seeded tf.data batches."""

from __future__ import annotations

import csv

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from medtl.data.manifest import DataError, load_manifest  # noqa: E402
from medtl.data.pipeline import ImagePipeline, epoch_order, sample_seed  # noqa: E402
from tests.data._helpers import make_cfg  # noqa: E402


def _cfg(csv_path, tmp_path, preset="chest_xray", **data):
    return make_cfg(
        csv_path, cache_dir=tmp_path / "cache", seed=11, augment={"preset": preset},
        data={"image_size": [24, 20], **data}, train={"batch_size": 8},
    )


def _collect(ds):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(xs), np.concatenate(ys)


def test_eval_dataset_contract_and_order(png_csv, tmp_path):
    cfg = _cfg(png_csv, tmp_path)
    pipe = ImagePipeline(cfg)
    m = pipe.prepare(load_manifest(cfg))
    batches = list(pipe.dataset(m, training=False))
    assert len(batches) == 5
    x0, y0 = batches[0]
    assert x0.dtype == tf.float32 and y0.dtype == tf.float32
    assert tuple(x0.shape) == (8, 24, 20, 1) and tuple(y0.shape) == (8, 1)
    x, y = _collect(pipe.dataset(m, training=False))
    ax, ay = pipe.arrays(m)
    assert np.array_equal(x, ax) and np.array_equal(y, m.targets()) and np.array_equal(ay, y)
    assert 0.0 <= x.min() and x.max() <= 1.0
    # letterbox: 40x32 source into 24x20 keeps the aspect exactly (scale 0.6), no bars
    assert x[:, :, :, 0].mean(axis=(1, 2)).min() > 0.1


def test_training_order_is_the_seeded_shuffle_and_labels_follow(png_csv, tmp_path):
    cfg = _cfg(png_csv, tmp_path, preset="none")
    pipe = ImagePipeline(cfg)
    m = pipe.prepare(load_manifest(cfg))
    ax, ay = pipe.arrays(m)
    x, y = _collect(pipe.dataset(m, training=True, epoch=3))
    order = epoch_order(len(m), 11, 3)
    assert sorted(order.tolist()) == list(range(len(m)))
    assert np.array_equal(x, ax[order]) and np.array_equal(y, ay[order])
    x4, _ = _collect(pipe.dataset(m, training=True, epoch=4))
    assert not np.array_equal(x, x4)


def test_augmentation_is_a_function_of_seed_epoch_and_row(png_csv, tmp_path):
    cfg = _cfg(png_csv, tmp_path)
    a = ImagePipeline(cfg)
    m = a.prepare(load_manifest(cfg))
    xa, _ = _collect(a.dataset(m, training=True, epoch=2))
    b = ImagePipeline(cfg)  # a fresh pipeline over the warm cache, different thread timing
    xb, _ = _collect(b.dataset(m, training=True, epoch=2, batch_size=3))
    assert np.array_equal(xa, xb)
    ax, _ = a.arrays(m)
    order = epoch_order(len(m), 11, 2)
    j = 5
    i = int(order[j])
    expected = a.augmenter(ax[i, :, :, 0], sample_seed(11, 2, i))
    assert np.array_equal(xa[j, :, :, 0], expected)
    assert not np.array_equal(xa, ax[order])  # augmentation did something
    xc, _ = _collect(a.dataset(m, training=True, epoch=5))
    assert not np.array_equal(np.sort(xa.ravel()), np.sort(xc.ravel()))


def test_epochs_chain_without_mixing(png_csv, tmp_path):
    cfg = _cfg(png_csv, tmp_path)
    pipe = ImagePipeline(cfg)
    m = pipe.prepare(load_manifest(cfg))
    chained = list(pipe.dataset(m, training=True, epoch=0, epochs=2))
    assert len(chained) == 10 and [int(b[0].shape[0]) for b in chained] == [8] * 10
    second = np.concatenate([b[0].numpy() for b in chained[5:]])
    x1, _ = _collect(pipe.dataset(m, training=True, epoch=1))
    assert np.array_equal(second, x1)


def test_disk_mode_equals_memory_mode(png_csv, tmp_path):
    cfg = _cfg(png_csv, tmp_path)
    ram = ImagePipeline(cfg)
    disk = ImagePipeline(cfg, memory_limit=0)
    m = ram.prepare(load_manifest(cfg))
    x1, y1 = _collect(ram.dataset(m, training=True, epoch=1))
    x2, y2 = _collect(disk.dataset(m, training=True, epoch=1))
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert disk._ram_bytes == 0 and ram._ram_bytes == 40 * 24 * 20 * 2


def _break_files(csv_path, n):
    images = sorted((csv_path.parent / "images").glob("*.png"))
    for p in images[:n]:
        p.write_bytes(b"garbage")
    return [str(p) for p in images[:n]]


def test_on_error_fail_lists_every_bad_file(png_csv, tmp_path):
    bad = _break_files(png_csv, 3)
    cfg = _cfg(png_csv, tmp_path)
    pipe = ImagePipeline(cfg)
    with pytest.raises(DataError) as err:
        pipe.prepare(load_manifest(cfg))
    msg = str(err.value)
    assert msg.startswith("3 of 40 file(s) cannot be read") and "data.on_error: skip" in msg
    assert all(b in msg for b in bad)


def test_on_error_skip_records_the_files(png_csv, tmp_path):
    bad = _break_files(png_csv, 2)
    cfg = _cfg(png_csv, tmp_path, on_error="skip")
    pipe = ImagePipeline(cfg)
    full = load_manifest(cfg)
    m = pipe.prepare(full)
    assert len(m) == 38 and not set(bad) & set(m.paths)
    assert [p for p, _ in pipe.skipped] == bad
    out = pipe.save_skipped(tmp_path / "run")
    rows = list(csv.DictReader(out.open()))
    assert [r["path"] for r in rows] == bad and all(r["reason"] for r in rows)
    with pytest.raises(DataError, match="pass the manifest returned by prepare"):
        pipe.dataset(full, training=False)


def test_dataset_prepares_unprepared_rows(png_csv, tmp_path):
    cfg = _cfg(png_csv, tmp_path)
    pipe = ImagePipeline(cfg)
    x, y = _collect(pipe.dataset(load_manifest(cfg), training=False, batch_size=40))
    assert x.shape == (40, 24, 20, 1)


def test_load_one_file_matches_training_input(png_csv, tmp_path):
    cfg = _cfg(png_csv, tmp_path)
    pipe = ImagePipeline(cfg)
    m = pipe.prepare(load_manifest(cfg))
    ax, _ = pipe.arrays(m)
    x, geo = pipe.load(m.paths[7])
    assert x.shape == (24, 20, 1) and x.dtype == np.float32 and (geo.orig_h, geo.orig_w) == (40, 32)
    assert np.array_equal(x, ax[7])
    fresh = ImagePipeline(cfg)  # not prepared: decodes directly, same numbers
    x2, geo2 = fresh.load(m.paths[7])
    assert np.array_equal(x2, x) and geo2 == geo
