"""FFTW where it was measured faster (shared.physics.fftw), scipy's FFT everywhere else, the same answers."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft as sfft

from shared.physics import fftw

fftw.install()

AXES = (1, 2, 3)


def test_the_rule_takes_small_power_of_two_single_precision_transforms_only():
    assert fftw.takes("fftn", np.zeros((8, 32, 32, 32), np.complex64), None, AXES)
    assert fftw.takes("rfftn", np.zeros((2, 128, 128, 128), np.float32), None, AXES)
    assert fftw.takes("irfftn", np.zeros((2, 32, 32, 17), np.complex64), None, AXES)  # real output 32
    assert not fftw.takes("fftn", np.zeros((201, 256, 220), np.complex64))  # detector-size: scipy was faster
    assert not fftw.takes("fftn", np.zeros((4, 256, 256, 256), np.complex64), None, AXES)  # beyond what was measured
    assert not fftw.takes("fftn", np.zeros((8, 32, 32, 32), np.complex128), None, AXES)  # double precision
    assert not fftw.takes("fftn", np.zeros((8, 32, 32, 48), np.complex64), None, AXES)


@pytest.mark.skipif(fftw.pyfftw is None, reason="pyFFTW not installed")
def test_transforms_through_the_backend_equal_numpys():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((3, 32, 32, 32)) + 1j * rng.standard_normal((3, 32, 32, 32))).astype(np.complex64)
    r = rng.standard_normal((3, 32, 32, 32)).astype(np.float32)
    forward = sfft.fftn(x, axes=AXES, workers=-1)
    assert forward.dtype == np.complex64
    np.testing.assert_allclose(forward, np.fft.fftn(x, axes=AXES), rtol=0, atol=2e-6 * np.abs(forward).max())
    np.testing.assert_allclose(sfft.ifftn(forward, axes=AXES, workers=-1, overwrite_x=True), x, atol=2e-6)
    half = sfft.rfftn(r, axes=AXES, workers=-1)
    np.testing.assert_allclose(half, np.fft.rfftn(r, axes=AXES), atol=2e-6 * np.abs(half).max())
    back = sfft.irfftn(half, s=r.shape[1:], axes=AXES, workers=-1)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, r, atol=2e-6)
    odd = (rng.standard_normal((5, 6, 7)) + 0j).astype(np.complex64)  # declined: scipy's own answers
    np.testing.assert_allclose(sfft.fftn(odd), np.fft.fftn(odd), atol=1e-4)
