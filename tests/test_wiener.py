"""The answer on photon counts as the fit's Wiener estimate (``shared.physics.wiener``, ``plans.estimate``): against
an analytic case, against the noise a fit reproduces, and through the refined stage, whose χ stays its answer's."""

import dataclasses

import numpy as np
import pytest

from shared.physics import crystals, fourier, metrics, wiener
from shared.solver.plans import REFINE_PLAN, Converged, estimate


def test_a_point_crystal_is_scaled_by_its_photons_over_photons_plus_one():
    """A point's far field is flat, so every voxel expects the same λ: the estimate is the point × λ/(λ + 1),
    whatever the photon step and the flat background."""
    point = np.zeros((16, 16, 16), np.complex64)
    point[8, 8, 8] = 1.0
    for lam in (0.25, 3.0, 1e4):
        counts = np.full(point.shape, lam)
        np.testing.assert_allclose(wiener.filtered(point, counts, None, 1.0), point * lam / (lam + 1), atol=1e-6)
        scaled = (counts + 0.5) * 1e-3  # one photon = 1e-3, a background of half a photon per voxel
        np.testing.assert_allclose(wiener.filtered(point, scaled, None, 1e-3, background=0.5e-3),
                                   point * lam / (lam + 1), atol=1e-6)


def test_the_estimate_removes_noise_that_a_fit_to_counts_reproduces():
    """The truth's projection onto its own noisy counts (the measured magnitudes with the truth's phases: what a fit
    reproduces at its fixed point) is further from the crystal than its Wiener estimate; on bright data the
    estimate barely moves it (seed 4305, not a tuning seed)."""
    for photons, gained in ((3e4, True), (1e9, False)):
        intensity, amplitude, phase, _, _ = crystals.simulated_scan(32, 4305, 0, 0, True, (photons, photons))
        truth = fourier.make_object(amplitude, phase)
        far = np.fft.fftshift(np.fft.fftn(truth))
        counts = np.round(intensity)
        fit = np.fft.ifftn(np.fft.ifftshift(np.sqrt(counts) * np.exp(1j * np.angle(far)))) * (amplitude > 0.1 * amplitude.max())
        before = metrics.errors(fit, truth)["phase_unweighted"]
        after = metrics.errors(wiener.filtered(fit, counts, None, 1.0), truth)["phase_unweighted"]
        if gained:
            assert after < 0.8 * before
        else:
            assert after == pytest.approx(before, abs=2e-3)


def test_only_answers_on_photon_counts_are_filtered_and_their_chi_is_the_answers():
    """``estimate`` filters a scan on counts (with a photon step) and leaves one that is not; the χ it gives is the
    shown answer's own, with the fitted background."""
    from shared.physics import phasing

    intensity, amplitude, phase, _, _ = crystals.simulated_scan(32, 4305, 1, 1, True, (1e5, 1e5))
    truth = fourier.make_object(amplitude, phase)
    counts = np.round(intensity).astype(np.float32)
    smooth = np.abs(np.fft.fftshift(np.fft.fftn(truth))).astype(np.float32) ** 2  # noise-free: not counts
    data = np.stack([counts, smooth])
    obj = np.stack([truth, truth]).astype(np.complex64)
    fit = Converged(obj, np.abs(obj) > 0, np.zeros(2), ["nn", "nn"], coherence=np.zeros((2, 3)),
                    background=np.zeros(2))
    shown = estimate(fit, data, None, [True, False], dataclasses.replace(REFINE_PLAN, wiener=1.0))
    assert not np.allclose(shown.obj[0], obj[0]) and np.array_equal(shown.obj[1], obj[1])
    magnitude = np.fft.ifftshift(np.sqrt(counts), axes=(0, 1, 2))[None]
    assert shown.chi[0] == pytest.approx(phasing.project_chi(shown.obj[:1], magnitude)[0], rel=1e-5)
    off = estimate(fit, data, None, [True, False], dataclasses.replace(REFINE_PLAN, wiener=0.0))
    assert off is fit
