"""Detector-to-lab geometry of a Bragg rocking scan: reciprocal steps, voxel vectors, lab-frame maps.

Each beamline is a diffractometer written as xrayutilities writes circles (cohere-beamlines'
notation): sample circles and detector circles, outermost first, each a named motor turning
about a lab axis, and the incident beam's direction. The lab frame is that beamline's own
(APS 34-ID-C, ESRF ID01, PETRA III P10: z along the beam, y up; APS 28-ID-B: y along the
beam, z up). A geometry gives each circle's angle in ``angles_deg`` (34-ID-C also reads
``delta_deg``/``gamma_deg``); the ``rocking_motor`` is one of the sample circles: frame k is
taken at θ₀ + k·Δθ. A scan's array axes are (frames, rows, cols); at zero detector angles
the detector faces the beam, its rows and columns along the detector's ``pixel_directions``.

The reciprocal step per frame, row and column is the change of Q = k(k̂_f − k̂_i), taken at
the Bragg peak by xrayutilities' ``QConversion`` (the library cohere and bcdi use) in the
sample frame and turned back into the lab with the peak's sample angles, so a rocking
circle inside another (ID01's eta inside mu) rocks about its tilted axis. With B the three
steps as columns, the real-space voxel vectors are the columns of A = 2π(B⁻¹)ᵀ·diag(1/N):
the grid conjugate to the measured one, sheared in the lab. Another beamline is one more
entry in ``DIFFRACTOMETERS``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.ndimage as ndi

from shared.physics.errors import InputError

HC_KEV_NM = 1.239841984


@dataclass(frozen=True)
class Diffractometer:
    sample_circles: tuple  # (motor, xrayutilities axis), outermost first
    detector_circles: tuple  # (motor, axis), outermost first
    beam: tuple  # incident beam direction in the lab
    pixel_directions: tuple  # lab direction of increasing (row, column) at zero detector angles
    rocking_motor: str  # the usual rocking circle

    @property
    def sample_motors(self) -> tuple:
        return tuple(name for name, _ in self.sample_circles)

    @property
    def detector_motors(self) -> tuple:
        return tuple(name for name, _ in self.detector_circles)


DIFFRACTOMETERS = {  # as cohere-beamlines describes them (xrayutilities notation)
    "34idc": Diffractometer((("th", "y+"), ("chi", "z-"), ("phi", "y+")), (("delta", "y+"), ("gamma", "x-")),
                            (0, 0, 1), ("y-", "x+"), "th"),
    "id01": Diffractometer((("mu", "y-"), ("eta", "x-"), ("phi", "y-")), (("nu", "y-"), ("delta", "x-")),
                           (0, 0, 1), ("y-", "x+"), "eta"),
    "p10": Diffractometer((("mu", "y+"), ("om", "x-"), ("chi", "z+"), ("phi", "y-")), (("gam", "y+"), ("del", "x-")),
                          (0, 0, 1), ("y-", "x+"), "om"),
    "28idb": Diffractometer((("mu", "z-"), ("eta", "x+"), ("chi", "y+"), ("phi", "z-")), (("nu", "z-"), ("del", "x+")),
                            (0, 1, 0), ("z-", "x-"), "eta"),
}
EXAMPLES = {  # a typical Au 111 Bragg condition at each (8–9 keV), voxels near 20 nm on 64³: docs and tests
    "34idc": {"beamline": "34idc", "energy_kev": 9.0, "distance_m": 0.5, "pixel_m": 55e-6, "rocking_step_deg": 0.01,
              "delta_deg": 32.174, "gamma_deg": 12.6346},
    "id01": {"beamline": "id01", "energy_kev": 8.0, "distance_m": 0.5, "pixel_m": 55e-6, "rocking_motor": "eta",
             "rocking_step_deg": 0.01, "angles_deg": {"mu": 0, "eta": 17.4, "phi": 0, "nu": 0.8, "delta": 34.9}},
    "p10": {"beamline": "p10", "energy_kev": 9.0, "distance_m": 0.7, "pixel_m": 75e-6, "rocking_motor": "om",
            "rocking_step_deg": 0.01,
            "angles_deg": {"mu": 0.5, "om": 16.0, "chi": 0, "phi": 0, "gam": 6.0, "del": 31.0}},
    "28idb": {"beamline": "28idb", "energy_kev": 9.0, "distance_m": 0.5, "pixel_m": 55e-6, "rocking_motor": "eta",
              "rocking_step_deg": 0.01,
              "angles_deg": {"mu": 0, "eta": 16.0, "chi": 0, "phi": 0, "nu": 4.0, "del": 31.5}},
}
REQUIRED = ("energy_kev", "distance_m", "pixel_m", "rocking_step_deg")
LEGACY_DETECTOR_FIELDS = {"delta": "delta_deg", "gamma": "gamma_deg"}  # 34-ID-C's flat fields


def diffractometer(geometry: dict) -> Diffractometer:
    beamline = geometry.get("beamline") or "34idc"
    if beamline not in DIFFRACTOMETERS:
        raise InputError(f"geometry: unknown beamline {beamline!r}; known: {', '.join(DIFFRACTOMETERS)}")
    return DIFFRACTOMETERS[beamline]


def circle_angles(geometry: dict) -> tuple[list[float], list[float]]:
    """(sample angles, detector angles) in degrees, in circle order: ``angles_deg`` first, then 34-ID-C's
    ``delta_deg``/``gamma_deg``, else 0 (a circle the file does not name stands at zero)."""
    setup = diffractometer(geometry)
    angles = geometry.get("angles_deg") or {}

    def angle(motor: str) -> float:
        if motor in angles and angles[motor] is not None:
            return float(angles[motor])
        legacy = LEGACY_DETECTOR_FIELDS.get(motor) if setup is DIFFRACTOMETERS["34idc"] else None
        return float(geometry.get(legacy) or 0.0) if legacy else 0.0

    return [angle(m) for m in setup.sample_motors], [angle(m) for m in setup.detector_motors]


def check_circles(geometry: dict) -> dict:
    """The circles a geometry names are its beamline's, and it rocks one of the sample circles (default: the
    beamline's usual one, filled in); one clear error otherwise. The start message runs this too."""
    geometry = dict(geometry)
    setup = diffractometer(geometry)
    beamline = geometry.get("beamline") or "34idc"
    known = setup.sample_motors + setup.detector_motors
    unknown = sorted(set(geometry.get("angles_deg") or {}) - set(known))
    if unknown:
        raise InputError(f"geometry: {beamline} has no circle {unknown[0]!r}; its circles: {', '.join(known)}")
    geometry["rocking_motor"] = geometry.get("rocking_motor") or setup.rocking_motor
    if geometry["rocking_motor"] not in setup.sample_motors:
        raise InputError(f"geometry: rocking_motor {geometry['rocking_motor']!r} is not a sample circle of "
                         f"{beamline} ({', '.join(setup.sample_motors)})")
    for direction in geometry.get("pixel_directions") or ():
        if direction not in PIXEL_DIRECTIONS:
            raise InputError(f"geometry: pixel direction {direction!r} is not one of {', '.join(PIXEL_DIRECTIONS)}")
    return geometry


