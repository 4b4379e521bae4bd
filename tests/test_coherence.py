"""Partial coherence (a Gaussian blur of the computed intensity): the model against an independent blur, the
projection that fits it, the plan that chooses its width, the AD polish through it."""

import dataclasses

import numpy as np
import pytest
import scipy.fft as sfft
import scipy.ndimage as ndi
import tensorflow as tf

from shared.physics import coherence, crystals, fourier, metrics, phasing
from shared.solver import effort
from shared.solver.plans import REFINE_PLAN, converge
from shared.solver.refinement import gaussian_loss, refine

SIGMA = 0.8  # voxels, on the detector axes (axes 1 and 2 of a volume)


@pytest.fixture(scope="module")
def blurred():
    """A strained crystal whose pattern is blurred on the detector axes by scipy.ndimage (not by our code)."""
    amp, phase, _ = crystals.random_crystal(32, np.random.default_rng(8), max_strain=2e-3)
    obj = fourier.make_object(amp, phase)
    sharp = fourier.intensity(obj)
    return obj, sharp, ndi.gaussian_filter(sharp.astype(np.float64), (0, SIGMA, SIGMA), mode="wrap",
                                           truncate=8).astype(np.float32)


def test_kernel_is_a_normalised_gaussian_with_its_centre_weight():
    multiplier = coherence.kernel((16, 16, 16), [[0.0, 1.0, 1.5]])
    real_space = sfft.irfftn(multiplier, s=(16, 16, 16), axes=(1, 2, 3))[0]
    assert real_space.sum() == pytest.approx(1.0, abs=1e-5)
    assert coherence.centre(multiplier, 16)[0] == pytest.approx(real_space[0, 0, 0], rel=1e-5)
    x = np.minimum(np.arange(16), 16 - np.arange(16))  # periodic distance from voxel 0
    sampled = np.exp(-x**2 / 2) / np.sqrt(2 * np.pi)  # σ 1 along axis 1, none along axis 0
    assert real_space[0, :, 0] / real_space[0, 0, 0] == pytest.approx(sampled / sampled[0], abs=2e-3)
    assert np.allclose(real_space[1:, :, :], 0, atol=1e-6)  # σ 0: no blur along the rocking axis


def test_the_blurred_model_reproduces_an_independently_blurred_pattern(blurred):
    obj, sharp, pattern = blurred
    assert metrics.chi(obj, sharp) < 1e-5
    assert metrics.chi(obj, pattern) > 0.1  # a coherent model misses partially coherent data
    assert metrics.chi(obj, pattern, blur=[0, SIGMA, SIGMA]) < 2e-3
    assert metrics.chi(obj, pattern, blur=[0, 0.5 * SIGMA, 0.5 * SIGMA]) > 10 * metrics.chi(
        obj, pattern, blur=[0, SIGMA, SIGMA])


def test_the_projection_with_the_blur_keeps_the_truth_the_coherent_one_leaves(blurred):
    obj, _, pattern = blurred
    magnitude = sfft.ifftshift(np.sqrt(pattern))[None]
    support = (np.abs(obj) > 0.05 * np.abs(obj).max())[None]

    def after(blur):
        state = phasing.PhasingState(magnitude, obj[None].copy(), support, shrink_every=0)
        state.coherence = blur
        phasing.ScheduleRun("20*HIO+30*ER", 1).advance(state)
        return metrics.errors(state.obj[0], obj)["phase_unweighted"], float(state.chi[0])

    kept, chi_kept = after(coherence.kernel(obj.shape, coherence.detector_sigmas([SIGMA])))
    drifted, chi_drifted = after(None)
    assert kept < 0.02 and chi_kept < 5e-3
    assert drifted > 3 * kept and chi_drifted > 5 * chi_kept


def test_the_plan_chooses_the_blur_that_predicts_the_withheld_voxels(blurred):
    obj, sharp, pattern = blurred
    plan = dataclasses.replace(REFINE_PLAN, coherence=(0.0, SIGMA), polish_steps=10)
    start = np.abs(obj)[None].astype(np.complex64)  # the true shape, flat phase: the search is not the test
    on_blurred = converge(pattern[None], start, None, plan)
    on_sharp = converge(sharp[None], start, None, plan)
    assert on_blurred.coherence[0] == pytest.approx([0, SIGMA, SIGMA])  # σ per axis: rocking, rows, columns
    assert not on_sharp.coherence[0].any()
    assert metrics.errors(on_blurred.obj[0], obj)["phase_unweighted"] < 0.1


