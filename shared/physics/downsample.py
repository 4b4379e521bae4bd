"""Bring a measured rocking curve to the network's 32³ input, as in 3D-CDI-NN.

1. Find the Bragg peak: centre of mass of intensity (robust to hot pixels
   because the sum is dominated by the peak).
2. Crop a cube around it, as large as the data allow (ideally the whole
   measured extent, so no information is thrown away).
3. DCT-downsample: forward DCT-II, keep the low-frequency ``size``³ block,
   inverse DCT. The DCT is taken of the diffraction *magnitude*, so its
   "frequencies" are real-space (autocorrelation) distances; dropping the high
   ones discards autocorrelation lags beyond the new field of view.

What it does to the geometry (checked in tests/test_downsample.py): going from
m to n = ``size`` samples per axis keeps the reciprocal-space extent, so the
real-space voxel size is unchanged, while the reciprocal step grows by m/n.
The real-space field of view, and with it the oversampling ratio, shrink by
m/n: a 64³ crop with oversampling 4 becomes a 32³ input with oversampling 2.
The object must therefore fit inside n voxels (oversampling after ≥ 1, ≥ 2 for
phase retrieval). New sample j sits at old coordinate (j + 0.5)·m/n − 0.5, so
the Bragg peak lands half an old pixel off the centre — a tiny real-space
phase ramp, one of BCDI's harmless ambiguities.
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.fft as sfft
import scipy.ndimage as ndi

from shared.physics.errors import InputError

NETWORK_SIZE = 32


def bragg_peak(volume: np.ndarray) -> tuple[int, int, int]:
    """Integer voxel of the intensity's centre of mass (the Bragg peak)."""
    weights = np.clip(np.nan_to_num(np.asarray(volume, np.float64)), 0, None)
    if weights.sum() <= 0:
        raise InputError("intensity is zero everywhere: no Bragg peak to centre on")
    com = ndi.center_of_mass(weights)
    return tuple(int(round(c)) for c in com)


