"""Far-field forward model of Bragg CDI.

Conventions used everywhere in cdi-live:
- an object is a complex array rho * exp(i*phi), centred on the grid;
- its diffraction intensity is |fftshift(fftn(object))|**2, so the Bragg peak
  (q = 0) sits at index n // 2 on every axis;
- axis 0 of an intensity volume is the rocking axis: detector frames are
  ``intensity[k]``.
Arrays are float32 / complex64; FFTs run on all cores through scipy.fft.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

WORKERS = -1  # scipy.fft: use every core


def _axes(volume_ndim: int) -> tuple[int, int, int]:
    """The three spatial axes: the last three, so a leading batch axis is allowed."""
    return (volume_ndim - 3, volume_ndim - 2, volume_ndim - 1)


def far_field(obj: np.ndarray) -> np.ndarray:
    """Complex far field of an object (or batch of objects), centred with fftshift."""
    axes = _axes(obj.ndim)
    field = sfft.fftn(np.asarray(obj, dtype=np.complex64), axes=axes, workers=WORKERS)
    return sfft.fftshift(field, axes=axes)


def object_from_field(field: np.ndarray) -> np.ndarray:
    """Inverse of :func:`far_field`: the object whose centred far field is ``field``."""
    axes = _axes(field.ndim)
    unshifted = sfft.ifftshift(np.asarray(field, dtype=np.complex64), axes=axes)
    return sfft.ifftn(unshifted, axes=axes, workers=WORKERS)


def intensity(obj: np.ndarray) -> np.ndarray:
    """Diffraction intensity |fftshift(fftn(obj))|**2 as float32."""
    field = far_field(obj)
    return (field.real**2 + field.imag**2).astype(np.float32)


def make_object(amplitude: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Complex object rho * exp(i*phi) in complex64."""
    return (amplitude * np.exp(1j * np.asarray(phase, np.float32))).astype(np.complex64)


def poisson_counts(ideal: np.ndarray, photons: float, rng: np.random.Generator) -> np.ndarray:
    """Photon-counting noise: scale ``ideal`` to ``photons`` total counts and draw Poisson.

    ``photons <= 0`` means noiseless: the ideal intensity is returned unchanged.
    """
    if photons <= 0:
        return np.asarray(ideal, np.float32)
    expected = np.asarray(ideal, np.float64) * (photons / float(np.sum(ideal)))
    return rng.poisson(expected).astype(np.float32)


def detector_frames(volume: np.ndarray):
    """Yield the detector frames of a rocking scan: slices along axis 0."""
    for index in range(volume.shape[0]):
        yield index, volume[index]
