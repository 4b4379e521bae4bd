"""Partial coherence and a flat background: the measured intensity is the coherent one, |F|², blurred by a
Gaussian, plus a constant.

Partially coherent illumination and the detector's point spread both blur the diffraction pattern; a
coherent model fits such data only by distorting the object. Following Clark et al. (2012, PCDI; cohere's
``pcdi``, PyNX's ``psf``) the model is I = |F|² ⊛ G_σ, with σ (voxels) per axis. The blur is a convolution
on the periodic grid, so it is the same in the centred and the unshifted frame.

A flat background b (photons per voxel: scattering by air and the substrate, the detector's dark counts) adds to
every voxel: I = |F|² ⊛ G_σ + b. It is fitted by expectation–maximisation, the Poisson likelihood's
fixed point for b with the rest of the model held (Richardson–Lucy's update for a constant):
b ← b · mean(I / (|F|² ⊛ G + b)), which stays positive and, with no background in the data, decays.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft
from scipy import ndimage

AXES = (1, 2, 3)


def detector_sigmas(widths) -> np.ndarray:
    """(B, 3) σ per axis from one width per run on the detector axes (none along the rocking curve: the
    angular steps are not blurred by the beam's transverse coherence or the detector)."""
    widths = np.asarray(widths, np.float32).ravel()
    return np.stack([np.zeros_like(widths), widths, widths], axis=1)


def sigmas_of(entry) -> np.ndarray:
    """σ per axis (rocking, rows, columns) of one blur a plan tries: a number is a width on the detector axes alone
    (the detector's point spread), three numbers a blur of every axis (partial coherence is a property of the beam
    in the sample's frame: it blurs the rocking direction too)."""
    values = np.atleast_1d(np.asarray(entry, np.float32))
    return detector_sigmas(values)[0] if values.size == 1 else values.reshape(3)


def blur_name(entry) -> str:
    """A plan's blur as written: 0.5 (the detector axes), 0.5×0.5×0.5 (rocking, rows, columns)."""
    return "×".join(f"{x:g}" for x in np.atleast_1d(entry))


def kernel(shape, sigmas, half: bool = True) -> np.ndarray:
    """Per run (rows of ``sigmas``, (B, 3)), the Fourier multiplier of the blur for an rfftn (``half``) or
    fftn over the last three axes of a batch of volumes of ``shape``: the transform of a sampled Gaussian of
    unit sum on the periodic grid, as a detector's point spread or a real-space kernel array (cohere, PyNX) is."""
    sigmas = np.asarray(sigmas, np.float64).reshape(-1, 3)
    out = []
    for row in sigmas:
        factors = []
        for axis, (n, sigma) in enumerate(zip(shape, row)):
            distance = np.minimum(np.arange(n), n - np.arange(n))
            sampled = np.exp(-distance**2 / (2 * sigma**2)) if sigma > 0 else (distance == 0).astype(np.float64)
            spectrum = np.fft.fft(sampled / sampled.sum()).real
            factors.append(spectrum[: n // 2 + 1] if half and axis == 2 else spectrum)
        out.append(np.einsum("i,j,k->ijk", *factors))
    return np.stack(out).astype(np.float32)


def of(shape, sigmas) -> np.ndarray | None:
    """The rfftn multiplier of ``kernel`` for blurs σ per axis (one row per run), or None where no run has one
    (the coherent model: nothing to compute)."""
    return kernel(shape, sigmas) if sigmas is not None and np.any(sigmas) else None


def centre(multiplier, last: int, xp=np):
    """Per run, the real-space blur's weight at its centre: the mean of its full spectrum (rfft layout: the
    columns between 0 and the Nyquist one stand for two). ``xp``: the multiplier's array module."""
    weights = xp.full(multiplier.shape[-1], 2.0, dtype=xp.float32)
    weights[0] = 1.0
    if last % 2 == 0:
        weights[-1] = 1.0
    return (multiplier * weights).sum(axis=AXES) / (multiplier.shape[1] * multiplier.shape[2] * last)


def modulus(field, multiplier, xp=np, fft=sfft, background=None):
    """The modulus the model predicts from far fields (B, …): |F|, or with a blur √(|F|² ⊛ G), and with a flat
    ``background`` (per run, (B,), intensity units) √(… + b). ``xp``, ``fft``: the array and FFT modules (NumPy
    and scipy.fft, or CuPy's).

    A blur keeps at least its central weight of each voxel's own intensity; holding it to that bound keeps
    the projection F·M/√(|F|² ⊛ G) within M/√centre where float32 rounding leaves faint wings near zero."""
    if multiplier is None and background is None:
        return xp.abs(field)
    intensity = field.real**2 + field.imag**2
    if multiplier is not None:
        blurred = convolve(intensity, multiplier, fft)
        floor = intensity * centre(multiplier, intensity.shape[-1], xp)[:, None, None, None]
        intensity = xp.maximum(blurred, floor, out=blurred)
    if background is not None:
        intensity += xp.asarray(background, dtype=intensity.dtype).reshape(-1, 1, 1, 1)
    return xp.sqrt(intensity).astype(xp.float32, copy=False)


def convolve(intensity, multiplier, fft=sfft):
    """Intensities (B, …) ⊛ the blur whose rfftn multiplier is ``multiplier`` (periodic, through the FFT)."""
    workers = {"workers": -1} if fft is sfft else {}
    return fft.irfftn(fft.rfftn(intensity, axes=AXES, **workers) * multiplier, s=intensity.shape[1:], axes=AXES,
                      **workers)


def deconvolve(intensity: np.ndarray, sigmas, iterations: int = 100) -> np.ndarray:
    """One measured intensity (…, centred or not: the blur is periodic) with the blur of σ per axis taken out:
    Richardson–Lucy, the Poisson likelihood's fixed point u ← u · G ⊛ (I / (G ⊛ u)) (G is symmetric). A search on
    deblurred data sees the fringes' contrast a blurred model hides from it; the answer is then fitted to the measured
    data with the blurred model."""
    data = np.clip(np.asarray(intensity, np.float64), 0, None)
    multiplier = kernel(data.shape, np.asarray(sigmas, np.float64).reshape(1, 3))[0]

    def blur(x):
        return sfft.irfftn(sfft.rfftn(x) * multiplier, s=data.shape)

    estimate = data + 1e-6
    for _ in range(iterations):
        estimate *= blur(data / np.maximum(blur(estimate), 1e-9))
    return estimate.astype(np.float32)


def faint_voxels(intensity, fit=None):
    """Per run (B, …), the fitted voxels at or below the run's median intensity, smoothed by 2 voxels so that
    the choice does not pick the low draws of the noise (which would bias the background low): where a
    background, if any, outweighs the crystal's signal. The background is fitted there alone, so that it cannot
    absorb the misfit of the crystal's own bright voxels (a model that misses the peak's wings is no background)."""
    smooth = ndimage.gaussian_filter(np.asarray(intensity, np.float32), (0, 2, 2, 2), mode="wrap")
    values = smooth if fit is None else np.where(fit, smooth, np.nan)
    median = np.nanmedian(values.reshape(len(values), -1), axis=1).reshape(-1, 1, 1, 1)
    return values <= median


def background_start(intensity, faint):
    """Per run, a first flat background: the mean intensity of its ``faint`` voxels. It only starts the fit (EM
    moves it from there, and from a positive start: EM keeps a zero at zero)."""
    mean = (intensity * faint).sum(axis=AXES) / np.maximum(faint.sum(axis=AXES), 1)
    return np.maximum(mean, 1e-6 * intensity.mean(axis=AXES) + 1e-30).astype(np.float32)


def background_update(background, ratio_squared, fit=None):
    """One EM step of the flat background from I / (model intensity) per voxel (B, …), over the ``fit`` voxels
    (``faint_voxels``)."""
    if fit is None:
        mean = ratio_squared.mean(axis=AXES)
    else:
        mean = (ratio_squared * fit).sum(axis=AXES) / np.maximum(fit.sum(axis=AXES), 1)
    return (background * mean).astype(np.float32)


def on_grid(sigmas, from_shape, to_shape) -> np.ndarray:
    """σ per axis in the voxels of another grid of the same region (a DCT-downsampled one, or the input's)."""
    return np.asarray(sigmas, np.float64) * np.asarray(to_shape, np.float64) / np.asarray(from_shape, np.float64)
