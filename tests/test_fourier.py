"""Forward model against analytic cases."""

import numpy as np
import scipy.ndimage as ndi

from shared.physics import fourier, metrics


def test_parseval(crystal):
    obj, intensity = crystal
    assert np.isclose(intensity.sum(), obj.size * (np.abs(obj) ** 2).sum(), rtol=1e-5)


def test_round_trip(crystal):
    obj, _ = crystal
    back = fourier.object_from_field(fourier.far_field(obj))
    assert np.allclose(back, obj, atol=1e-5)
    assert back.dtype == np.complex64


def test_shift_gives_phase_ramp(crystal):
    obj, _ = crystal
    shift = (2, -3, 1)
    ratio = fourier.far_field(np.roll(obj, shift, axis=(0, 1, 2))) / (fourier.far_field(obj) + 1e-20)
    q = np.indices(obj.shape) - 16
    expected = np.exp(-2j * np.pi * sum(s * qi for s, qi in zip(shift, q)) / 32)
    strong = np.abs(fourier.far_field(obj)) > 1e-2 * np.abs(fourier.far_field(obj)).max()
    assert np.allclose(ratio[strong], expected[strong], atol=1e-3)


def test_twin_has_same_magnitude(crystal):
    obj, intensity = crystal
    assert np.allclose(fourier.intensity(metrics.twin(obj)), intensity, rtol=1e-4, atol=1e-3)


def test_subvoxel_shift_keeps_intensity(crystal):
    obj, intensity = crystal
    moved = metrics.fourier_shift(obj, (0.4, -0.3, 0.25))
    assert np.allclose(fourier.intensity(moved), intensity, rtol=1e-3, atol=1e-2)


def test_poisson_counts_total_and_noiseless():
    rng = np.random.default_rng(0)
    ideal = ndi.gaussian_filter(np.random.default_rng(1).random((16, 16, 16)), 2).astype(np.float32)
    noisy = fourier.poisson_counts(ideal, 1e6, rng)
    assert abs(noisy.sum() - 1e6) < 5 * np.sqrt(1e6)
    assert np.all(noisy == np.round(noisy))
    assert fourier.poisson_counts(ideal, 0, rng) is not None
    assert np.array_equal(fourier.poisson_counts(ideal, 0, rng), ideal)


def test_detector_frames_are_rocking_slices(crystal):
    _, intensity = crystal
    frames = list(fourier.detector_frames(intensity))
    assert len(frames) == 32
    assert np.array_equal(np.stack([f for _, f in frames]), intensity)
