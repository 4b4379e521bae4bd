"""Strain from phase: uniform strain → linear phase → constant strain."""

import numpy as np
import pytest

from shared.errors import InputError
from shared.physics import strain


def test_uniform_strain_is_constant():
    hkl, a, voxel = (1, 1, 1), 0.40782, 5.0
    direction, g = strain.bragg_vector(hkl, a)
    epsilon = 2e-3
    coords = (np.indices((32, 32, 32)) - 16) * voxel  # nm
    along = np.tensordot(direction, coords, axes=1)
    displacement = epsilon * along  # u_G = ε·x_G: uniform strain along G
    phase = np.angle(np.exp(1j * g * displacement))  # wrapped, as a reconstruction gives it
    support = np.zeros((32,) * 3, bool)
    support[6:26, 6:26, 6:26] = True
    u, eps = strain.strain_map(phase, support, hkl, a, voxel)
    inner = np.zeros_like(support)
    inner[8:24, 8:24, 8:24] = True
    assert np.allclose(eps[inner], epsilon, rtol=1e-3)
    assert np.all(eps[~support] == 0)
    # Displacement, unwrapped, is linear along G up to a constant.
    fit = u[support] - displacement[support]
    assert np.ptp(fit) < 1e-3


def test_bad_geometry():
    with pytest.raises(InputError):
        strain.bragg_vector((0, 0, 0), 0.4)
    with pytest.raises(InputError):
        strain.bragg_vector((1, 1, 1), -1)


def test_voxel_size_from_geometry():
    """Au 111 at 9 keV: λ = 0.13776 nm, sin θ = λ·|G|/4π; voxels λ/(2 N sinθ Δω) and λD/(N p)."""
    geometry = {"energy_kev": 9.0, "distance_m": 0.5, "pixel_m": 55e-6, "rocking_step_deg": 0.005,
                "hkl": [1, 1, 1], "lattice_nm": 0.40782}
    voxel = strain.voxel_size_nm(geometry, (64, 128, 128))
    wavelength = 1.239841984 / 9.0
    sin_theta = wavelength * np.sqrt(3) / (2 * 0.40782)  # Bragg's law, d = a/√3
    assert voxel[0] == pytest.approx(wavelength / (2 * 64 * sin_theta * np.deg2rad(0.005)))
    assert voxel[1] == pytest.approx(wavelength * 0.5 / (55e-6 * 128)) == voxel[2]
    assert np.allclose(strain.voxel_size_nm(geometry, (32, 64, 64)), 2 * voxel)  # half the pixels: twice the voxel
    with pytest.raises(InputError):
        strain.voxel_size_nm({**geometry, "energy_kev": 1.0}, (64, 64, 64))  # no 111 reflection below ~2.6 keV
    with pytest.raises(InputError):
        strain.voxel_size_nm({"energy_kev": 9.0}, (64, 64, 64))
