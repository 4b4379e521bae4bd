"""Simulated crystals: faceted, anti-aliased, strained within bounds, reproducible."""

import numpy as np

from shared.physics import crystals


def test_reproducible_and_controls_share_shape():
    a1, p1, _ = crystals.random_crystal(32, np.random.default_rng([7, 1]))
    a2, p2, _ = crystals.random_crystal(32, np.random.default_rng([7, 1]))
    a3, p3, par = crystals.random_crystal(32, np.random.default_rng([7, 1]), strained=False)
    assert np.array_equal(a1, a2) and np.array_equal(p1, p2)
    assert np.array_equal(a1, a3) and not p3.any() and par.max_strain == 0


def test_shape_is_faceted_antialiased_and_fits():
    amp, _, params = crystals.random_crystal(32, np.random.default_rng(2))
    assert amp.max() == 1 and amp.min() == 0
    partial = (amp > 0) & (amp < 1)
    assert partial.sum() > 50  # supersampled edges
    inside = np.argwhere(amp > 0)
    extent = inside.max(0) - inside.min(0) + 1
    assert np.all(extent <= 20) and np.all(extent >= 6)  # oversampling ≥ 1.6
    assert params.half_size > 0


def test_strain_is_bounded_and_phase_canonical():
    for seed in range(4):
        amp, phase, params = crystals.random_crystal(32, np.random.default_rng(seed), max_strain=2e-3)
        assert params.max_strain <= 2e-3 + 1e-9
        assert np.abs(phase).max() < np.pi
        w = amp.ravel()
        assert abs((w * phase.ravel()).sum() / w.sum()) < 1e-3
        assert np.any(phase != 0)
