"""Simulated gold nanocrystals for training and testing, as in 3D-CDI-NN.

Shape: a cube clipped by planes of the fcc high-symmetry families {100},
{110} and {111}, each plane at its own random distance, randomly rotated and
placed with a random sub-voxel offset; edges are anti-aliased by supersampling
the voxels the surface crosses.

Strain: a displacement field u (nm) from physical sources — misfitting
spherical inclusions (Eshelby: uniform dilation inside, 1/r² outside),
surface relaxation decaying from the facets, and bending — projected on the
Bragg vector G: phase = G·u. The peak strain along G is capped at
``max_strain`` and the phase is made canonical (zero mean inside the crystal,
no linear ramp: a ramp only moves the Bragg peak, which cropping removes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from shared.physics import fourier

AU_LATTICE_NM = 0.40782
FAMILIES = {
    "100": [(1, 0, 0), (0, 1, 0), (0, 0, 1)],
    "110": [(1, 1, 0), (1, -1, 0), (1, 0, 1), (1, 0, -1), (0, 1, 1), (0, 1, -1)],
    "111": [(1, 1, 1), (1, 1, -1), (1, -1, 1), (-1, 1, 1)],
}
# Plane distance range per family, in units of the {100} half-size: {110} and
# {111} planes cut edges and corners only when closer than √2 and √3.
DISTANCE_RANGE = {"100": (0.85, 1.0), "110": (0.9, 1.45), "111": (0.95, 1.8)}


@dataclass
class CrystalParams:
    """What was drawn for one crystal (stored beside it in the HDF5 file)."""

    half_size: float  # voxels, {100} half-width before clipping
    offset: tuple  # sub-voxel position of the centre
    rotation: tuple  # quaternion (x, y, z, w)
    strained: bool
    voxel_nm: float
    hkl: tuple
    max_strain: float  # peak |strain| along G actually present


def facet_normals(rotation: Rotation) -> tuple[np.ndarray, np.ndarray]:
    """Unit normals of all planes (both signs) and their family index."""
    normals, family = [], []
    for k, (name, dirs) in enumerate(FAMILIES.items()):
        for d in dirs:
            v = np.array(d, float) / np.linalg.norm(d)
            normals += [v, -v]
            family += [k, k]
    return rotation.apply(np.array(normals)), np.array(family)


def signed_distance(points: np.ndarray, normals: np.ndarray, distances: np.ndarray):
    """Convex polyhedron distance (max over planes) and the index of the nearest facet."""
    d = points @ normals.T - distances
    return d.max(axis=-1), d.argmax(axis=-1)


def voxel_grid(n: int, offset) -> np.ndarray:
    """Voxel-centre coordinates relative to the crystal centre, shape (n, n, n, 3)."""
    axis = np.arange(n) - n // 2
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).astype(float)
    return grid - np.asarray(offset, float)


def shape_fill(points, normals, distances, supersample: int = 4) -> np.ndarray:
    """Fraction of each voxel inside the crystal; boundary voxels are supersampled."""
    dist, _ = signed_distance(points, normals, distances)
    fill = (dist <= 0).astype(np.float32)
    edge = np.abs(dist) < np.sqrt(3) / 2
    if supersample > 1 and edge.any():
        sub = (np.arange(supersample) + 0.5) / supersample - 0.5
        sub = np.stack(np.meshgrid(sub, sub, sub, indexing="ij"), -1).reshape(-1, 3)
        centres = points[edge]
        inside = signed_distance(centres[:, None, :] + sub[None], normals, distances)[0] <= 0
        fill[edge] = inside.mean(axis=1)
    return fill


def displacement(points, normals, distances, rng, voxel_nm: float) -> np.ndarray:
    """Displacement field (nm) from inclusions, surface relaxation and bending."""
    u = np.zeros(points.shape, float)
    r_nm = points * voxel_nm
    size_nm = distances.min() * voxel_nm
    for _ in range(rng.integers(1, 4)):  # misfitting inclusions (Eshelby)
        centre = rng.uniform(-0.6, 0.6, 3) * size_nm
        radius = rng.uniform(0.1, 0.35) * size_nm
        misfit = rng.uniform(-1, 1) * 3e-3
        rel = r_nm - centre
        r = np.linalg.norm(rel, axis=-1, keepdims=True)
        u += misfit * rel * np.where(r < radius, 1.0, (radius / np.maximum(r, 1e-9)) ** 3)
    dist, facet = signed_distance(points, normals, distances)  # surface relaxation
    depth_nm = np.clip(-dist, 0, None) * voxel_nm
    decay_nm = rng.uniform(0.05, 0.2) * size_nm
    u += rng.uniform(-1, 1) * 2e-3 * decay_nm * np.exp(-depth_nm / decay_nm)[..., None] * normals[facet]
    curvature = rng.uniform(-1, 1) * 2e-3 / size_nm  # bending about a random axis
    axis = Rotation.random(random_state=rng.integers(2**31)).apply([0.0, 0.0, 1.0])
    along = r_nm @ axis
    u += 0.5 * curvature * (along**2)[..., None] * np.cross(axis, [1.0, 0.0, 0.0])
    return u


def canonical_phase(phase: np.ndarray, amplitude: np.ndarray) -> np.ndarray:
    """Remove the amplitude-weighted mean and linear ramp of the phase inside the crystal."""
    w = amplitude.ravel().astype(float)
    coords = np.indices(phase.shape).reshape(3, -1).T.astype(float)
    design = np.column_stack([np.ones(len(w)), coords])
    sw = np.sqrt(w)
    coef, *_ = np.linalg.lstsq(design * sw[:, None], phase.ravel() * sw, rcond=None)
    return (phase - (design @ coef).reshape(phase.shape)) * (amplitude > 0)


def strain_along(phase: np.ndarray, g_voxel: np.ndarray, support: np.ndarray, g_norm: float):
    """Strain along G̃ from the phase gradient (finite differences), masked."""
    grads = np.gradient(phase)
    directional = sum(g * d for g, d in zip(g_voxel, grads))
    interior = support & np.roll(support, 1, 0) & np.roll(support, -1, 0)
    return np.where(interior, directional / g_norm, 0.0)


def random_crystal(n: int, rng: np.random.Generator, strained: bool = True, max_strain: float = 1e-3,
                   hkl=(1, 1, 1), voxel_nm: float | None = None, supersample: int = 4,
                   phase_range: float | None = None):
    """One crystal on an n³ grid: (amplitude, phase, CrystalParams).

    The strain field's strength is scaled so that the largest |phase| equals
    ``phase_range`` (when given) without the peak strain along G exceeding
    ``max_strain``; without ``phase_range`` the field keeps its drawn strength,
    capped by ``max_strain`` and by 0.9π.
    """
    rotation = Rotation.random(random_state=rng.integers(2**31))
    normals, family = facet_normals(rotation)
    half = rng.uniform(0.16, 0.30) * n  # full extent ≈ 0.3–0.6 n: oversampling ≈ 1.7–3.3
    distances = np.array([half * rng.uniform(*DISTANCE_RANGE[list(FAMILIES)[f]]) for f in family])
    offset = rng.uniform(-0.5, 0.5, 3)
    points = voxel_grid(n, offset)
    amplitude = shape_fill(points, normals, distances, supersample)
    voxel_nm = float(voxel_nm or rng.uniform(5.0, 15.0))
    phase = np.zeros_like(amplitude)
    peak = 0.0
    if strained:
        g_dir = np.array(hkl, float) / np.linalg.norm(hkl)
        g_norm = 2 * np.pi * np.linalg.norm(hkl) / AU_LATTICE_NM  # |G| in rad/nm
        u = displacement(points, normals, distances, rng, voxel_nm)
        raw = canonical_phase((u @ g_dir) * g_norm, amplitude)
        strain = strain_along(raw, g_dir, amplitude > 0.5, g_norm * voxel_nm)
        peak = float(np.abs(strain).max()) or 1e-12
        largest = max(np.abs(raw).max(), 1e-12)
        target = phase_range / largest if phase_range else min(1.0, 0.9 * np.pi / largest)
        scale = min(target, max_strain / peak)
        phase, peak = (raw * scale).astype(np.float32), peak * scale
    params = CrystalParams(float(half), tuple(offset), tuple(rotation.as_quat()), bool(strained),
                           voxel_nm, tuple(hkl), float(peak))
    return amplitude, phase, params


def params_table(params: list[CrystalParams]) -> dict[str, np.ndarray]:
    """Column arrays of the per-crystal parameters, for HDF5 storage."""
    rows = [asdict(p) for p in params]
    return {key: np.array([r[key] for r in rows]) for key in rows[0]}


def simulated_scan(size: int, seed: int, index: int, shape_index: int, strained: bool = True,
                   photons=(0.0, 0.0), max_strain: float = 1e-2, hkl=(1, 1, 1), phase_range=(0.3, 2.5)):
    """Crystal ``index`` of a data set: (intensity, amplitude, phase, params, photons).

    The shape comes from the random stream (seed, shape_index), so an unstrained
    control built with the same shape_index has exactly the strained crystal's
    shape; the largest |phase| is uniform in ``phase_range`` (rad) with the peak
    strain capped at ``max_strain``, and the photon count log-uniform in
    ``photons`` (0 = noiseless).
    """
    rng = np.random.default_rng([seed, shape_index])
    largest_phase = float(rng.uniform(*phase_range))
    amplitude, phase, params = random_crystal(size, rng, strained, max_strain, hkl, phase_range=largest_phase)
    ideal = fourier.intensity(fourier.make_object(amplitude, phase))
    noise_rng = np.random.default_rng([seed, index, 1])
    low, high = photons
    count = 0.0 if high <= 0 else float(np.exp(noise_rng.uniform(np.log(low), np.log(high))))
    return fourier.poisson_counts(ideal, count, noise_rng), amplitude, phase, params, count


def sphere_in_geometry(geometry: dict, n: int = 64, radius_voxels: float = 7.0, strain: float = 2e-6,
                       cut: float = 0.75, radius_nm: float | None = None) -> tuple[np.ndarray, dict]:
    """A gold sphere cut flat below (as on its substrate: a whole sphere with an even phase stalls phase
    retrieval between its twins), u = a·s² along Ĝ with s the lab position along Ĝ, sampled on the
    detector-conjugate grid of a beamline ``geometry`` (n³ frames × rows × columns about the Bragg peak)
    and passed through the exact forward model. Returns (intensity, truth): the radius (nm: ``radius_nm``, else
    ``radius_voxels`` median voxel lengths), a, Ĝ and the vertical lab axis the cut is across: what a lab-frame
    map must recover."""
    from shared.physics import geometry as geo

    steps, q_peak = geo.reciprocal_steps(geometry, (n, n, n))
    voxels = geo.voxel_matrix(steps, (n, n, n))
    radius = radius_nm or radius_voxels * float(np.median(np.linalg.norm(voxels, axis=0)))
    g_hat, g_norm = geo.bragg_direction(q_peak)
    up = np.eye(3)["xyz".index(geo.diffractometer(geometry).pixel_directions[0][0])]  # detector rows run down
    fill = np.zeros(n**3)
    index = np.indices((n, n, n)).reshape(3, -1).T - n // 2
    for sub in np.stack(np.meshgrid(*[[-0.25, 0.25]] * 3, indexing="ij"), -1).reshape(-1, 3):
        r = (index + sub) @ voxels.T
        fill += (np.linalg.norm(r, axis=1) < radius) & (r @ up > -cut * radius)
    r = index @ voxels.T
    obj = (fill / 8 * np.exp(1j * g_norm * strain * (r @ g_hat) ** 2)).reshape(n, n, n)
    intensity = np.abs(np.fft.fftshift(np.fft.fftn(obj))) ** 2
    return intensity.astype(np.float32), {"radius_nm": radius, "strain_coefficient": strain, "g_hat": g_hat,
                                          "vertical": up}
