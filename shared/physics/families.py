"""Crystal families for evaluation: populations, not seeds.

Each family is built independently of the others, so a method tuned on one can be judged on the rest:

    facets     ours (``shared.physics.crystals``): faceted fcc Au, 30–60 % of the box, physical strain
               fields (inclusions, surface relaxation, bending); the tuning family
    defects    the atomistic route: an fcc Au lattice of atoms clipped by facets, with a dislocation
               (Volterra field, isotropic elasticity), a stacking fault (a/6⟨112⟩ slip across a {111}
               plane) or a twin boundary (the lattice mirrored across a {111} plane); each voxel holds
               the sum of its atoms' e^{iG·r}, so a twin domain that does not diffract at G is dark and a
               dislocation is a phase vortex
    fill       large crystals filling 40–75 % of the box per axis (oversampling near 2): spheres, rods
               and platelets, a smooth phase up to ±3 rad and a random offset (the map wraps)

Every family is measured the same way: every fourth scan noise-free, the others Poisson at 10⁴–10⁸
photons; independently of that, a third with a flat background (0.05–1 photon per voxel) and a third
with a detector blur (Gaussian, σ 0.4–1 pixel on the detector axes: partial coherence and point spread).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from shared.physics import crystals, fourier

TUNING = "facets"  # the family the refined stage and the verdict were tuned on
PHOTONS = (1e4, 1e8)
POISSON_NU = 0.44  # gold


@dataclass
class Scan:
    intensity: np.ndarray  # float32 (n, n, n), centred
    truth: np.ndarray  # complex64 (n, n, n)
    photons: float  # 0: noise-free
    background: float  # mean photons per voxel added
    blur: float  # detector blur σ (pixels), 0: none
    kind: str  # what the crystal is (family-specific)


def measure(obj: np.ndarray, rng: np.random.Generator, index: int, blur_range=(0.4, 1.0),
            every_scan_blurred: bool = False, with_background: bool = True) -> tuple[np.ndarray, float, float, float]:
    """The family-independent measurement: (intensity, photons, background, blur). The keywords set another one
    (``benchmarks/mild_blur.py``: every scan blurred, milder, no background); the defaults are the families'."""
    ideal = fourier.intensity(obj).astype(np.float64)
    blur = float(rng.uniform(*blur_range)) if every_scan_blurred or index % 3 == 1 else 0.0
    if blur:
        ideal = ndimage.gaussian_filter(ideal, (0, blur, blur))
    if index % 4 == 0:
        return ideal.astype(np.float32), 0.0, 0.0, blur
    photons = float(np.exp(rng.uniform(*np.log(PHOTONS))))
    expected = ideal * photons / ideal.sum()
    background = float(rng.uniform(0.05, 1.0)) if with_background and index % 3 == 2 else 0.0
    return rng.poisson(expected + background).astype(np.float32), photons, background, blur


