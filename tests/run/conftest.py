"""Fixtures for the run-layer tests: the trainer tests' session reference run (trained once per
session, shared) and the old run folders kept in tests/run/fixtures."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.train.conftest import reference_run, tiny_data, tiny_work  # noqa: F401  (shared fixtures)

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture
def old_runs(tmp_path: Path) -> Path:
    """A copy of tests/run/fixtures (run folders written by medtl before the run layer), so a
    test cannot change the committed files."""
    dst = tmp_path / "fixtures"
    shutil.copytree(FIXTURES, dst)
    return dst