PIXEL_DIRECTIONS = ("x+", "x-", "y+", "y-", "z+", "z-")


def check(geometry: dict) -> dict:
    """The geometry as a dict, or one clear error naming the first missing or impossible field."""
    if not geometry:
        raise InputError("geometry is missing")
    geometry = dict(geometry)
    setup = diffractometer(geometry)
    for name in REQUIRED:
        if geometry.get(name) is None:
            raise InputError(f"geometry lacks {name}")
    if setup is DIFFRACTOMETERS["34idc"] and "delta" not in (geometry.get("angles_deg") or {}) \
            and geometry.get("delta_deg") is None:
        raise InputError("geometry lacks delta_deg")
    for name in ("energy_kev", "distance_m", "pixel_m", "rocking_step_deg"):
        if not float(geometry[name]) > 0:
            raise InputError(f"geometry: {name} must be positive, got {geometry[name]}")
    geometry = check_circles(geometry)
    if not any(circle_angles(geometry)[1]):
        raise InputError(f"geometry: the detector circles ({', '.join(setup.detector_motors)}) are all 0, "
                         "the detector on the direct beam: no Bragg peak")
    return geometry


def reciprocal_steps(geometry: dict, shape, peak=None) -> tuple[np.ndarray, np.ndarray]:
    """(B, Q at the peak): B's columns are the Q steps (rad/nm, lab frame) per frame, row and column
    at voxel ``peak`` (default: the array centre) of a scan of ``shape``; Q is the peak's (rad/nm)."""
    import xrayutilities as xu

    g = check(geometry)
    setup = diffractometer(g)
    frames, rows, cols = (int(n) for n in shape)
    frame, row, col = (int(p) for p in (peak if peak is not None else (frames // 2, rows // 2, cols // 2)))
    roi_row, roi_col = g.get("detector_roi") or (0, 0)  # the frames' first pixel on the whole detector
    full_rows, full_cols = g.get("detector_shape") or (rows + roi_row, cols + roi_col)
    centre_row, centre_col = g.get("beam_center_px") or (full_rows / 2, full_cols / 2)  # on the arm's axis
    directions = tuple(g.get("pixel_directions") or setup.pixel_directions)
    convert = xu.experiment.QConversion([axis for _, axis in setup.sample_circles],
                                        [axis for _, axis in setup.detector_circles], setup.beam,
                                        en=1000 * float(g["energy_kev"]))
    convert.init_area(*directions, cch1=centre_row - roi_row, cch2=centre_col - roi_col,
                      Nch1=rows, Nch2=cols, distance=float(g["distance_m"]), pwidth1=float(g["pixel_m"]),
                      pwidth2=float(g["pixel_m"]))
    sample, detector = circle_angles(g)
    rocking = setup.sample_motors.index(g["rocking_motor"])
    circles = [np.array([a, a + (float(g["rocking_step_deg"]) if i == rocking else 0.0)]) for i, a in enumerate(sample)]
    q = np.stack(convert.area(*circles, *[np.full(2, a) for a in detector], deg=True), axis=-1) * 10.0  # 1/Å → 1/nm
    to_lab = np.stack([convert.transformSample2Lab(axis, *sample) for axis in np.eye(3)], axis=1)  # at the peak
    q = q @ to_lab.T
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