def facets(size: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    amplitude, phase, _ = crystals.random_crystal(size, rng, True, 1e-2, phase_range=float(rng.uniform(0.3, 2.5)))
    return fourier.make_object(amplitude, phase), "faceted"


def fill(size: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """A sphere, rod or platelet whose extent per axis is 40–75 % of the box, with a smooth phase."""
    kind = str(rng.choice(["sphere", "rod", "platelet"]))
    rotation = Rotation.random(random_state=rng.integers(2**31))
    sub = 2  # supersampling per axis for anti-aliased edges
    axis = (np.arange(size * sub) + 0.5) / sub - size / 2 - 0.5 + rng.uniform(-0.5, 0.5)
    points = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    local = rotation.inv().apply(points)
    if kind == "sphere":
        semi = rng.uniform(0.2, 0.3, 3) * size
        inside = ((local / semi) ** 2).sum(1) <= 1
    elif kind == "rod":
        radius, half_length = rng.uniform(0.2, 0.25) * size, rng.uniform(0.3, 0.4) * size
        inside = ((local[:, :2] ** 2).sum(1) <= radius**2) & (np.abs(local[:, 2]) <= half_length)
    else:  # a hexagonal platelet
        half_thickness, radius = rng.uniform(0.12, 0.2) * size, rng.uniform(0.3, 0.38) * size
        angles = np.arange(6) * np.pi / 3
        normals = np.stack([np.cos(angles), np.sin(angles)], 1)
        inside = ((local[:, :2] @ normals.T).max(1) <= radius * np.cos(np.pi / 6)) & (np.abs(local[:, 2]) <= half_thickness)
    inside = inside.reshape((size * sub,) * 3)
    amplitude = inside.reshape(size, sub, size, sub, size, sub).mean((1, 3, 5)).astype(np.float32)
    extent = [hi - lo + 1 for lo, hi in _spans(amplitude > 0.5)]
    if max(extent) > 0.78 * size:  # the rotation pushed a long axis past the range: shrink uniformly
        return fill(size, rng)
    grid = np.indices((size,) * 3).astype(float) - size / 2
    phase = np.zeros((size,) * 3)
    for _ in range(rng.integers(2, 5)):  # smooth bumps (strain sources)
        centre, width = rng.uniform(-0.25, 0.25, 3) * size, rng.uniform(0.1, 0.3) * size
        phase += rng.uniform(-1, 1) * np.exp(-((grid - centre[:, None, None, None]) ** 2).sum(0) / (2 * width**2))
    quad = rng.normal(size=(3, 3))
    phase += np.einsum("i...,ij,j...->...", grid, quad + quad.T, grid) / size**2
    phase = crystals.canonical_phase(phase, amplitude)
    inside_phase = phase[amplitude > 0.5]
    phase *= rng.uniform(0.5, 3.0) / max(np.abs(inside_phase).max(), 1e-9)
    phase = phase + rng.uniform(-np.pi, np.pi)  # a random offset: the map wraps where it crosses ±π
    return fourier.make_object(amplitude, np.where(amplitude > 0, phase, 0)), kind


def _spans(mask: np.ndarray):
    return [(int(np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != k)))[[0, -1]][0]),
             int(np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != k)))[-1])) for k in range(3)]


FCC_BASIS = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
DEFECTS = ("dislocation", "stacking fault", "twin boundary")


def defects(size: int, rng: np.random.Generator, cells_per_voxel: int = 2) -> tuple[np.ndarray, str]:
    """Atoms of a faceted fcc crystal with one planar or line defect, voxelised as Σ e^{iG·r} per voxel.

    Lengths are in lattice constants; G = 2π·(111) in the crystal's own frame (|G·r| integer·2π on
    the perfect lattice)."""
    kind = str(rng.choice(DEFECTS))
    half = rng.uniform(0.18, 0.28) * size * cells_per_voxel  # lattice constants
    cells = int(np.ceil(half * 1.9)) + 1
    grid = np.arange(-cells, cells)
    lattice = np.stack(np.meshgrid(grid, grid, grid, indexing="ij"), -1).reshape(-1, 1, 3) + FCC_BASIS[None]
    atoms = lattice.reshape(-1, 3).astype(np.float64)
    normals, family = crystals.facet_normals(Rotation.identity())
    distances = np.array([half * rng.uniform(*crystals.DISTANCE_RANGE[list(crystals.FAMILIES)[f]]) for f in family])
    atoms = atoms[(atoms @ normals.T - distances).max(1) <= 0]
    g = 2 * np.pi * np.array([1.0, 1.0, 1.0])
    plane_normals = np.array([[1, 1, 1], [1, 1, -1], [1, -1, 1], [-1, 1, 1]], float) / np.sqrt(3)
    through = rng.uniform(-0.3, 0.3, 3) * half
    if kind == "dislocation":  # a/2⟨110⟩ Burgers vector with G·b = ±2π, line along another ⟨110⟩
        burgers = [b for b in _family_110() if abs(g @ b) > 1]
        b = burgers[rng.integers(len(burgers))]
        lines = [t for t in _family_110() if abs(abs(t @ b) / (np.linalg.norm(t) * np.linalg.norm(b)) - 1) > 1e-6]
        t = lines[rng.integers(len(lines))]
        atoms = atoms + volterra(atoms - through, b, t / np.linalg.norm(t))
    elif kind == "stacking fault":  # slip of a/6⟨112⟩ in a {111} plane, seen at G (G·s ∉ 2πℤ)
        choices = [(n, s) for n in plane_normals for s in _family_112() if abs(n @ s) < 1e-9
                   and abs(np.exp(1j * (g @ s)) - 1) > 0.1]
        n, s = choices[rng.integers(len(choices))]
        atoms = atoms + np.where(((atoms - through) @ n > 0)[:, None], s, 0)
    else:  # twin: the lattice beyond a {111} plane mirrored across it
        n = plane_normals[rng.integers(len(plane_normals))]
        side = (atoms - through) @ n
        mirrored = atoms - 2 * side[:, None] * n
        atoms = np.where((side > 0)[:, None], mirrored, atoms)
    rotation = Rotation.random(random_state=rng.integers(2**31))
    phasor = np.exp(1j * (atoms @ g))
    voxels = rotation.apply(atoms) / cells_per_voxel + size // 2 + rng.uniform(-0.5, 0.5, 3)
    index = np.floor(voxels + 0.5).astype(int)
    valid = np.all((index >= 0) & (index < size), axis=1)
    flat = np.ravel_multi_index(index[valid].T, (size,) * 3)
    field = (np.bincount(flat, phasor[valid].real, size**3) + 1j * np.bincount(flat, phasor[valid].imag, size**3))
    field = field.reshape((size,) * 3) / (4 * cells_per_voxel**3)  # atoms per full voxel
    amplitude = np.clip(np.abs(field), 0, 1).astype(np.float32)
    phase = crystals.canonical_phase(np.angle(field), amplitude * (amplitude > 0.5))
    return fourier.make_object(amplitude, np.where(amplitude > 0.05, np.angle(np.exp(1j * phase)), 0)), kind


