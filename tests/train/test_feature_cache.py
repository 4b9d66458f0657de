"""When a stage trains on cached features, and the batches it gets; without training."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from medtl.train.feature_cache import feature_dataset, use_feature_cache


def _cfg(feature_cache=True, preset="none", transforms=(), hflip=False, mixup=0.0, cutmix=0.0):
    return SimpleNamespace(train=SimpleNamespace(feature_cache=feature_cache),
                           augment=SimpleNamespace(preset=preset, transforms=list(transforms), hflip=hflip,
                                                   mixup=mixup, cutmix=cutmix))


def test_only_unaugmented_head_only_stages_use_the_cache():
    head, blocks = SimpleNamespace(unfreeze="head"), SimpleNamespace(unfreeze=2)
    assert use_feature_cache(_cfg(), head)
    assert not use_feature_cache(_cfg(), blocks)
    assert not use_feature_cache(_cfg(feature_cache=False), head)
    assert not use_feature_cache(_cfg(preset="light"), head)
    assert not use_feature_cache(_cfg(hflip=True), head)
    assert not use_feature_cache(_cfg(transforms=["rotate"]), head)
    # mixup/cutmix mix images: the head trains on mixed films, never on cached features
    assert not use_feature_cache(_cfg(mixup=0.2), head)
    assert not use_feature_cache(_cfg(cutmix=1.0), head)


def test_feature_batches_follow_the_given_order():
    x, y = np.arange(10, dtype="float32").reshape(5, 2), np.arange(5, dtype="float32")
    order = np.array([4, 0, 3, 1, 2])
    batches = list(feature_dataset(x, y, batch_size=2, order=order))
    assert [len(b[1]) for b in batches] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate([b[1].numpy() for b in batches]), y[order])
