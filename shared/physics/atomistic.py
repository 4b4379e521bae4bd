"""Optional slow path: an atomistic Au crystal, relaxed with EMT, projected onto the voxel grid.

As in the paper's data preparation: build an fcc gold block, clip it with the
{100}/{110}/{111} facet planes, insert a strain source (a misfitting spherical
inclusion: the atoms inside dilated), relax with the EMT potential (asap3 when
installed, else ASE's own), then voxelise — amplitude from the number of atoms
per voxel, phase = G·u from the mean displacement of the atoms in each voxel.
Needs the ``atomistic`` extra (ase); asap3, if installed, makes EMT faster.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from shared.physics.errors import InputError
from shared.physics.crystals import AU_LATTICE_NM, DISTANCE_RANGE, FAMILIES, canonical_phase, facet_normals


def _emt():
    try:
        from asap3 import EMT
    except ImportError:
        from ase.calculators.emt import EMT
    return EMT()


def atomistic_crystal(n: int, rng: np.random.Generator, cells_per_voxel: int = 2, misfit: float = 0.02,
                      relax_steps: int = 60, hkl=(1, 1, 1)):
    """(amplitude, phase, info) on an n³ grid with voxels of ``cells_per_voxel`` lattice constants."""
    try:
        from ase.lattice.cubic import FaceCenteredCubic
        from ase.optimize import FIRE
    except ImportError:
        raise InputError("the atomistic route needs ase (and ideally asap3): pip install 'cdi-live[atomistic]'") from None
    voxel_nm = cells_per_voxel * AU_LATTICE_NM
    half_vox = rng.uniform(0.16, 0.26) * n
    cells = int(np.ceil(2 * half_vox * cells_per_voxel * 1.8)) + 2
    atoms = FaceCenteredCubic("Au", size=(cells,) * 3, latticeconstant=AU_LATTICE_NM * 10)  # Å
    atoms.translate(-atoms.get_positions().mean(axis=0))
    rotation = Rotation.random(random_state=rng.integers(2**31))
    normals, family = facet_normals(rotation)
    distances = np.array([half_vox * rng.uniform(*DISTANCE_RANGE[list(FAMILIES)[f]]) for f in family])
    positions_vox = atoms.get_positions() / (voxel_nm * 10)
    keep = (positions_vox @ normals.T - distances).max(axis=1) <= 0
    atoms = atoms[keep]
    ideal = atoms.get_positions().copy()
    radius = 0.3 * half_vox * voxel_nm * 10
    centre = rng.uniform(-0.3, 0.3, 3) * half_vox * voxel_nm * 10
    inside = np.linalg.norm(ideal - centre, axis=1) < radius
    atoms.positions[inside] = centre + (ideal[inside] - centre) * (1 + misfit)
    atoms.calc = _emt()
    FIRE(atoms, logfile=None).run(fmax=0.05, steps=relax_steps)
    u_nm = (atoms.get_positions() - ideal) / 10
    # Voxelise on the ideal lattice sites (the displacement is the signal, the site the bin).
    offset = rng.uniform(-0.5, 0.5, 3)
    index = np.floor(ideal / (voxel_nm * 10) + offset + n // 2 + 0.5).astype(int)
    valid = np.all((index >= 0) & (index < n), axis=1)
    flat = np.ravel_multi_index(index[valid].T, (n,) * 3)
    counts = np.bincount(flat, minlength=n**3).astype(float)
    g_dir = rotation.apply(np.array(hkl, float) / np.linalg.norm(hkl))
    g_norm = 2 * np.pi * np.linalg.norm(hkl) / AU_LATTICE_NM
    phase_sum = np.bincount(flat, weights=(u_nm[valid] @ g_dir) * g_norm, minlength=n**3)
    amplitude = (counts / max(counts.max(), 1)).reshape((n,) * 3).astype(np.float32)
    phase = np.where(counts > 0, phase_sum / np.maximum(counts, 1), 0).reshape((n,) * 3)
    phase = canonical_phase(phase, amplitude).astype(np.float32)
    info = {"atoms": len(atoms), "voxel_nm": voxel_nm, "max_displacement_nm": float(np.abs(u_nm).max()),
            "energy_ev": float(atoms.get_potential_energy())}
    return amplitude, phase, info
