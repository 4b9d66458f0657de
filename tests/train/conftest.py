"""Fixtures for the training tests: a tiny synthetic DICOM set and a tiny, fast config.

The reference run (two stages of two epochs, MobileNetV2 without pretrained weights at 32 px)
is trained once per session and shared by the trainer, resume and predict tests.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_REPO = Path(__file__).resolve().parents[2]
_SHARED = Path(os.environ.get("MEDTL_SHARED", _REPO.parent / "shared"))
MOBILENET = _SHARED / "weights" / "mobilenet_v2_imagenet" / "mobilenet_v2_1.0_224_imagenet_notop.weights.h5"


def tiny_weights() -> str:
    """The real ImageNet MobileNetV2 weights when ../shared has them, else none.

    A randomly initialised MobileNetV2 (BatchNorm at its initial statistics) computes features
    of about 1e-13 for every image, so every film gets the same score; the tests still run
    without ../shared, but predictions are only informative with real weights.
    """
    return str(MOBILENET) if MOBILENET.exists() else "none"


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """labels.csv of 12 synthetic patients (about 30 films, 5 with lesions)."""
    from medtl.data.synthetic import make_sample_data

    out = tmp_path_factory.mktemp("tiny_data")
    return make_sample_data(out, n_patients=12, seed=3, image_size=(64, 64), prevalence=0.4)


def tiny_raw(tiny_data: Path, work: Path, **sections) -> dict:
    """A plain config dict for a seconds-long run; ``sections`` update its top-level sections."""
    raw = {
        "name": "tiny",
        "seed": 7,
        "task": "binary",
        "output_dir": str(work / "runs"),
        "data": {
            "manifest": str(tiny_data),
            "path_column": "file",
            "label_column": "label",
            "patient_column": "patient_id",
            "image_size": [32, 32],
            "cache_dir": str(work / "cache"),
            "val_fraction": 0.35,
            "workers": 1,
        },
        "augment": {"preset": "light"},
        "model": {"backbone": "mobilenetv2", "weights": tiny_weights(), "dropout": 0.3},
        "train": {
            "batch_size": 8,
            "stages": [
                {"unfreeze": "head", "epochs": 2, "lr": 1e-2},
                {"unfreeze": 1, "epochs": 2, "lr": 1e-3, "schedule": "cosine"},
            ],
            "patience": 5,
            "mixed_precision": "off",
            "distribute": "none",
            "feature_cache": False,
        },
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            raw.setdefault(key, {}).update(value)
        else:
            raw[key] = value
    return raw


def tiny_config(tiny_data: Path, work: Path, **sections):
    """The :func:`tiny_raw` dict as a validated Config."""
    from medtl.config import config_from_dict

    return config_from_dict(tiny_raw(tiny_data, work, **sections))


@pytest.fixture(scope="session")
def tiny_work(tmp_path_factory) -> Path:
    """A work folder shared by the session's tiny runs (one image cache)."""
    return tmp_path_factory.mktemp("tiny_work")


@pytest.fixture(scope="session")
def reference_run(tiny_data, tiny_work):
    """An uninterrupted tiny run: (config, TrainResult)."""
    from medtl.train.trainer import train

    cfg = tiny_config(tiny_data, tiny_work)
    return cfg, train(cfg, run_dir=tiny_work / "reference", progress=False)


class Crash(Exception):
    """Raised by :func:`crash_after_epoch`: a run killed right after a checkpoint."""


@contextlib.contextmanager
def crash_after_epoch(monkeypatch, global_epoch: int):
    """Training inside the block commits the checkpoint of ``global_epoch`` and then dies
    (the block expects the :class:`Crash`); the real commit is back afterwards."""
    from medtl.train import trainer

    real_commit = trainer._Run._commit

    def commit_then_crash(self):
        real_commit(self)
        if self.state.global_epoch == global_epoch:
            raise Crash

    monkeypatch.setattr(trainer._Run, "_commit", commit_then_crash)
    try:
        with pytest.raises(Crash):
            yield
    finally:
        monkeypatch.setattr(trainer._Run, "_commit", real_commit)
