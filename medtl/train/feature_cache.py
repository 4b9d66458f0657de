"""Cached backbone features for head-only stages.

A head-only stage without augmentation sees the same backbone output every epoch, so the
backbone runs once over the images and the head trains on the stored features (far faster).
The cache holds pooled features (the cut is after any weight-free pooling right after the
backbone), and is dropped as soon as a stage may change the backbone.

Example:
    >>> cache = FeatureCache(pipeline, train_m, val_m, batch_size=32, seed=7)
    >>> head, epoch_data, val_ds = cache.stage_inputs(model)
    >>> head.fit(epoch_data(0), validation_data=val_ds)
"""

from __future__ import annotations

import time
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from medtl.models.pooled import pooled_tensor

__all__ = ["FeatureCache", "use_feature_cache", "split_head", "feature_dataset"]


def use_feature_cache(cfg, st) -> bool:
    """True when stage ``st`` of ``cfg`` can train on cached features: a head-only stage
    whose images are not augmented (so each epoch's backbone output is the same).

    ``augment.mixup`` / ``augment.cutmix`` mix images, so they turn the cache off too: the head
    then trains on mixed films, the same whatever ``train.feature_cache`` says (mixing cached
    features instead would be a different regulariser, and cutmix has no feature-space form).
    """
    aug = cfg.augment
    return bool(cfg.train.feature_cache and st.unfreeze == "head"
                and aug.preset == "none" and not aug.transforms and not aug.hflip
                and not aug.mixup > 0 and not aug.cutmix > 0)


class FeatureCache:
    """Backbone features of the training (and validation) images, computed on first use.

    Args:
        pipeline: the run's ``ImagePipeline``.
        train_m, val_m: the prepared training and validation manifests (``val_m`` None in a
            run without validation).
        batch_size: batch size of the feature datasets.
        seed: the run seed; epoch ``g`` shuffles by ``(seed, g)`` like the image pipeline.
        log: prints the one line saying what was cached.
    """

    def __init__(self, pipeline, train_m, val_m, batch_size: int, seed: int,
                 log: Callable[[str], None] = print) -> None:
        self.pipeline, self.train_m, self.val_m = pipeline, train_m, val_m
        self.batch_size, self.seed, self.log = batch_size, seed, log
        self._features = None

    def clear(self) -> None:
        """Forget the features (the next stage may change the backbone, so they go stale)."""
        self._features = None

    def stage_inputs(self, model: keras.Model):
        """(head model to fit, global epoch -> training dataset, validation dataset or None)."""
        head, (fx, fy), val = self._get(model)
        bs, seed = self.batch_size, self.seed
        return (head,
                lambda gid: feature_dataset(fx, fy, bs, np.random.default_rng([seed, gid]).permutation(len(fx))),
                None if val is None else feature_dataset(*val, bs))

    def _get(self, model: keras.Model):
        """(head model, (train features, y), (val features, y) or None), computed once."""
        if self._features is None:
            extractor, head = split_head(model)
            t0 = time.perf_counter()
            data = []
            for m in (self.train_m, self.val_m):
                if m is None:  # a fixed run has no validation split
                    data.append(None)
                    continue
                images = self.pipeline.dataset(m, training=False).map(lambda x, y: x)
                data.append((extractor.predict(images, verbose=0), m.targets()))
            n = sum(len(d[0]) for d in data if d is not None)
            self.log(f"Cached backbone features {data[0][0].shape[1:]} for "
                     f"{n} images in {time.perf_counter() - t0:.1f}s")
            self._features = (head, data[0], data[1])
        return self._features


def split_head(model: keras.Model) -> tuple[keras.Model, keras.Model]:
    """Split ``model`` into (feature extractor, head) that share its layers and weights.

    The cut is :func:`medtl.models.pooled.pooled_tensor`: after the layer named ``backbone``
    and any weight-free pooling or flattening right after it, so cached features are small. Training the head trains ``model``'s head.

    Example:
        >>> extractor, head = split_head(model)
        >>> np.allclose(head(extractor(x)), model(x))
        True
    """
    try:
        cut = pooled_tensor(model)  # the same cut as the shift measures' features
    except ValueError as exc:
        raise ValueError(f"split_head: {exc}; build the model with medtl.models.build_model or set "
                         "train.feature_cache: false") from None
    extractor = keras.Model(model.inputs, cut, name="feature_extractor")
    head = keras.Model(cut, model.outputs, name="head")
    return extractor, head


def feature_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, order: np.ndarray | None = None):
    """Batches of cached features; a tf.data input costs Keras far less per fit than numpy."""
    if order is not None:
        x, y = x[order], y[order]
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)
