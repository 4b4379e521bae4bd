"""A flat background in the forward model (I = |F|² ⊛ G + b): its EM fit against a known constant, the projection
that fits it, the refined stage that fits it to counts alone, and χ with it."""

import dataclasses

import numpy as np
import pytest
import scipy.fft as sfft

from shared.physics import coherence, crystals, fourier, metrics, phasing
from shared.solver import fullgrid
from shared.solver.plans import REFINE_PLAN, converge

FLAT = 0.5  # photons per voxel


@pytest.fixture(scope="module")
def counted():
    """A strained crystal's pattern at 10⁶ photons, measured with and without a flat background (Poisson)."""
    rng = np.random.default_rng(21)
    amp, phase, _ = crystals.random_crystal(32, rng, max_strain=2e-3)
    obj = fourier.make_object(amp, phase)
    expected = fourier.intensity(obj)
    expected = expected * (1e6 / expected.sum())
    return obj, expected, rng.poisson(expected + FLAT).astype(np.float32), rng.poisson(expected).astype(np.float32)


def test_em_recovers_a_known_constant_under_the_true_model(counted):
    """With the crystal's own far field held, the EM step converges to the background that was added."""
    _, expected, _, _ = counted
    data = (expected + FLAT)[None].astype(np.float32)
    faint = coherence.faint_voxels(data)
    background = coherence.background_start(data, faint)
    for _ in range(300):
        background = coherence.background_update(background, data / (expected + background), faint)
    assert background[0] == pytest.approx(FLAT, rel=1e-3)


def test_em_keeps_zero_at_zero():
    ratio = np.full((1, 4, 4, 4), 1.7, np.float32)
    assert coherence.background_update(np.zeros(1, np.float32), ratio)[0] == 0.0


def test_the_projection_with_a_background_keeps_the_truth_and_finds_the_background(counted):
    obj, expected, with_flat, _ = counted
    magnitude = sfft.ifftshift(np.sqrt(with_flat))[None]
    support = (np.abs(obj) > 0.05 * np.abs(obj).max())[None]
    scale = np.sqrt(expected.sum() / fourier.intensity(obj).sum())

    def after(fit: bool):
        state = phasing.PhasingState(magnitude, (scale * obj)[None].astype(np.complex64), support, shrink_every=0)
        if fit:
            state.faint = coherence.faint_voxels(magnitude**2)
            state.background = coherence.background_start(magnitude**2, state.faint)
        phasing.ScheduleRun("20*HIO+30*ER", 1).advance(state)
        return metrics.errors(state.obj[0], obj)["phase_unweighted"], state.background

    kept, background = after(True)
    drifted, _ = after(False)
    assert background[0] == pytest.approx(FLAT, rel=0.15)
    assert kept < 0.05 and drifted > 1.5 * kept


def test_the_refined_stage_fits_a_background_to_counts_and_none_where_there_is_none(counted):
    obj, expected, with_flat, without = counted
    plan = dataclasses.replace(REFINE_PLAN, polish_steps=10)
    start = np.abs(obj)[None].astype(np.complex64)  # the true shape, flat phase: the search is not the test
    fitted = converge(with_flat[None], start, None, plan, counting=[True])
    assert fitted.background[0] == pytest.approx(FLAT, rel=0.25)
    assert metrics.errors(fitted.obj[0], obj)["phase_unweighted"] < 0.1
    assert converge(without[None], start, None, plan, counting=[True]).background[0] < 0.1 * FLAT
    # not counts (noise-free floats): nothing is fitted, the model stays |F|² alone
    assert converge(expected[None], start, None, plan, counting=[False]).background[0] == 0.0


def test_chi_with_the_background_is_the_fitted_model_s(counted):
    """χ is taken with the model the answer was fitted with: √(s²·|F|² + b), the scale s fitted with b held."""
    obj, expected, _, _ = counted
    without = metrics.chi(obj, expected + FLAT)  # the model without a background, against data with one
    assert metrics.chi(obj, expected + FLAT, background=FLAT) < 1e-4 < without
    assert metrics.chi(obj, expected + FLAT, background=3 * FLAT) > 10 * metrics.chi(obj, expected + FLAT,
                                                                                       background=FLAT)
    assert metrics.chi(0.5 * obj, expected + FLAT, background=FLAT) < 1e-4  # any scale of the answer


def test_the_full_grid_fit_carries_the_background_on(counted):
    """The full-grid fit holds the refined stage's background (from the truth here: the search is not the test):
    its answer is closer to the crystal than the same fit without it, and its χ is that model's."""
    obj, expected, with_flat, _ = counted
    scale = np.sqrt(expected.sum() / fourier.intensity(obj).sum())
    seeds = (scale * obj)[None].astype(np.complex64)
    plan = fullgrid.FullPlan(schedule="40*ER", support_dilation=2, patience=100)
    carried = fullgrid.fit(with_flat, None, seeds, plan, background=FLAT)
    plain = fullgrid.fit(with_flat, None, seeds, plan)
    assert carried.background == FLAT and plain.background is None
    assert metrics.errors(carried.obj[0], obj)["phase_unweighted"] < metrics.errors(plain.obj[0], obj)["phase_unweighted"]
    model = metrics.chi(carried.obj[0], with_flat, background=FLAT)
    assert carried.chi[0] == pytest.approx(model, rel=0.05)