def crop_around(volume: np.ndarray, centre, shape) -> np.ndarray:
    """Box of ``shape`` centred on ``centre``, shifted inward at the edges."""
    if any(n < c for n, c in zip(volume.shape, shape)):
        raise InputError(f"volume {volume.shape} is smaller than the crop {tuple(shape)}")
    slices = []
    for c, size, n in zip(centre, shape, volume.shape):
        start = int(np.clip(c - size // 2, 0, n - size))
        slices.append(slice(start, start + size))
    return volume[tuple(slices)]


def oversampling(intensity_volume: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    """Oversampling ratio per axis, from the extent of the autocorrelation.

    The autocorrelation |IFFT(I)| spans twice the object, so the object fills
    extent/2 of the n-voxel field of view and the ratio is 2n/extent.
    """
    vol = np.fmax(np.asarray(intensity_volume, np.float32), 0)  # unmeasured (NaN) and negative voxels: nothing
    total = vol.sum(dtype=np.float64)
    if not np.isfinite(total):
        vol[np.isinf(vol)] = 0
        total = vol.sum(dtype=np.float64)
    if total <= 0:  # nothing measured here yet (a partial scan's first frames): no extent to measure
        return np.full(vol.ndim, 2.0)
    # |autocorrelation| = |FT of the intensity|: unchanged by a shift of the volume, and a real volume's is
    # centrosymmetric, so the half a real FFT gives holds it all (the ingest's final inputs: 3× faster)
    auto = np.abs(sfft.rfftn(vol, workers=-1))
    mask = auto > threshold * auto.max()
    ratios = []
    for axis, n in enumerate(vol.shape):
        line = mask.any(axis=tuple(a for a in range(vol.ndim) if a != axis))
        lags = np.zeros(n, bool)
        lags[:line.size] = line
        lags[-np.arange(line.size) % n] |= line  # the other half: lag −k holds what lag k does
        occupied = np.flatnonzero(np.fft.fftshift(lags))
        ratios.append(2.0 * n / (occupied[-1] - occupied[0] + 1))
    return np.array(ratios)


OVERSAMPLING_BOX = 128  # σ is measured on at most this many voxels per axis around the peak


def crop_shape(volume: np.ndarray, centre, size: int = NETWORK_SIZE, target: float = 2.5) -> tuple:
    """Per-axis crop that leaves an oversampling near ``target`` after downsampling.

    Oversampling does not change with cropping (the reciprocal step is kept) and
    DCT downsampling from c to ``size`` divides it by c/size, so the crop is
    c = size·σ/target, clipped to [size, what fits symmetrically around the
    peak] and made even. Since cropping keeps σ, it is measured on a box of at
    most ``OVERSAMPLING_BOX`` per axis around the peak: an FFT of 128³ instead
    of the whole detector volume (0.03 s against 0.5 s for 201×256×256).
    """
    box = crop_around(volume, centre, tuple(min(n, OVERSAMPLING_BOX) for n in volume.shape))
    sigma = oversampling(box)
    shape = []
    for s, n, c0 in zip(sigma, volume.shape, centre):
        room = max(size, 2 * min(c0, n - c0))
        c = int(np.clip(round(size * s / target), size, min(n, room)))
        shape.append(c - c % 2 if c > size else c)
    return tuple(shape)


def dct_downsample(volume: np.ndarray, size=NETWORK_SIZE, precision=np.float64) -> np.ndarray:
    """DCT → keep the low-frequency block of ``size`` (an int or one per axis) → inverse DCT.

    Orthonormal transforms are used and the result is rescaled so that mean
    values are preserved (a constant stays the same constant). ``precision``: float64 keeps faint voxels'
    counts exact next to a bright peak (a refinement's data); float32, 2.5× faster, is enough for an input
    normalised to its maximum (the network's: errors ~1e-6 of the peak).
    """
    m = volume.shape
    sizes = (size,) * volume.ndim if np.isscalar(size) else tuple(size)
    if any(s < t for s, t in zip(m, sizes)):
        raise InputError(f"volume {m} is smaller than {sizes}")
    if tuple(m) == sizes:
        return np.asarray(volume, np.float32)
    out = np.asarray(volume, precision)
    for axis, (n, t) in enumerate(zip(m, sizes)):  # the transform pair along each axis is one t × n matrix
        if n != t:
            out = np.moveaxis(np.tensordot(_dct_resampler(n, t).astype(precision, copy=False), out,
                                           axes=([1], [axis])), 0, axis)
    out *= precision(np.sqrt(np.prod([t / s for t, s in zip(sizes, m)])))
    return out.astype(np.float32)


@functools.lru_cache(maxsize=16)
def _dct_resampler(n: int, t: int) -> np.ndarray:
    """The orthonormal DCT-II of n points, its first t coefficients kept, then the inverse DCT of t points, as
    one (t, n) matrix: on the ingest's network inputs 6× faster than transforming the whole crop (only t of its
    n coefficients are wanted), and the same to float32's precision."""
    def dct_rows(points: int, kept: int) -> np.ndarray:
        k, x = np.arange(kept)[:, None], np.arange(points)[None]
        rows = np.cos(np.pi * k * (2 * x + 1) / (2 * points)) * np.sqrt(2.0 / points)
        rows[0] /= np.sqrt(2.0)
        return rows
    return dct_rows(t, t).T @ dct_rows(n, t)


def network_input(intensity_volume: np.ndarray, size: int = NETWORK_SIZE, centre=None, crop=None) -> np.ndarray:
    """Measured intensity → the network's input: magnitude, cropped, downsampled, max 1.

    A volume already of the network's size passes through unchanged but for
    the square root and normalisation. ``centre`` overrides the peak search — a
    scan still being acquired is centred on the middle of its rocking curve, so
    missing frames stay at the end, as in training. ``crop`` passes a crop shape
    already computed by :func:`crop_shape` for this volume and centre.

    The magnitude (sqrt of intensity) is downsampled, as in the paper's code.
    Negative values from DCT ringing are clipped to zero.
    """
    vol = np.asarray(intensity_volume, np.float32)
    if vol.ndim != 3 or min(vol.shape) < size:
        raise InputError(f"need a 3D intensity of at least {size} per axis, got {vol.shape}")
    centre = bragg_peak(vol) if centre is None else tuple(int(c) for c in centre)
    cropped = crop_around(vol, centre, crop or crop_shape(vol, centre, size))
    magnitude = np.sqrt(np.maximum(cropped, 0))
    small = np.maximum(dct_downsample(magnitude, size, np.float32), 0)
    peak = small.max()
    return small / peak if peak > 0 else small


def to_input_grid(amplitude, phase, crop_shape, input_shape, threshold: float = 0.1, window=None):
    """Put a 32³ result (crop voxel size, 32-voxel view) onto the input's real-space grid.

    The crop's real-space grid has c voxels of the same size, so the result is
    centred in c voxels of zeros; the input's grid is finer by n/c per axis, so
    the complex object is then interpolated (linear, real and imaginary parts).
    ``window`` (a shape): only the central part of the input's grid of that shape
    is computed (what a refinement on a smaller grid starts from: seconds saved
    on a full detector-size scan).
    """
    obj = amplitude * np.exp(1j * phase)
    padded = np.zeros(crop_shape, np.complex64)
    starts = [(c - s) // 2 for c, s in zip(crop_shape, obj.shape)]
    padded[tuple(slice(st, st + s) for st, s in zip(starts, obj.shape))] = obj[
        tuple(slice(0, min(s, c)) for s, c in zip(obj.shape, crop_shape))]
    window = tuple(input_shape if window is None else window)
    first = [(n - w) // 2 for n, w in zip(input_shape, window)]
    # output voxel j of the window is input-grid voxel i = j + first, at crop coordinate (i + ½)·c/n − ½
    scale = [c / n for n, c in zip(input_shape, crop_shape)]
    offset = [(f + 0.5) * s - 0.5 for f, s in zip(first, scale)]
    real, imag = (ndi.affine_transform(part, scale, offset, output_shape=window, order=1, mode="grid-constant")
                  for part in (padded.real, padded.imag))
    fine = real + 1j * imag
    amp = np.abs(fine)
    amp /= max(amp.max(), 1e-30)
    support = amp > threshold
    return amp.astype(np.float32), (np.angle(fine) * support).astype(np.float32), support


def measured_frames(frames_total: int, frames_used: int, crop_frames: int, size: int = NETWORK_SIZE) -> np.ndarray:
    """Which of the ``size`` network-grid samples along the rocking axis rest on frames already taken.

    The crop along the frames is centred on the middle of the whole rocking curve
    (as ``services.ingest.assembly`` takes it) and frames arrive in order, so the
    samples past the last frame taken are not measured yet: free, not zero.
    """
    total = max(frames_total, size)
    first = int(np.clip(total // 2 - crop_frames // 2, 0, total - crop_frames))
    old = (np.arange(size) + 0.5) * crop_frames / size - 0.5  # each sample's position in the crop
    return old + first <= frames_used - 1
