"""Displacement and strain along the Bragg vector from a reconstructed phase.

φ = G·u, so the displacement projected on G is u_G = φ/|G| and the strain
along G is ∂u_G/∂x_G. The gradient is taken of the complex exponential
(angle(ρ(x+h)·conj(ρ(x−h)))/2h), which needs no phase unwrapping; the
displacement itself is unwrapped (scikit-image) before scaling.
"""

from __future__ import annotations

import numpy as np
from skimage.restoration import unwrap_phase

from shared.physics.errors import InputError


def bragg_vector(hkl, lattice_nm: float) -> tuple[np.ndarray, float]:
    """Unit direction of G (crystal frame = grid frame) and |G| in rad/nm for a cubic lattice."""
    hkl = np.asarray(hkl, float)
    if hkl.shape != (3,) or not np.any(hkl):
        raise InputError(f"hkl must be three integers, not all zero; got {hkl.tolist()}")
    if lattice_nm <= 0:
        raise InputError(f"lattice constant must be positive, got {lattice_nm}")
    norm = float(np.linalg.norm(hkl))
    return hkl / norm, 2 * np.pi * norm / lattice_nm


def phase_gradient(phase: np.ndarray, support: np.ndarray, voxel_nm) -> np.ndarray:
    """∇φ (rad/nm) per axis by central differences of e^{iφ}; zero outside the support."""
    z = np.exp(1j * phase)
    spacing = np.broadcast_to(np.asarray(voxel_nm, float), (3,))
    grads = []
    for axis in range(3):
        forward, backward = np.roll(z, -1, axis), np.roll(z, 1, axis)
        inside = support & np.roll(support, -1, axis) & np.roll(support, 1, axis)
        grads.append(np.where(inside, np.angle(forward * np.conj(backward)) / (2 * spacing[axis]), 0.0))
    return np.stack(grads)


def strain_map(phase: np.ndarray, support: np.ndarray, hkl, lattice_nm: float, voxel_nm):
    """(displacement along G in nm, strain along G) on the phase's grid, zero outside the support.

    The grid axes are taken as the crystal's axes (an orthonormal frame with G along hkl);
    for a real detector use :func:`lab_maps`.
    """
    direction, g_norm = bragg_vector(hkl, lattice_nm)
    return strain_along(phase, support, direction, g_norm, voxel_nm)


def strain_along(phase: np.ndarray, support: np.ndarray, direction, g_norm: float, voxel_nm):
    """(displacement along G in nm, strain along G) for a phase on an orthonormal grid whose axes
    ``direction`` (unit Ĝ) is expressed in."""
    phase = np.asarray(phase, float)
    support = np.asarray(support, bool)
    if phase.shape != support.shape or phase.ndim != 3:
        raise InputError(f"phase {phase.shape} and support {support.shape} must be the same 3D shape")
    direction = np.asarray(direction, float)
    masked = np.ma.masked_array(phase, mask=~support)
    unwrapped = np.asarray(unwrap_phase(masked).filled(0.0)) if support.any() else np.zeros_like(phase)
    displacement = np.where(support, unwrapped / g_norm, 0.0)
    grad = phase_gradient(phase, support, voxel_nm)
    strain = np.tensordot(direction, grad, axes=1) / g_norm
    return displacement.astype(np.float32), strain.astype(np.float32)


def lab_maps(obj: np.ndarray, geometry: dict, peak=None, threshold: float = 0.3, measured_shape=None,
             voxel_shape=None, extra: dict[str, np.ndarray] | None = None) -> dict:
    """A reconstruction on a scan's detector-conjugate grid → amplitude, phase, displacement (nm) and
    strain along G on an orthonormal lab grid (x, y, z), with the grid's attributes.

    ``obj`` must be free of the phase ramp of a Bragg peak off the grid centre. The steps are taken
    at voxel ``peak`` of the measured scan of ``measured_shape`` (default: ``obj``'s shape and
    centre); ``voxel_shape`` is the grid whose real-space voxel ``obj`` has (a crop's, or the
    measured one when ``obj`` only has a smaller field of view; default ``obj``'s shape). ``extra``: real
    maps on ``obj``'s grid (e.g. the phase uncertainty) put on the same lab grid.
    """
    from shared.physics import geometry as geo

    steps, q_peak = geo.reciprocal_steps(geometry, measured_shape or obj.shape, peak)
    voxels = geo.voxel_matrix(steps, voxel_shape or obj.shape)
    lab = geo.to_lab(obj, voxels, extra=extra)
    field = lab.arrays["object"]
    amplitude = np.abs(field)
    amplitude /= max(float(amplitude.max()), 1e-30)
    support = amplitude > threshold
    offset = np.angle((field * support).sum())
    phase = (np.angle(field * np.exp(-1j * offset)) * support).astype(np.float32)
    direction, g_norm = geo.bragg_direction(q_peak)
    displacement, strain = strain_along(phase, support, direction, g_norm, lab.voxel_nm)
    others = {name: lab.arrays[name] for name in (extra or {})}
    return {"amplitude": amplitude.astype(np.float32), "phase": phase, "displacement": displacement,
            "strain": strain, "voxel_nm": np.array(lab.voxel_nm), "axes": list(lab.axes),
            "bragg_direction": direction, "voxel_vectors_nm": voxels, "g_norm": g_norm, **others}
