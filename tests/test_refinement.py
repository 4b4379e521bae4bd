"""AD refinement: gradients, convergence to the truth, never worse than its start."""

import numpy as np
import pytest
import scipy.ndimage as ndi
import tensorflow as tf

from shared.physics.errors import InputError
from shared.physics import crystals, fourier, metrics, phasing
from shared.solver.refinement import gaussian_loss, poisson_loss, refine


@pytest.mark.parametrize("loss_fn", [gaussian_loss, poisson_loss])
@pytest.mark.parametrize("flat", [0.0, 0.3])
def test_gradient_matches_finite_differences(loss_fn, flat):
    """Through the forward model, with and without a flat background added to the computed intensity."""
    rng = np.random.default_rng(0)
    re = rng.normal(size=(1, 6, 6, 6)).astype(np.float64)
    im = rng.normal(size=(1, 6, 6, 6)).astype(np.float64)
    magnitude = np.abs(np.fft.fftn(rng.normal(size=(1, 6, 6, 6)), axes=(1, 2, 3)))
    support = np.ones_like(re)
    background = np.full((1, 1, 1, 1), flat)
    params = [tf.Variable(re), tf.Variable(im)]
    with tf.GradientTape() as tape:
        value, _ = loss_fn(params, tf.constant(magnitude), tf.constant(support), tf.constant(support),
                           tf.constant(background))
    grads = [g.numpy() for g in tape.gradient(value, params)]
    h = 1e-6
    for which, index in [(0, (0, 1, 2, 3)), (1, (0, 4, 0, 5)), (0, (0, 0, 0, 0))]:
        plus = [re.copy(), im.copy()]
        minus = [re.copy(), im.copy()]
        plus[which][index] += h
        minus[which][index] -= h
        fd = (float(loss_fn(plus, magnitude, support, support, background)[0])
              - float(loss_fn(minus, magnitude, support, support, background)[0])) / (2 * h)
        assert grads[which][index] == pytest.approx(fd, rel=1e-4, abs=1e-8)


@pytest.fixture(scope="module")
def perturbed():
    rng = np.random.default_rng(4)
    truth, intensity = [], []
    for _ in range(2):
        amp, phase, _ = crystals.random_crystal(32, rng, max_strain=3e-3)
        obj = fourier.make_object(amp, phase)
        truth.append(obj), intensity.append(fourier.intensity(obj))
    start = np.stack([ndi.gaussian_filter(np.abs(o), 1.0) * np.exp(0.5j * np.angle(o)) for o in truth])
    return np.stack(truth), np.stack(intensity), start.astype(np.complex64)


def test_refinement_returns_to_the_truth(perturbed):
    truth, intensity, start = perturbed
    result = refine(intensity, start, steps=200)
    assert np.all(result.chi < 0.3 * result.chi_start)
    for obj, true, begin in zip(result.obj, truth, start):
        before, after = metrics.errors(begin, true), metrics.errors(obj, true)
        assert after["amplitude"] < 0.5 * before["amplitude"]
        assert after["phase"] < 0.06


def test_never_raises_chi(perturbed):
    truth, intensity, _ = perturbed
    result = refine(intensity, truth, steps=20, learning_rate=5.0)  # absurd step size
    assert np.all(result.chi <= result.chi_start + 1e-7)
    assert np.all(result.chi < 1e-3)


def test_stops_on_time_budget(perturbed):
    _, intensity, start = perturbed
    result = refine(intensity, start, steps=100000, time_budget=0.5)
    assert result.steps < 100000 and result.seconds < 5


def test_er_hio_can_start_from_a_prediction(perturbed):
    truth, intensity, start = perturbed
    objects, _, chi = phasing.phase_retrieve(intensity, "50*ER", start=start)
    assert np.all(chi < phasing.project_chi(start, np.fft.ifftshift(np.sqrt(intensity), axes=(1, 2, 3))))


@pytest.mark.parametrize("kwargs", [{"loss": "laplace"}, {"learning_rate": -1}, {"steps": -1}, {"time_budget": 0}])
def test_bad_options(perturbed, kwargs):
    _, intensity, start = perturbed
    with pytest.raises(InputError):
        refine(intensity, start, **kwargs)
    with pytest.raises(InputError):
        refine(intensity[:1], start)


def test_warm_up_builds_the_steps_a_scan_then_uses(perturbed):
    """A worker warms up at start, so the first live scan builds no step of its own (a build cannot yield)."""
    from shared.solver import refinement

    _, intensity, start = perturbed
    refinement.warm_up(shape=intensity.shape[1:], batches=(len(intensity),))
    built = dict(refinement._ENGINES)
    refine(intensity, start, steps=3)
    refine(intensity, start, steps=3, blur_widths=np.full(len(intensity), 0.7, np.float32))
    assert refinement._ENGINES == built
