"""Shared test fixtures: seeds, the optional real-data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(os.environ.get("MEDSYMMFLOW_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(autouse=True)
def _seed_and_threads() -> None:
    torch.manual_seed(0)


@pytest.fixture
def shared_data() -> Path:
    """The real-data folder (../shared/data); skips the test when it is absent."""
    if not (SHARED_DATA / "medmnist").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set MEDSYMMFLOW_SHARED_DATA to point elsewhere)")
    return SHARED_DATA