def _family_110() -> list[np.ndarray]:
    return [0.5 * np.array(v, float) for v in
            [(1, 1, 0), (1, -1, 0), (1, 0, 1), (1, 0, -1), (0, 1, 1), (0, 1, -1)]]


def _family_112() -> list[np.ndarray]:
    vectors = set()
    for perm in [(1, 1, 2), (1, 2, 1), (2, 1, 1)]:
        for signs in np.ndindex(2, 2, 2):
            vectors.add(tuple(p * (1 - 2 * s) for p, s in zip(perm, signs)))
    return [np.array(v, float) / 6 for v in sorted(vectors)]


def volterra(r: np.ndarray, b: np.ndarray, t: np.ndarray, nu: float = POISSON_NU) -> np.ndarray:
    """Displacement of a straight dislocation along unit ``t`` through the origin with Burgers vector ``b``
    (isotropic elasticity, Hirth & Lothe): screw part b_s·θ/2π, edge part the classic field."""
    b_screw = (b @ t) * t
    b_edge = b - b_screw
    x_axis = b_edge / np.linalg.norm(b_edge) if np.linalg.norm(b_edge) > 1e-9 else np.cross(t, [1.0, 0, 0])
    x_axis /= np.linalg.norm(x_axis)
    y_axis = np.cross(t, x_axis)
    x, y = r @ x_axis, r @ y_axis
    theta, r2 = np.arctan2(y, x), np.maximum(x * x + y * y, 1e-6)
    be = np.linalg.norm(b_edge)
    ux = be / (2 * np.pi) * (theta + x * y / (2 * (1 - nu) * r2))
    uy = -be / (2 * np.pi) * ((1 - 2 * nu) / (4 * (1 - nu)) * np.log(r2) + (x * x - y * y) / (4 * (1 - nu) * r2))
    return (ux[:, None] * x_axis + uy[:, None] * y_axis
            + (theta / (2 * np.pi))[:, None] * b_screw)


BUILDERS = {"facets": facets, "defects": defects, "fill": fill}
NAMES = tuple(BUILDERS)


def simulated(family: str, size: int, seed: int, index: int) -> Scan:
    """Scan ``index`` of a family's population at ``seed``."""
    if family not in BUILDERS:
        from shared.physics.errors import InputError

        raise InputError(f"unknown crystal family {family!r}; use one of {', '.join(NAMES)}")
    rng = np.random.default_rng([seed, index, sum(map(ord, family))])
    obj, kind = BUILDERS[family](size, rng)
    intensity, photons, background, blur = measure(obj, rng, index)
    return Scan(intensity, obj.astype(np.complex64), photons, background, blur, kind)


def population(family: str, count: int, seed: int, size: int = 32) -> list[Scan]:
    return [simulated(family, size, seed, i) for i in range(count)]
