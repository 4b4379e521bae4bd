"""Can this answer be trusted? The data's own noise floor, a verdict and a per-voxel phase uncertainty.

    floor        the χ that the data's counting noise allows: for counts N ~ Poisson(λ),
                 E‖√N − √λ‖ / ‖√N‖, each voxel's E(√N − √λ)² from an exact table at λ estimated
                 as the data smoothed by a Gaussian of 0.5 voxel (the data themselves put λ = 0
                 where a faint voxel counted nothing, and underestimate the floor by a quarter);
                 data that are not whole numbers are taken as noise-free: floor 0
    uncertainty  per voxel, the circular spread of the stage's independent finalists' phases
                 once their offset, sub-voxel shift, ramp and twin are aligned (rad, 0 outside
                 the crystal)
    verdict      "converged" when χ ≤ CHI_SLACK·floor + CHI_MARGIN, the finalists agree (mean
                 uncertainty over the crystal ≤ AGREEMENT) and the data are not too noisy to
                 promise 0.1 rad (floor ≤ NOISE_LIMIT: above it every answer on the tuning set was
                 wrong by more, however well it fitted); "uncertain" otherwise

Pure functions on arrays.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, stats

from shared.physics import metrics

CHI_SLACK, CHI_MARGIN = 1.1, 0.005  # χ within 10 % of the floor (+ 0.005 for noise-free data)
AGREEMENT = 0.06  # rad: mean phase spread of the finalists over the crystal
NOISE_LIMIT = 0.125  # a floor above this: too few photons for a phase error below 0.1 rad (tuning seed 9600)

_LAMBDA = np.concatenate([[0.0], np.geomspace(1e-3, 1e4, 400)])


def _sqrt_poisson_variance(lam: float) -> float:
    """E(√N − √λ)² for N ~ Poisson(λ), summed exactly over N."""
    if lam <= 0:
        return 0.0
    top = int(lam + 12 * np.sqrt(lam) + 30)
    n = np.arange(top + 1)
    p = stats.poisson.pmf(n, lam)
    return float((p * (np.sqrt(n) - np.sqrt(lam)) ** 2).sum())


_TABLE = np.array([_sqrt_poisson_variance(lam) for lam in _LAMBDA])


def is_counting(intensity: np.ndarray) -> bool:
    """Whole-number data (detector counts), as opposed to simulated or processed floats."""
    values = np.asarray(intensity)
    return bool(values.size) and bool(np.all(values == np.round(values)))


def noise_floor(intensity: np.ndarray, measured: np.ndarray | None = None, smooth: float = 0.5) -> float:
    """The χ of the true object against these data, as their Poisson noise sets it (0 for non-counts)."""
    values = np.clip(np.asarray(intensity, np.float64), 0, None)
    inside = np.ones(values.shape, bool) if measured is None else np.broadcast_to(measured, values.shape)
    if not is_counting(values[inside]) or values[inside].sum() <= 0:
        return 0.0
    weight = ndimage.gaussian_filter(inside.astype(np.float64), smooth)  # unmeasured voxels do not count
    rate = ndimage.gaussian_filter(np.where(inside, values, 0), smooth) / np.maximum(weight, 1e-12)
    variance = np.interp(rate[inside], _LAMBDA, _TABLE, right=0.25)
    return float(np.sqrt(variance.sum() / values[inside].sum()))


WINDOW_MARGIN = 6  # voxels around the crystal kept when the spread is taken on a window of a large grid


def phase_spread(best: np.ndarray, others: list[np.ndarray], threshold: float = 0.1) -> np.ndarray:
    """Per-voxel circular standard deviation (rad) of ``best``'s phase and the ``others``', each other
    aligned to it (shift, offset, ramp; the twin if it fits better); 0 outside ``best``'s support.

    On a grid much larger than the crystal (a full-grid answer), every object is centred and the
    spread is taken on a window around the crystal: the alignment's FFTs stay the crystal's size."""
    shift = metrics.centring_shift(best)
    window = _crystal_window(np.abs(np.roll(best, shift, axis=(0, 1, 2))), threshold)
    if window is not None:
        centred = [np.roll(o, s, axis=(0, 1, 2)) for o, s in
                   [(best, shift)] + [(o, metrics.centring_shift(o)) for o in others]]
        cut = tuple(slice((n - w) // 2, (n - w) // 2 + w) for n, w in zip(best.shape, window))
        small = phase_spread(centred[0][cut], [o[cut] for o in centred[1:]], threshold)
        out = np.zeros(best.shape, np.float32)
        out[cut] = small
        return np.roll(out, [-s for s in shift], axis=(0, 1, 2))
    support = np.abs(best) > threshold * np.abs(best).max()
    phasors = [np.exp(1j * np.angle(best))]
    for other in others:
        candidates = [metrics.align(c, best) for c in (other, metrics.twin(other))]
        misfit = [np.abs(np.angle(c * np.conj(best)))[support].mean() for c in candidates]
        phasors.append(np.exp(1j * np.angle(candidates[int(np.argmin(misfit))])))
    resultant = np.clip(np.abs(np.mean(phasors, axis=0)), 1e-6, 1.0)
    spread = np.sqrt(-2 * np.log(resultant))
    return np.where(support, spread, 0).astype(np.float32)


def _crystal_window(centred: np.ndarray, threshold: float):
    """The shape of a window about the grid's centre that holds the crystal (``centred``: its amplitude,
    centred) with a margin; None when it would not be much smaller than the grid."""
    window = []
    for n, span in zip(centred.shape, metrics.spans(centred > threshold * centred.max())):
        half = max(n // 2 - span[0], span[1] - n // 2) if span else n
        window.append(min(n, 2 * (half + WINDOW_MARGIN)))
    return tuple(window) if np.prod(window) < 0.5 * centred.size else None


def verdict(chi: float, floor: float, uncertainty: np.ndarray | None, support: np.ndarray | None = None) -> str:
    """"converged" or "uncertain" (see the module's docstring)."""
    if chi > CHI_SLACK * floor + CHI_MARGIN or floor > NOISE_LIMIT:
        return "uncertain"
    if uncertainty is not None:
        inside = uncertainty[support] if support is not None else uncertainty[uncertainty > 0]
        if inside.size and float(inside.mean()) > AGREEMENT:
            return "uncertain"
    return "converged"
