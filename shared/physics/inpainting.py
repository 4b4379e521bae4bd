"""Filling holes in a volume from its valid neighbours: what every step before the refinement reads where a
detector pixel holds no count (``shared.wire.detector``), and what the network is trained on (``shared.nn.data``).

Pure functions on arrays.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def inpaint(volume: np.ndarray, bad: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """``volume`` (float) with its ``bad`` voxels replaced by a Gaussian-weighted mean of the good ones
    around them (normalised convolution); the width doubles until every hole is filled."""
    out = np.where(bad, 0, volume).astype(np.float32)
    if not bad.any():
        return out
    good = (~bad).astype(np.float32)
    todo = bad.copy()
    while todo.any() and sigma <= 64:
        weight = ndimage.gaussian_filter(good, sigma, mode="constant")
        total = ndimage.gaussian_filter(out * good, sigma, mode="constant")
        ready = todo & (weight > 1e-3)
        out[ready] = total[ready] / weight[ready]
        todo &= ~ready
        sigma *= 2
    return out
