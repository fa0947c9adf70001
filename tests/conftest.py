"""Shared test fixtures: where the real data lives."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
ISIC_DIR = SHARED_DATA / "isic2017_train256"
LITS_DIR = SHARED_DATA / "lits_case117"


@pytest.fixture(scope="session")
def isic_dir() -> Path:
    """The 2000 ISIC 2017 images (256x256) and expert masks from ../shared/data."""
    if not (ISIC_DIR / "images").is_dir():
        pytest.skip(f"real data not found at {ISIC_DIR}")
    return ISIC_DIR


@pytest.fixture(scope="session")
def lits_dir() -> Path:
    """The LiTS CT case (128^3, HU) with liver / tumour labels from ../shared/data."""
    if not (LITS_DIR / "ct.nii.gz").is_file():
        pytest.skip(f"real data not found at {LITS_DIR}")
    return LITS_DIR
