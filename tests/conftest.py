"""Shared test fixtures.

Real radiographs and pretrained weights live in ``../shared`` beside the repository. A user's
fresh clone has no such folder, so every fixture that needs it skips with a message instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEDTL_SHARED", REPO.parent / "shared"))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"needs {path} (the project's ../shared folder); absent in this checkout")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The ../shared folder, or skip."""
    return _need(SHARED)


@pytest.fixture(scope="session")
def dicom_cxr_dir() -> Path:
    """../shared/data/dicom-cxr: eight real chest X-ray DICOM files, or skip."""
    return _need(SHARED / "data" / "dicom-cxr")


@pytest.fixture(scope="session")
def kermany_dir() -> Path:
    """../shared/data/kermany-pneumonia-224: 5,216 paediatric chest X-rays, or skip."""
    return _need(SHARED / "data" / "kermany-pneumonia-224")


@pytest.fixture(scope="session")
def mobilenet_weights() -> Path:
    """Real ImageNet MobileNetV2 no-top weights, or skip."""
    return _need(
        SHARED / "weights" / "mobilenet_v2_imagenet" / "mobilenet_v2_1.0_224_imagenet_notop.weights.h5"
    )


@pytest.fixture(scope="session")
def hub_efficientnet_dir() -> Path:
    """A TF Hub-style EfficientNet-Lite0 feature-vector SavedModel, or skip."""
    return _need(SHARED / "weights" / "efficientnet_lite0_feature_vector")