@pytest.mark.parametrize("sigma", [0.0, 1.0])
def test_gradient_through_the_blur_matches_finite_differences(sigma):
    rng = np.random.default_rng(1)
    re, im = (rng.normal(size=(1, 6, 6, 6)) for _ in range(2))
    magnitude = np.abs(np.fft.fftn(rng.normal(size=(1, 6, 6, 6)), axes=(1, 2, 3)))
    ones = np.ones_like(re)
    full = coherence.kernel((6, 6, 6), coherence.detector_sigmas([sigma]), half=False).astype(np.float64)
    blur = (full, full.mean(axis=(1, 2, 3), keepdims=True))
    params = [tf.Variable(re), tf.Variable(im)]
    with tf.GradientTape() as tape:
        value, _ = gaussian_loss(params, tf.constant(magnitude), tf.constant(ones), tf.constant(ones), 0.0,
                                 *map(tf.constant, blur))
    grads = [g.numpy() for g in tape.gradient(value, params)]
    h = 1e-6
    for which, index in [(0, (0, 1, 2, 3)), (1, (0, 4, 0, 5))]:
        plus, minus = [re.copy(), im.copy()], [re.copy(), im.copy()]
        plus[which][index] += h
        minus[which][index] -= h
        fd = (float(gaussian_loss(plus, magnitude, ones, ones, 0.0, *blur)[0])
              - float(gaussian_loss(minus, magnitude, ones, ones, 0.0, *blur)[0])) / (2 * h)
        assert grads[which][index] == pytest.approx(fd, rel=1e-4, abs=1e-8)


def test_the_polish_fits_the_blurred_model(blurred):
    obj, _, pattern = blurred
    coherent = refine(pattern[None], obj[None], steps=5, shrink_every=0, threshold=1e-3)
    with_blur = refine(pattern[None], obj[None], steps=5, shrink_every=0, threshold=1e-3, blur_widths=[SIGMA])
    assert with_blur.chi_start[0] < 2e-3 < 0.1 < coherent.chi_start[0]  # χ is the blurred model's
    assert with_blur.chi[0] <= with_blur.chi_start[0] + 1e-7


@pytest.fixture(scope="module")
def off_width(blurred):
    """The crystal's fit to its blurred pattern at 0.6× the blur's width: where a run again's coarse widths leave it."""
    obj, _, pattern = blurred
    return converge(pattern[None], obj[None], None, dataclasses.replace(
        REFINE_PLAN, starts=("previous",), explore=(), converge="20*ER", coherence=(0.6 * SIGMA,)), warm=[obj])


WIDTHS = (0.7, 1.0, 1.3, 1.7)  # × the answer's width: 1.7 × 0.6, the true width, near


def test_a_blurred_answers_width_is_refined_to_what_the_withheld_voxels_prefer(blurred, off_width):
    """The run again's widths are a coarse grid; an answer fitted at a width that is off absorbs the difference as a
    wrong phase, and ``effort.refine_width`` refits it at scaled widths, keeping the lowest χ_free."""
    obj, _, pattern = blurred
    off = off_width
    grid = tuple(tuple(f * off.coherence[0]) for f in WIDTHS)
    refit = effort.refine_width(pattern[None], off.obj, None, REFINE_PLAN, grid)
    assert refit.coherence[0] == pytest.approx([0, 1.02 * SIGMA, 1.02 * SIGMA], abs=1e-5)
    assert refit.chi_free[0] < 0.2 * off.chi_free[0]  # 0.0125 against 0.10 here
    off_error = metrics.errors(off.obj[0], obj)["phase_unweighted"]  # 0.97 rad: a width 0.6× off, from the truth
    assert metrics.errors(refit.obj[0], obj)["phase_unweighted"] < 0.25 * off_error  # 0.16


