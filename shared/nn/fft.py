"""Differentiable 3D FFT magnitude in keras.ops, so the physics loss runs on every backend.

keras.ops offers 1D and 2D FFTs; a 3D FFT is a 2D FFT over the last two axes
followed by a 1D FFT over the first spatial axis (moved last and back).
"""

from __future__ import annotations

from keras import ops


def fft3(real, imag):
    """3D FFT over axes 1–3 of (batch, n, n, n) tensors given as real and imaginary parts."""
    real, imag = ops.fft2((real, imag))
    real, imag = ops.transpose(real, (0, 2, 3, 1)), ops.transpose(imag, (0, 2, 3, 1))
    real, imag = ops.fft((real, imag))
    return ops.transpose(real, (0, 3, 1, 2)), ops.transpose(imag, (0, 3, 1, 2))


def ifft3(real, imag):
    """Inverse 3D FFT over axes 1–3 (keras.ops has no 1D inverse): conj(FFT(conj(x))) / N."""
    real, imag = fft3(real, -imag)
    count = real.shape[1] * real.shape[2] * real.shape[3]
    return real / count, -imag / count


def blurred_power(real, imag, kernel, centre):
    """|F|² convolved with a blur given by its Fourier multiplier ``kernel`` (full layout) on the periodic grid,
    held to at least ``centre`` (the blur's central weight) times |F|² as ``shared.physics.phasing`` does."""
    power = real * real + imag * imag
    spectrum_r, spectrum_i = fft3(power, ops.zeros_like(power))
    blurred, _ = ifft3(spectrum_r * kernel, spectrum_i * kernel)
    return ops.maximum(blurred, centre * power)


def fftshift3(x):
    """fftshift over axes 1–3 (q = 0 to index n//2, matching measured data)."""
    for axis in (1, 2, 3):
        x = ops.roll(x, x.shape[axis] // 2, axis=axis)
    return x


def point_inversion(x):
    """x(−r) for (batch, n, n, n, …) tensors on an fftshift grid (centre at index n//2): flip, roll by one.

    In real space it maps a crystal onto its twin's position; in reciprocal space it
    pairs each q with its Friedel mate −q.
    """
    for axis in (1, 2, 3):
        x = ops.roll(ops.flip(x, axis=axis), 1, axis=axis)
    return x


def far_field_magnitude(amplitude, phase):
    """|fftshift(fftn(amplitude·e^{i·phase}))| for (batch, n, n, n) float tensors."""
    real, imag = fft3(amplitude * ops.cos(phase), amplitude * ops.sin(phase))
    return fftshift3(ops.sqrt(real * real + imag * imag + 1e-12))
