"""What the operators' page draws: an amplitude isosurface coloured by phase, and central slices."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.measure import marching_cubes


def isosurface(amplitude: np.ndarray, phase: np.ndarray, level: float) -> dict:
    """Triangle mesh of amplitude = level·max, with the phase at each vertex (for plotly's mesh3d)."""
    scaled = amplitude / (float(amplitude.max()) or 1.0)
    if scaled.max() <= level or scaled.min() >= level:
        return {"x": [], "y": [], "z": [], "i": [], "j": [], "k": [], "phase": []}
    vertices, faces, _, _ = marching_cubes(scaled, level)
    # Phase sampled through its complex exponential: interpolation must not cross a 2π wrap.
    coords = vertices.T
    re = ndimage.map_coordinates(np.cos(phase), coords, order=1)
    im = ndimage.map_coordinates(np.sin(phase), coords, order=1)
    x, y, z = (np.round(v.astype(float), 2).tolist() for v in vertices.T)
    i, j, k = (f.tolist() for f in faces.T)
    return {"x": x, "y": y, "z": z, "i": i, "j": j, "k": k, "phase": np.round(np.arctan2(im, re), 3).tolist()}


def central_slices(volume: np.ndarray, centre) -> list[list[list[float]]]:
    """The three orthogonal slices through ``centre``; NaN (outside the crystal) becomes null."""
    c = [int(round(x)) for x in centre]
    planes = (volume[c[0]], volume[:, c[1]], volume[:, :, c[2]])
    return [np.where(np.isnan(p), None, np.round(p, 3)).tolist() for p in planes]


def page_view(amplitude: np.ndarray, phase: np.ndarray, level: float = 0.5, strain: np.ndarray | None = None,
              voxel_nm=None, uncertainty: np.ndarray | None = None) -> dict:
    """Mesh and central slices; with ``strain`` (lab grid) also its slices, a symmetric range for the
    colour bar (the 99th percentile of |ε| inside the crystal) and the voxel size for a nm scale."""
    amplitude = np.asarray(amplitude, np.float32)
    phase = np.asarray(phase, np.float32)
    mass = amplitude.sum()
    centre = ndimage.center_of_mass(amplitude) if mass > 0 else [s // 2 for s in amplitude.shape]
    inside = amplitude > 0.1 * (float(amplitude.max()) or 1.0)
    view = {"shape": list(amplitude.shape), "level": level, "mesh": isosurface(amplitude, phase, level),
            "amplitude": central_slices(amplitude / (float(amplitude.max()) or 1.0), centre),
            "phase": central_slices(np.where(inside, phase, np.nan), centre)}
    if strain is not None:
        crystal = amplitude > 0.3 * (float(amplitude.max()) or 1.0)
        values = np.abs(strain[crystal])
        span = float(np.percentile(values, 99)) if values.size else 0.0
        view.update(strain=central_slices(np.where(crystal, strain * 1e4, np.nan), centre),
                    strain_range=round(max(span * 1e4, 0.1), 2), voxel_nm=float(np.asarray(voxel_nm).ravel()[0]))
    if uncertainty is not None:  # the refined stage's per-voxel phase uncertainty (rad), inside the crystal
        view["uncertainty"] = central_slices(np.where(inside, uncertainty, np.nan), centre)
        values = uncertainty[inside]
        view["uncertainty_range"] = round(max(float(np.percentile(values, 99)) if values.size else 0.0, 0.05), 2)
    return view


def detector_view(raw_file, max_side: int = 128, roi: dict | None = None) -> dict:
    """The scan's detector image (valid counts summed over its frames, log10(1 + counts)) and its mask
    (pixel mask, or flagged/saturated in any frame), binned to at most ``max_side`` per axis: what the
    page draws with the mask overlaid. On a large detector (4–16 Mpixel) only the signal's window around
    the ingest's region of interest (``roi``) is read, as the refinement reads it; ``window`` says where."""
    import h5py

    from shared.wire import detector, framefiles
    from shared.wire.messages import Start

    with h5py.File(raw_file, "r") as f, framefiles.FrameWindows(f) as stored:
        start = Start.model_validate_json(f.attrs["start"])
        window = detector.signal_window(start.shape, roi)
        shape = tuple(w.stop - w.start for w in window)
        mask = f["pixel_mask"][window] != 0 if "pixel_mask" in f else np.zeros(shape, bool)
        summed = np.zeros(shape, np.float64)
        for k in np.flatnonzero(f["received"][()]):
            frame = stored.window(k, *window)  # only the window's rows are decoded
            bad = detector.invalid(frame, start.dtype, start.saturation_value, mask)
            summed += np.where(bad, 0, frame)
            mask |= bad
    step = max(1, -(-max(shape) // max_side))
    rows, cols = (n // step * step for n in shape)
    binned = summed[:rows, :cols].reshape(rows // step, step, cols // step, step).sum(axis=(1, 3))
    masked = mask[:rows, :cols].reshape(rows // step, step, cols // step, step).mean(axis=(1, 3))
    return {"image": np.round(np.log10(1 + binned), 3).tolist(), "mask": np.round(masked, 2).tolist(), "bin": step,
            "masked_pixels": int(mask.sum()), "shape": list(shape),
            "window": {"corner": [window[0].start, window[1].start], "detector_shape": list(start.shape)}}
