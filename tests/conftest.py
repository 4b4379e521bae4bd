"""Shared fixtures: simulated crystals and the real data beside the repository."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from shared.physics import crystals, fourier

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("CDI_LIVE_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def crystal():
    """One strained crystal on 32³: (complex object, intensity)."""
    amp, phase, _ = crystals.random_crystal(32, np.random.default_rng(3), max_strain=3e-3)
    obj = fourier.make_object(amp, phase)
    return obj, fourier.intensity(obj)


def real_file(relative: str) -> Path:
    path = REAL_DATA / relative
    if not path.exists():
        pytest.skip(f"real data {path} not found (set CDI_LIVE_DATA to the folder of ../shared/data)")
    return path