def test_a_screened_refit_finds_the_same_width_and_only_the_fit_kept_is_polished(blurred, off_width, monkeypatch):
    """The refit's lean form: every width screened by 20*ER, the best two refitted (``effort.WIDTH_SCREEN``), the fits
    without the AD polish and the one kept polished once (``effort.polished``). It picks the whole refit's width; the
    polish lowers χ and leaves χ_free (taken before it) and the width as they were."""
    obj, _, pattern = blurred
    monkeypatch.setattr(effort, "WIDTH_SCREEN", "20*ER")
    monkeypatch.setattr(effort, "WIDTH_SCHEDULE", "100*HIO+30*ER")
    grid = tuple(tuple(f * off_width.coherence[0]) for f in WIDTHS)
    fit = effort.refine_width(pattern[None], off_width.obj, None, dataclasses.replace(REFINE_PLAN, polish_steps=0), grid)
    assert fit.coherence[0] == pytest.approx([0, 1.02 * SIGMA, 1.02 * SIGMA], abs=1e-5)
    assert metrics.errors(fit.obj[0], obj)["phase_unweighted"] < 0.25
    done = effort.polished(pattern[None], fit, None, REFINE_PLAN)
    assert done.chi[0] <= fit.chi[0]
    assert done.chi_free[0] == fit.chi_free[0] and np.array_equal(done.coherence, fit.coherence)
    assert set(done.seconds) == {"winner's polish"}


def test_deconvolution_takes_a_known_blur_out(blurred):
    """Richardson–Lucy at the blur's own width brings an independently blurred pattern back towards the sharp one (the
    fringes' contrast a search needs), and keeps the photons."""
    _, sharp, pattern = blurred
    deblurred = coherence.deconvolve(pattern, [0, SIGMA, SIGMA])

    def off(x):
        return np.linalg.norm(np.sqrt(x) - np.sqrt(sharp)) / np.linalg.norm(np.sqrt(sharp))

    assert off(deblurred) < 0.5 * off(pattern)
    assert deblurred.sum() == pytest.approx(pattern.sum(), rel=1e-3)
    assert np.all(deblurred >= 0)


def test_a_search_on_deblurred_data_is_fitted_to_the_measured_pattern_at_its_width(blurred):
    """``effort.search_deblurred``: the run again's search on the pattern deblurred at a width, then its answer fitted
    to the measured (blurred) pattern with the blurred model at that width, judged there by χ_free."""
    obj, _, pattern = blurred
    width = np.array([0, SIGMA, SIGMA])
    fit = effort.search_deblurred(pattern[None], np.abs(obj)[None].astype(np.complex64), None, REFINE_PLAN, width)
    assert fit.coherence[0] == pytest.approx(width)
    assert fit.chi_free[0] < 0.05
    assert metrics.errors(fit.obj[0], obj)["phase_unweighted"] < 0.2  # 0.137 here; a coherent fit is ~1 rad off


def test_after_its_runs_a_blurred_answer_gets_its_width_refitted_and_a_deblurred_search(blurred, off_width,
                                                                                         monkeypatch):
    """``effort.refit_widths``: a scan that ran again keeps whichever of its answer, the refit and the
    deblurred search predicts the withheld voxels best, and says which in its start."""
    obj, _, pattern = blurred
    best = dataclasses.replace(off_width, obj=np.array(off_width.obj), support=np.array(off_width.support),
                               chi=np.array(off_width.chi), chi_free=np.array(off_width.chi_free),
                               coherence=np.array(off_width.coherence), background=np.array(off_width.background),
                               start=list(off_width.start), seconds={})
    before = float(best.chi_free[0])
    monkeypatch.setattr(effort, "WIDTH_FACTORS", (1.0, 1.7))
    monkeypatch.setattr(effort, "DEBLURRED_SEARCH", True)
    effort.refit_widths(best, [1], pattern[None], np.abs(obj)[None].astype(np.complex64), None, REFINE_PLAN)
    assert best.chi_free[0] == before  # a scan that did not run again is left as it is
    effort.refit_widths(best, [2], pattern[None], np.abs(obj)[None].astype(np.complex64), None, REFINE_PLAN)
    assert best.chi_free[0] < 0.2 * before
    assert best.coherence[0] == pytest.approx([0, 1.02 * SIGMA, 1.02 * SIGMA], abs=1e-5)
    assert "width refitted" in best.start[0] or "searched deblurred" in best.start[0]


def test_the_width_step_says_what_it_does_and_nothing_when_off(monkeypatch):
    """The evaluation's report reads the step from ``effort.describe_width_step``: as set, and "" when it is off."""
    words = effort.describe_width_step()
    assert "9 widths" in words and "deblurred" in words and "polished once" in words
    monkeypatch.setattr(effort, "WIDTH_FACTORS", ())
    monkeypatch.setattr(effort, "WIDTH_COHERENT", ())
    assert effort.describe_width_step() == ""


