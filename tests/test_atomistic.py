"""The optional atomistic route on one small crystal (skipped without the extra)."""

import numpy as np
import pytest

pytest.importorskip("ase", reason="atomistic extra not installed: pip install 'cdi-live[atomistic]'")

from shared.physics import atomistic, fourier  # noqa: E402


def test_small_relaxed_crystal():
    amp, phase, info = atomistic.atomistic_crystal(16, np.random.default_rng(0), relax_steps=30)
    assert amp.shape == phase.shape == (16, 16, 16)
    assert 500 < info["atoms"] < 60000
    assert amp.max() == 1 and (amp > 0).sum() > 20
    assert 0 < info["max_displacement_nm"] < 0.2  # the inclusion pushed atoms, relaxation kept it physical
    assert np.any(phase != 0) and np.abs(phase).max() < np.pi
    assert np.isfinite(fourier.intensity(fourier.make_object(amp, phase))).all()
