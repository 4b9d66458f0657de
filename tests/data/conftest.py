"""Fixtures for the medtl.data tests: small PNG datasets (seconds, not minutes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.data._helpers import make_png_dataset


@pytest.fixture
def png_csv(tmp_path: Path) -> Path:
    """A 20-patient, 40-image PNG dataset with a labels CSV (1:3 positives)."""
    return make_png_dataset(tmp_path / "ds")
