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


def test_empty_voxels_are_a_shape_error_not_a_phase_error(crystal):
    """Voxels the estimate leaves empty have no phase: they count in the amplitude error only."""
    obj, _ = crystal
    holes = np.random.default_rng(5).random(obj.shape) < 0.1
    holed = np.where(holes, 0, obj)
    e = metrics.errors(holed, obj)
    assert e["amplitude"] > 0.1
    assert e["phase"] < 0.25 * e["phase_unweighted"]
    wrong_inside = holed * np.exp(0.5j * (np.indices(obj.shape)[0] % 2))
    assert metrics.errors(wrong_inside, obj)["phase"] > 0.1


def test_canonical_twin_picks_one_member_of_each_pair(crystal):
    obj, intensity = crystal
    amp, phase = np.abs(obj), np.angle(obj)
    twin = metrics.twin(obj)
    for a, p in [(amp, phase), (amp, np.zeros_like(phase))]:  # strained, and a strain-free control
        t = metrics.twin(a * np.exp(1j * p))
        first = metrics.canonical_twin(a, p)
        second = metrics.canonical_twin(np.abs(t), np.angle(t) * (np.abs(t) > 0))
        assert np.allclose(first[0], second[0], atol=1e-5) and np.allclose(first[1], second[1], atol=1e-4)
        assert metrics.handedness(*first) >= 0
    a, p = metrics.canonical_twin(np.abs(twin), np.angle(twin))
    assert np.allclose(np.abs(np.fft.fftn(a * np.exp(1j * p))) ** 2, np.fft.ifftshift(intensity), rtol=1e-3,
                       atol=1e-3 * intensity.max())


def test_the_sub_voxel_search_evaluates_the_cross_correlation_exactly():
    """The registration's trials sum the other axes out once (the DFT is separable): the values are the
    direct DFT of the cross-power spectrum at each trial shift."""
    import scipy.fft as sfft

    from shared.physics.metrics import _xcorr_along

    rng = np.random.default_rng(5)
    product = (rng.normal(size=(6, 7, 5)) + 1j * rng.normal(size=(6, 7, 5))).astype(np.complex64)
    freqs = [sfft.fftfreq(n) for n in product.shape]
    shift, offsets = np.array([0.3, -1.2, 2.05]), np.array([-0.1, 0.0, 0.25])
    grids = np.meshgrid(*freqs, indexing="ij")
    for axis in range(3):
        direct = []
        for d in offsets:
            trial = shift.copy()
            trial[axis] += d
            ramp = np.exp(2j * np.pi * sum(g * t for g, t in zip(grids, trial)))
            direct.append(float(np.real((product * ramp).sum())))
        assert np.allclose(_xcorr_along(product, freqs, shift, axis, offsets), direct, rtol=1e-5, atol=1e-4)
