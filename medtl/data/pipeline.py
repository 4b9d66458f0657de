"""The tf.data input pipeline: cached, augmented, shuffled, batched, prefetched.

``prepare`` decodes every file once, in parallel worker processes, into the on-disk cache
(:mod:`medtl.data.cache`); ``dataset`` then reads the small cached arrays (from memory when
they fit), augments them and yields batches ``(x float32 [B, H, W, 1] in [0, 1], y float32
[B, K])``. Shuffle order and augmentation are a function of ``(cfg.seed, epoch)`` only: every
image gets its own seed from ``(seed, epoch, row)``, so parallelism does not change the result.
Training batches are then mixed by ``augment.mixup`` / ``augment.cutmix`` (:mod:`medtl.data.mixing`,
seeded by ``(seed, epoch, batch)``); evaluation batches never are.

Example:
    >>> pipe = ImagePipeline(cfg)
    >>> manifest = pipe.prepare(load_manifest(cfg))
    >>> for x, y in pipe.dataset(manifest, training=True, epoch=0):
    ...     x.shape, y.shape
    (TensorShape([16, 224, 224, 1]), TensorShape([16, 1]))
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import os
from pathlib import Path
from typing import Callable

import numpy as np
import tensorflow as tf

from medtl.config import Config
from medtl.data.augment import Augmenter, build_augmenter
from medtl.data.cache import ImageCache, read_entry
from medtl.data.pool import default_workers, start_decoder_server
from medtl.data.manifest import DataError, Manifest
from medtl.data.mixing import BatchMixer, build_mixer
from medtl.data.resize import Geometry

DEFAULT_MEMORY_LIMIT = 2 * 1024**3


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of row ``index`` in ``epoch`` (independent streams per triple)."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(index)]).generate_state(1)[0])


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled row order of ``epoch``."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), 0x5EED]).permutation(n)


class ImagePipeline:
    """Turns a manifest into model-ready batches.

    Args:
        cfg: the run config (``data.*``, ``augment.*``, ``seed``, ``train.batch_size``).
        memory_limit: cached images up to this many bytes are kept in memory, so later epochs
            do not touch the disk; beyond it they are read from the cache files each time.
        workers: decoding processes; default ``data.workers`` (0 = one per core).

    Attributes:
        skipped: ``(path, reason)`` of files left out under ``data.on_error: skip``.
    """

    def __init__(self, cfg: Config, memory_limit: int = DEFAULT_MEMORY_LIMIT, workers: int | None = None):
        d = cfg.data
        self.cfg = cfg
        self.image_size = (int(d.image_size[0]), int(d.image_size[1]))
        self.cache = ImageCache(d.cache_dir, self.image_size, d.keep_aspect, d.window, d.frame, d.max_pixels)
        self.augmenter: Augmenter | None = build_augmenter(cfg.augment, self.image_size)
        self.mixer: BatchMixer | None = build_mixer(cfg.augment, cfg.seed)
        self.memory_limit = int(memory_limit)
        self.workers = default_workers(workers if workers is not None else d.workers)
        self.skipped: list[tuple[str, str]] = []
        if self.workers > 1:
            start_decoder_server()  # starts while the caller reads its manifest and builds a model
        self._entries: dict[str, str] = {}
        self._ram: dict[str, np.ndarray] = {}
        self._ram_bytes = 0

    # ----------------------------------------------------------------------------------------
    # Decoding

    def prepare(self, manifest: Manifest) -> Manifest:
        """Decode, resize and cache every file of ``manifest`` in parallel.

        Returns:
            ``manifest`` itself, or under ``data.on_error: skip`` the rows that decoded (the
            others are added to :attr:`skipped`).

        Raises:
            DataError: under ``data.on_error: fail``, listing every unreadable file and why.
        """
        results = self.cache.fill(manifest.paths, self.workers)
        bad = [(r.path, r.error or "") for r in results if not r.ok]
        for r in results:
            if r.ok:
                self._entries[r.path] = r.entry  # type: ignore[assignment]
        if not bad:
            return manifest
        listing = "; ".join(f"{p} ({why})" for p, why in bad)
        if self.cfg.data.on_error == "fail":
            raise DataError(
                f"{len(bad)} of {len(manifest)} file(s) cannot be read: {listing}; fix or remove them, "
                "or set data.on_error: skip to leave them out"
            )
        known = {p for p, _ in self.skipped}
        self.skipped.extend((p, why) for p, why in bad if p not in known)
        keep = [i for i, r in enumerate(results) if r.ok]
        if not keep:
            raise DataError(f"{manifest.source}: none of the {len(manifest)} files can be read: {listing}")
        return manifest.subset(keep)

    def save_skipped(self, run_dir: str | os.PathLike) -> Path | None:
        """Write :attr:`skipped` to ``run_dir/skipped.csv`` (path, reason); None if nothing was skipped."""
        if not self.skipped:
            return None
        out = Path(run_dir) / "skipped.csv"
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "reason"])
            w.writerows(self.skipped)
        return out

    def _entries_for(self, manifest: Manifest) -> list[str]:
        if any(p not in self._entries for p in manifest.paths):
            if len(self.prepare(manifest)) != len(manifest):
                raise DataError(
                    f"{manifest.source}: some files cannot be read (see ImagePipeline.skipped); "
                    "pass the manifest returned by prepare() to dataset()"
                )
        return [self._entries[p] for p in manifest.paths]

    # ----------------------------------------------------------------------------------------
    # Reading cached images

    def _source(self, entries: list[str]) -> Callable[[np.ndarray], np.ndarray]:
        """A function from row positions to a float16 (b, H, W) stack."""
        h, w = self.image_size
        missing = list(dict.fromkeys(e for e in entries if e not in self._ram))
        if self._ram_bytes + len(missing) * h * w * 2 <= self.memory_limit:
            if missing:
                with cf.ThreadPoolExecutor(min(8, 2 * self.workers)) as ex:
                    for e, (img, _) in zip(missing, ex.map(read_entry, missing)):
                        self._ram[e] = img
                self._ram_bytes += len(missing) * h * w * 2
            arrays = [self._ram[e] for e in entries]
            return lambda idx: np.stack([arrays[i] for i in idx])
        ram = self._ram
        return lambda idx: np.stack([ram[entries[i]] if entries[i] in ram else read_entry(entries[i])[0] for i in idx])

    def arrays(self, manifest: Manifest) -> tuple[np.ndarray, np.ndarray]:
        """All images and targets as numpy, without augmentation.

        Returns:
            x float32 (N, H, W, 1) in [0, 1] and y float32 (N, K).
        """
        source = self._source(self._entries_for(manifest))
        x = source(np.arange(len(manifest))).astype(np.float32)[..., None]
        return x, manifest.targets()

    def load(self, path: str | os.PathLike) -> tuple[np.ndarray, Geometry]:
        """One file as the model sees it, with the geometry to map results back onto it.

        Returns:
            x float32 (H, W, 1) in [0, 1] and its :class:`~medtl.data.resize.Geometry`.
        """
        p = os.fspath(path)
        entry = self._entries.get(os.path.abspath(p))
        if entry is not None and os.path.exists(entry):
            img, geo = self.cache.read(entry)
            return img.astype(np.float32)[..., None], geo
        img, geo = self.cache.decode(p)
        return img[..., None], geo

    # ----------------------------------------------------------------------------------------
    # tf.data

    def dataset(
        self,
        manifest: Manifest,
        training: bool,
        epoch: int = 0,
        batch_size: int | None = None,
        epochs: int = 1,
    ) -> tf.data.Dataset:
        """Batches of ``(x float32 [B, H, W, 1] in [0, 1], y float32 [B, K])``.

        Args:
            manifest: prepared rows (see :meth:`prepare`; unprepared rows are prepared here).
            training: shuffle, augment and mix (mixup/cutmix); False keeps row order, pixels
                and targets as cached.
            epoch: first epoch number; order and augmentation depend only on (cfg.seed, epoch).
            batch_size: default ``train.batch_size``.
            epochs: how many epochs to chain (epoch, epoch + 1, ...); batches never span two.

        Example:
            >>> ds = pipe.dataset(manifest, training=True, epoch=3)
        """
        if len(manifest) == 0:
            raise DataError(f"{manifest.source}: empty manifest; nothing to feed the model")
        if epochs < 1:
            raise ValueError(f"dataset: epochs={epochs}; expected >= 1")
        n = len(manifest)
        bs = int(batch_size or self.cfg.train.batch_size)
        source = self._source(self._entries_for(manifest))
        targets = manifest.targets()
        seed = int(self.cfg.seed)
        aug = self.augmenter if training else None
        mixer = self.mixer if training else None
        h, w = self.image_size
        k = targets.shape[1]

        def make_batch(idx: np.ndarray, ep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            x = source(idx).astype(np.float32)
            if aug is not None:
                for j, i in enumerate(idx):
                    x[j] = aug(x[j], sample_seed(seed, int(ep), int(i)))
            return x[..., None], targets[idx]

        def to_batch(idx: tf.Tensor, ep: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            x, y = tf.numpy_function(make_batch, [idx, ep], (tf.float32, tf.float32), stateful=False)
            x.set_shape([None, h, w, 1])
            y.set_shape([None, k])
            return x, y

        ds = None
        for e in range(epoch, epoch + epochs):  # each epoch batched alone: no batch spans two
            order = epoch_order(n, seed, e) if training else np.arange(n)
            part = tf.data.Dataset.from_tensor_slices((order.astype(np.int64), np.full(n, e, np.int64))).batch(bs)
            if mixer is not None:  # each batch's mixing seeds ride with it: (seed, epoch, batch) only
                seeds = tf.data.Dataset.from_tensor_slices(mixer.batch_seeds(e, -(-n // bs)))
                part = tf.data.Dataset.zip((part, seeds))
            ds = part if ds is None else ds.concatenate(part)
        if mixer is None:
            ds = ds.map(lambda idx, ep: to_batch(idx, ep[0]), num_parallel_calls=tf.data.AUTOTUNE,
                        deterministic=True)
        else:
            ds = ds.map(lambda rows, seeds: mixer(*to_batch(rows[0], rows[1][0]), seeds),
                        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.prefetch(tf.data.AUTOTUNE)
