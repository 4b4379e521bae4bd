"""A fitted crystal's estimate from photon counts: a Wiener filter of its far field.

A fit to Poisson counts reproduces their noise. Where a voxel expects about a photon or fewer, the fitted field's
amplitude and phase there are mostly noise, and that noise is grain in the crystal's phase. Weighting each Fourier
component by λ/(λ + κ), λ its expected photons (the fit's own power, scaled to the counts) and κ the noise power
of a counted field in photons, keeps what the counts determine and damps what they do not: the linear estimate of
least mean-square error for signal power λ and noise power κ. Bright voxels keep their fit; starved ones lose
their grain. The filtered crystal predicts the counts a little worse (its χ rises) and the crystal a little better:
docs/BENCHMARKS.md, "Thirty-sixth session".

Pure functions on arrays; the intensity centred (``fftshift``), as ``shared.physics.metrics.chi`` reads it.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft


def expected_photons(field: np.ndarray, intensity: np.ndarray, measured: np.ndarray | None, step: float,
                     background: float = 0.0) -> np.ndarray:
    """λ per voxel (centred): the fitted crystal's far field ``field`` (centred), its power scaled so that it holds
    the measured voxels' photons less the flat ``background`` (the intensity's units, per voxel); ``step``: one
    photon's intensity."""
    power = np.abs(field).astype(np.float64) ** 2
    inside = np.ones(intensity.shape, bool) if measured is None else np.broadcast_to(measured, intensity.shape)
    signal = np.clip(np.asarray(intensity, np.float64)[inside] - background, 0, None).sum()
    return power * signal / max(power[inside].sum(), 1e-30) / step


def filtered(obj: np.ndarray, intensity: np.ndarray, measured: np.ndarray | None, step: float,
             background: float = 0.0, photons: float = 1.0) -> np.ndarray:
    """``obj`` with each far-field component weighted by λ/(λ + ``photons``) (``expected_photons``)."""
    field = sfft.fftshift(sfft.fftn(obj, workers=-1))
    lam = expected_photons(field, intensity, measured, step, background)
    return sfft.ifftn(sfft.ifftshift(field * (lam / (lam + photons))), workers=-1).astype(obj.dtype)