def test_under_a_blur_a_support_wrapped_at_a_tenth_of_the_peak_outgrows_the_crystal(blurred):
    """Why runs with a blur model have their own shrink-wrap threshold (``Plan.blur_threshold``): the textbook's
    search at the true width, from the same random starts, wrapped at 0.1 and at 0.15 of the peak."""
    obj, _, pattern = blurred
    crystal = int((np.abs(obj) > 0.1 * np.abs(obj).max()).sum())
    magnitude = np.repeat(sfft.ifftshift(np.sqrt(pattern))[None], 4, axis=0)

    def searched(threshold):
        box = phasing.box_support(magnitude.shape)
        start = box * np.exp(1j * np.random.default_rng(0).uniform(-np.pi, np.pi, box.shape))
        start *= np.sqrt((magnitude**2).sum() / ((np.abs(start)**2).sum() * magnitude[0].size))
        state = phasing.PhasingState(magnitude, start.astype(np.complex64), box.copy(), threshold=threshold,
                                     shrink_every=20)
        state.coherence = coherence.kernel(obj.shape, coherence.detector_sigmas([SIGMA] * 4))
        answers = phasing.run_schedule(state, phasing.PAPER_SCHEDULE)
        return state.support.sum(axis=(1, 2, 3)) / crystal, [metrics.errors(a, obj)["phase_unweighted"]
                                                             for a in answers]

    loose, loose_errors = searched(0.1)
    tight, tight_errors = searched(0.15)
    assert np.all(loose > 1.25) and np.all(tight < loose)
    assert np.median(tight_errors) < 0.75 * np.median(loose_errors)


def test_each_run_is_wrapped_at_the_threshold_of_its_model():
    from shared.solver.plans import wrap_thresholds

    widths = np.array([[[0, 0, 0], [0, 0.5, 0.5]], [[0, 0, 0], [0.5, 0.5, 0.5]]])  # two scans, coherent and blurred
    plan = dataclasses.replace(REFINE_PLAN, blur_threshold=0.15)
    thresholds = wrap_thresholds(widths, plan)
    assert thresholds.shape == (4, 1, 1, 1)
    assert thresholds.ravel() == pytest.approx([0.1, 0.15, 0.1, 0.15])
    assert wrap_thresholds(widths, dataclasses.replace(plan, blur_threshold=None)) == REFINE_PLAN.threshold
    assert wrap_thresholds(widths[:, :1], plan) == REFINE_PLAN.threshold  # no run blurred: one number
    state = phasing.PhasingState(np.ones((4, 4, 4, 4), np.float32), np.ones((4, 4, 4, 4), np.complex64),
                                 np.ones((4, 4, 4, 4), bool), threshold=thresholds)
    assert phasing.select(state, np.array([1, 2])).threshold.ravel() == pytest.approx([0.15, 0.1])


def test_a_blur_replaces_a_coherent_answer_only_by_more_than_its_margin(monkeypatch):
    """``effort.predicts_better``: a lower χ_free wins, except that a blurred fit must beat a coherent answer by more
    than ``BLUR_MARGIN`` (one parameter more, and the least of several widths' χ_free is biased low)."""
    from shared.solver.plans import Converged

    def answers(chi_free, blurs):
        n = len(chi_free)
        return Converged(obj=np.zeros((n, 2, 2, 2), np.complex64), support=np.ones((n, 2, 2, 2), bool),
                         chi=np.zeros(n), start=["flat"] * n, chi_free=np.array(chi_free),
                         coherence=np.array([[0.0, b, b] for b in blurs]))

    best = answers([0.100, 0.100], [0.0, 0.5])  # a coherent answer and a blurred one
    found = answers([0.097, 0.090, 0.097], [0.3, 0.3, 0.0])  # 3 % and 10 % lower, blurred; 3 % lower, coherent
    monkeypatch.setattr(effort, "BLUR_MARGIN", 0.05)
    assert [effort.predicts_better(found, j, best, 0) for j in range(3)] == [False, True, True]
    assert effort.predicts_better(found, 0, best, 1)  # blurred for blurred: any gain
    monkeypatch.setattr(effort, "BLUR_MARGIN", 0.0)
    assert effort.predicts_better(found, 0, best, 0)  # no margin: any gain
