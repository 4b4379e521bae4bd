"""Strain from phase: uniform strain → linear phase → constant strain."""

import numpy as np
import pytest

from shared.physics.errors import InputError
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
