"""Detector pixels that are not photon counts, and what every step does with them.

DECTRIS detectors (Eiger, Pilatus) with their pixel mask applied flag module gaps and
dead pixels with the dtype's maximum (2³²−1, 65535); a pixel at or above the detector's
``saturation_value`` is not a count either. A pixel mask (non-zero = bad, as DECTRIS
sends it) marks the rest. Invalid pixels are never data:

    raw file     the frames as sent, the mask beside them (``pixel_mask``), and the detector's
                 ``dark`` and ``flat_field`` when configured: (N − dark)·flat is what every later
                 step reads; a pixel of zero gain is masked
    peak, crop,  invalid voxels inpainted from valid neighbours (normalised Gaussian
    oversampling, convolution, widening until every hole is filled), so nothing
    DCT, network downstream sees a flag or a hole's edge as signal
    refinement   invalid voxels free (``measured`` False): the model is not pulled to them

Pure functions on arrays.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shared.physics.inpainting import inpaint  # noqa: F401  (every step's fill of the holes: one implementation)

PEAK_NEIGHBOURHOOD = 2  # voxels each side of the Bragg peak looked at for "peak on a gap"
PEAK_FLAG_FRACTION = 0.2  # that neighbourhood's invalid fraction above which a scan is flagged


def flag_value(dtype) -> float | None:
    """The value a detector writes into a pixel that holds no count: the integer dtype's maximum."""
    dtype = np.dtype(dtype)
    return float(np.iinfo(dtype).max) if dtype.kind in "ui" else None


def invalid(frames: np.ndarray, dtype=None, saturation: float | None = None,
            pixel_mask: np.ndarray | None = None) -> np.ndarray:
    """True where a pixel of ``frames`` (…, H, W) is not a photon count.

    ``dtype``: the frames' dtype as sent (default: their own); ``pixel_mask`` (H, W), non-zero = bad."""
    frames = np.asarray(frames)
    flag = flag_value(dtype or frames.dtype)
    bad = np.zeros(frames.shape, bool)
    if flag is not None:
        bad |= frames >= flag
    if saturation is not None:
        bad |= frames >= saturation
    if pixel_mask is not None:
        bad |= np.asarray(pixel_mask) != 0
    return bad


WHITEFIELD_CUT = 3.0  # σ below a whitefield's mean: a pixel that dim is dead or lies on a chip seam (34-ID-C's rule)


def flat_from_whitefield(whitefield: np.ndarray) -> np.ndarray:
    """The flat field (per-pixel gain, multiplied; 0 = masked) of a whitefield: a flood-field image, counts per
    pixel under uniform illumination, as APS 34-ID-C keeps one per detector. Its gain is mean/whitefield (the
    corrected counts keep the detector's mean scale); a pixel more than WHITEFIELD_CUT σ below the mean is
    masked, as cohere's 34-ID-C preprocessing kills it."""
    white = np.asarray(whitefield, np.float64)
    good = white > white.mean() - WHITEFIELD_CUT * white.std()
    good &= white > 0
    return np.where(good, white[good].mean() / np.where(good, white, 1.0), 0.0).astype(np.float32)


CALIBRATIONS = Path(__file__).resolve().parents[2] / "deploy" / "calibration"  # one folder per detector area
SCAN54_DETECTOR = "aps-34idc-tim2"  # APS 34-ID-C's Timepix where scan 54's 256² frames sit (its README says how cut)


def shipped_calibration(name: str = SCAN54_DETECTOR) -> tuple[np.ndarray, np.ndarray] | None:
    """(flat field, pixels that hold counts) of a detector calibration shipped in ``deploy/calibration/NAME``
    (``whitefield.npy``, ``bad_pixels.npy``: non-zero = bad), as ``reconstruct --whitefield … --mask …`` reads
    them; None where it is not shipped."""
    folder = CALIBRATIONS / name
    if not (folder / "whitefield.npy").is_file():
        return None
    flat = flat_from_whitefield(np.load(folder / "whitefield.npy"))
    marked = folder / "bad_pixels.npy"
    bad = np.load(marked) != 0 if marked.is_file() else np.zeros(flat.shape, bool)
    return flat, (flat > 0) & ~bad


def corrected(frames: np.ndarray, dark: np.ndarray | None = None, flat: np.ndarray | None = None) -> np.ndarray:
    """Frames after the detector's dark subtraction and flat-field gain, as APS 34-ID-C preprocessing applies
    them: (N − dark)·flat, negatives clipped to 0 (float32). The result is no longer counts: the noise floor
    (``shared.solver.trust``) is computed from the frames as measured."""
    out = np.asarray(frames, np.float32)
    if dark is None and flat is None:
        return out
    if dark is not None:
        out = out - np.asarray(dark, np.float32)
    if flat is not None:
        out = out * np.asarray(flat, np.float32)
    return np.clip(out, 0, None)


def summary(mask: np.ndarray | None, source: str | None, saturated: int = 0) -> dict:
    """What a scan's record says of its mask: how many pixels, where it came from."""
    return {"masked_pixels": int(np.count_nonzero(mask)) if mask is not None else 0, "source": source,
            "saturated_pixels": int(saturated)}


def peak_flags(gaps: np.ndarray, saturated: np.ndarray | None, peak: tuple) -> list[str]:
    """Operator warnings for a scan whose Bragg peak sits on flagged or masked pixels (``gaps``: move the
    detector) or on saturated ones (attenuate). Arrays (frames, H, W) or (H, W), ``peak`` likewise."""
    box = tuple(slice(max(0, p - PEAK_NEIGHBOURHOOD), p + PEAK_NEIGHBOURHOOD + 1) for p in peak)
    flags = []
    if gaps[box].mean() > PEAK_FLAG_FRACTION:
        flags.append("peak on a gap")
    if saturated is not None and saturated[box].any():
        flags.append("saturated peak")
    return flags


WINDOW_PX = 512  # detector pixels per axis that refinement reads around the signal (larger detectors)


def signal_window(shape, roi: dict | None, limit: int = WINDOW_PX) -> tuple[slice, slice]:
    """The part of a detector of ``shape`` (rows, columns) that the refinement reads: all of it up to
    ``limit`` per axis; on a larger one (4–16 Mpixel), ``limit`` pixels centred on the region of interest
    the ingest placed around the Bragg peak (``roi``: {"corner", "shape"}), so a 9-Mpixel scan costs what
    the same signal on a small detector does."""
    out = []
    for n, corner, size in zip(shape, (roi or {}).get("corner", (None, None)), (roi or {}).get("shape", (0, 0))):
        if n <= limit or corner is None:
            out.append(slice(0, n))
            continue
        first = int(np.clip(corner + size // 2 - limit // 2, 0, n - limit))
        out.append(slice(first, first + limit))
    return out[0], out[1]


def window_shift(shape, window: tuple[slice, slice]) -> list[int]:
    """(frames, rows, columns) from the window's centre to the detector's: an offset from the centre of the
    window's volume plus this is the offset from the centre of the whole detector's."""
    return [0, *(w.start + (w.stop - w.start) // 2 - n // 2 for n, w in zip(shape, window))]
