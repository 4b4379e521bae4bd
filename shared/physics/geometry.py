"""Detector-to-lab geometry of a Bragg rocking scan: reciprocal steps, voxel vectors, lab-frame maps.

Convention (APS 34-ID-C, as in cohere-beamlines and xrayutilities): lab z along the
incident beam, y vertical up, x = y × z. The detector arm is R₊y(δ)·R₋x(γ) (δ outer,
γ inner); at δ = γ = 0 the detector sits on the beam at distance D, its columns along
+x and its rows along −y (first row on top). The sample rocks about the first
(outermost) sample circle: frame k is taken at θ₀ + k·Δθ. A scan's array axes are
(frames, rows, cols).

The reciprocal step per frame, row and column is the change of Q = k(k̂_f − ẑ) in the
sample frame, taken at the Bragg peak by xrayutilities' ``QConversion`` (the library
cohere uses) with the rocking angle counted from the peak's frame, so the sample frame
there is the lab frame. With B the three steps as columns, the real-space voxel vectors
are the columns of A = 2π(B⁻¹)ᵀ·diag(1/N): the grid conjugate to the measured one,
sheared in the lab. Another beamline is one more entry in ``DIFFRACTOMETERS``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.ndimage as ndi

from shared.errors import InputError

HC_KEV_NM = 1.239841984


@dataclass(frozen=True)
class Diffractometer:
    sample_circles: tuple  # outermost first; the first one rocks
    detector_circles: tuple  # outermost first
    beam: tuple  # incident beam direction
    pixel_directions: tuple  # lab direction of increasing (row, column) at zero detector angles


DIFFRACTOMETERS = {
    "34idc": Diffractometer(("y+", "z-", "y+"), ("y+", "x-"), (0, 0, 1), ("y-", "x+")),
}
REQUIRED = ("energy_kev", "distance_m", "pixel_m", "rocking_step_deg", "delta_deg", "gamma_deg")


def check(geometry: dict) -> dict:
    """The geometry as a dict, or one clear error naming the first missing or impossible field."""
    if not geometry:
        raise InputError("geometry is missing")
    geometry = dict(geometry)
    for name in REQUIRED:
        if geometry.get(name) is None:
            raise InputError(f"geometry lacks {name}")
    for name in ("energy_kev", "distance_m", "pixel_m", "rocking_step_deg"):
        if not float(geometry[name]) > 0:
            raise InputError(f"geometry: {name} must be positive, got {geometry[name]}")
    if float(geometry["delta_deg"]) == 0 and float(geometry["gamma_deg"]) == 0:
        raise InputError("geometry: delta_deg and gamma_deg are both 0, the detector on the direct beam: no Bragg peak")
    beamline = geometry.get("beamline", "34idc")
    if beamline not in DIFFRACTOMETERS:
        raise InputError(f"geometry: unknown beamline {beamline!r}; known: {', '.join(DIFFRACTOMETERS)}")
    return geometry


def reciprocal_steps(geometry: dict, shape, peak=None) -> tuple[np.ndarray, np.ndarray]:
    """(B, Q at the peak): B's columns are the Q steps (rad/nm, lab frame) per frame, row and column
    at voxel ``peak`` (default: the array centre) of a scan of ``shape``; Q is the peak's (rad/nm)."""
    import xrayutilities as xu

    g = check(geometry)
    setup = DIFFRACTOMETERS[g.get("beamline", "34idc")]
    frames, rows, cols = (int(n) for n in shape)
    frame, row, col = (int(p) for p in (peak if peak is not None else (frames // 2, rows // 2, cols // 2)))
    roi_row, roi_col = g.get("detector_roi") or (0, 0)  # the frames' first pixel on the whole detector
    full_rows, full_cols = g.get("detector_shape") or (rows + roi_row, cols + roi_col)
    centre_row, centre_col = g.get("beam_center_px") or (full_rows / 2, full_cols / 2)  # on the arm's axis
    convert = xu.experiment.QConversion(setup.sample_circles, setup.detector_circles, setup.beam,
                                        en=1000 * float(g["energy_kev"]))
    convert.init_area(*setup.pixel_directions, cch1=centre_row - roi_row, cch2=centre_col - roi_col,
                      Nch1=rows, Nch2=cols, distance=float(g["distance_m"]), pwidth1=float(g["pixel_m"]),
                      pwidth2=float(g["pixel_m"]))
    rocking = np.array([0.0, float(g["rocking_step_deg"])])  # from the peak's frame, one step on
    zeros = np.zeros(2)
    inner = [zeros] * (len(setup.sample_circles) - 1)  # inner circles only orient the crystal
    detector = [np.full(2, float(g["delta_deg"])), np.full(2, float(g["gamma_deg"]))]
    q = np.stack(convert.area(rocking, *inner, *detector, deg=True), axis=-1) * 10.0  # 1/Å → 1/nm
    row, col = min(row, rows - 2), min(col, cols - 2)
    steps = [q[1, row, col] - q[0, row, col], q[0, row + 1, col] - q[0, row, col], q[0, row, col + 1] - q[0, row, col]]
    return np.stack(steps, axis=1), q[0, row, col]


def voxel_matrix(steps: np.ndarray, shape) -> np.ndarray:
    """Real-space voxel vectors (nm) as columns, per array axis: A = 2π(B⁻¹)ᵀ·diag(1/N)."""
    return 2 * np.pi * np.linalg.inv(steps).T / np.asarray(shape, float)


def bragg_direction(q_peak: np.ndarray) -> tuple[np.ndarray, float]:
    """Unit Ĝ in the lab and |G| (rad/nm), from Q at the Bragg peak."""
    norm = float(np.linalg.norm(q_peak))
    return q_peak / norm, norm


@dataclass
class LabGrid:
    arrays: dict  # name → array on the lab grid, axes (x, y, z)
    voxel_nm: tuple
    axes: tuple = ("x", "y", "z")


def to_lab(obj: np.ndarray, voxels: np.ndarray, spacing_nm: float | None = None, pad: float = 1.1,
           extra: dict[str, np.ndarray] | None = None) -> LabGrid:
    """Interpolate a complex object from its detector-conjugate grid (voxel vectors ``voxels``) onto an
    orthonormal lab grid (x, y, z) of ``spacing_nm`` (default: the shortest voxel vector), just large
    enough for the whole input grid's support. Real and imaginary parts are interpolated linearly.
    ``extra``: real maps on ``obj``'s grid interpolated onto the same lab grid (same keys in ``arrays``)."""
    spacing = float(spacing_nm or np.linalg.norm(voxels, axis=0).min())
    shape_in = np.array(obj.shape)
    centre_in = shape_in // 2
    amp = np.abs(obj)
    inside = np.argwhere(amp > 0.05 * amp.max()) - centre_in  # extent of the object in the lab
    corners = (voxels @ inside.T).T if len(inside) else np.zeros((1, 3))
    half = np.ceil(pad * np.abs(corners).max(axis=0) / spacing).astype(int) + 2
    shape_out = tuple(2 * half + 1)
    # lab position of output voxel o: spacing·(o − half); input index: A⁻¹·position + centre
    matrix = np.linalg.inv(voxels) * spacing
    offset = centre_in - matrix @ half
    real = ndi.affine_transform(obj.real.astype(np.float32), matrix, offset, shape_out, order=1, cval=0.0)
    imag = ndi.affine_transform(obj.imag.astype(np.float32), matrix, offset, shape_out, order=1, cval=0.0)
    others = {name: ndi.affine_transform(np.asarray(values, np.float32), matrix, offset, shape_out, order=1, cval=0.0)
              for name, values in (extra or {}).items()}
    return LabGrid({"object": (real + 1j * imag).astype(np.complex64), **others}, (spacing, spacing, spacing))
