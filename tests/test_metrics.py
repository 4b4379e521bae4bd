"""Every BCDI ambiguity gives (near) zero error; real differences do not."""

import numpy as np

from shared.physics import metrics


def test_identity_and_global_offset(crystal):
    obj, _ = crystal
    assert metrics.errors(obj, obj)["phase"] < 1e-4
    e = metrics.errors(obj * np.exp(1.3j), obj)
    assert e["phase"] < 1e-4 and e["amplitude"] < 1e-4


def test_twin_is_zero_error(crystal):
    obj, _ = crystal
    e = metrics.errors(metrics.twin(obj), obj)
    assert e["phase"] < 1e-4 and e["amplitude"] < 1e-4


def test_integer_and_subvoxel_shift(crystal):
    obj, _ = crystal
    e = metrics.errors(np.roll(obj, (3, -2, 5), axis=(0, 1, 2)), obj)
    assert e["phase"] < 1e-4 and e["amplitude"] < 1e-4
    e = metrics.errors(metrics.fourier_shift(obj, (0.3, -1.4, 2.2)), obj)
    assert e["phase"] < 0.01 and e["amplitude"] < 0.02  # registration to 0.01 voxel


def test_phase_ramp(crystal):
    obj, _ = crystal
    ramp = np.exp(1j * (0.4 + np.tensordot([0.15, -0.1, 0.2], np.indices(obj.shape), axes=1)))
    e = metrics.errors(obj * ramp, obj)
    assert e["phase"] < 1e-3 and e["amplitude"] < 1e-4


def test_real_errors_are_seen(crystal):
    obj, intensity = crystal
    flat = np.abs(obj).astype(np.complex64)
    assert metrics.errors(flat, obj)["phase"] > 0.05
    blurred = metrics.fourier_shift(obj, (0, 0, 0)) * (np.abs(obj) > 0.99)
    assert metrics.errors(blurred, obj)["amplitude"] > 0.05
    assert metrics.chi(obj, intensity) < 1e-5
    assert metrics.chi(flat, intensity) > 0.05


def test_canonical_presentation(crystal):
    obj, _ = crystal
    amp, phase, support = metrics.canonical(np.roll(obj, 7, axis=0) * np.exp(2j))
    assert amp.max() == np.float32(1.0)
    assert abs(np.angle((amp * np.exp(1j * phase) * support).sum())) < 1e-4
    assert metrics.errors(amp * np.exp(1j * phase), obj)["phase"] < 1e-3
