"""Fused loops for the two element-wise halves of an ER/HIO iteration (numba), where NumPy makes a dozen passes.

An iteration is an FFT, the modulus constraint, an inverse FFT and the real-space update. At 32³ the FFTs are
the cheap part (FFTW: about 40 µs a transform); NumPy's modulus constraint (|F|, the misfit, the ratio, the product)
and HIO's update (ρ − β·ρ', the support's choice) each pass over the whole batch several times, with a temporary
array for each. Here each half is one loop over the voxels.

Measured (``benchmarks/phasing_kernels.py``, 2-core CPU, 2026-12-06): one HIO iteration 1.65–1.85× faster on
batches of 8 and 32 scans of 32³, FFTs included; `phase-retrieve --starts 4` 1.70×, the refined stage 1.24–1.31×
(its AD polish and the blur's convolutions are not in these loops). The answers agree with NumPy's to float32
rounding (χ to ~10⁻⁶ relative; a test holds them to it), and the same scans came out right.

**On by default** (``CDI_LIVE_KERNELS=0`` turns them off). On a fresh seed (4791, 24 scans per family) the refined
stage with the loops was right on 29 of 72 against 34 with NumPy's iteration, so they waited for a comparison powered
to tell, its rule written first (``benchmarks/run_again.py --variants numpy_iteration,fused``, docs/BENCHMARKS.md,
"Thirty-second session"): on fresh seed 4801, 96 scans per family, right on 132 of 288 either way, 8 scans right to
wrong and 8 wrong to right, and no wrong answer called converged (NumPy's iteration: one). HIO is chaotic, and
float32 rounding alone moves single scans.

``available()`` is False where numba is not installed or the loops are turned off; ``phasing`` then runs its
NumPy form, the reference. Compiled once per machine (``cache=True``: about 1.7 s on first use).
"""

from __future__ import annotations

import os

import numpy as np

try:
    import numba
except ImportError:  # optional at run time: NumPy does everything
    numba = None


def available() -> bool:
    """Whether the fused loops run: numba there, and not turned off (``CDI_LIVE_KERNELS=0``)."""
    return numba is not None and os.environ.get("CDI_LIVE_KERNELS", "1") != "0"


def fits(*arrays) -> bool:
    """Whether arrays can go to the loops as they are: C-contiguous, one shape."""
    return all(a.flags.c_contiguous and a.shape == arrays[0].shape for a in arrays)


def _jit(function):
    """Compiled for this machine, cached on disk where numba finds a writable place (else in each process)."""
    try:
        return numba.njit(cache=True, nogil=True, fastmath=True)(function)
    except RuntimeError:  # no cache location (a read-only install without a home): compiled in each process
        return numba.njit(nogil=True, fastmath=True)(function)


if numba is not None:

    @_jit
    def _impose(field, magnitude, measured, blurred, centre, background, faint, squared, faint_ratio):
        one = np.float32(1)
        for b in range(field.shape[0]):
            total, ratios, count = 0.0, 0.0, 0
            for i in range(field.shape[1]):
                f = field[b, i]
                power = f.real * f.real + f.imag * f.imag
                if blurred.shape[0]:  # the blur keeps at least its central weight of the voxel's own intensity
                    power = max(blurred[b, i], power * centre[b])
                if background.shape[0]:
                    power += background[b]
                m = np.sqrt(power)
                w = np.float32(measured[b, i]) if measured.shape[0] else one
                d = (m - magnitude[b, i]) * w
                total += d * d
                ratio = w * magnitude[b, i] / max(m, np.float32(1e-12)) + (one - w)
                if faint.shape[0] == 0 or faint[b, i]:
                    ratios += ratio * ratio
                    count += 1
                field[b, i] = complex(f.real * ratio, f.imag * ratio)
            squared[b] = total
            faint_ratio[b] = ratios / max(count, 1)

    @_jit
    def _hio(projected, obj, support, beta):
        one = np.float32(1)
        for b in range(projected.shape[0]):
            for i in range(projected.shape[1]):
                p = projected[b, i]
                o = obj[b, i]
                s = np.float32(support[b, i])
                projected[b, i] = complex(s * p.real + (one - s) * (o.real - beta * p.real),
                                          s * p.imag + (one - s) * (o.imag - beta * p.imag))


_NONE_F = np.zeros((0, 0), np.float32)
_NONE_B = np.zeros((0, 0), bool)
_NONE_1 = np.zeros(0, np.float32)


def impose_magnitude(field: np.ndarray, magnitude: np.ndarray, measured: np.ndarray | None = None,
                     blurred: np.ndarray | None = None, centre: np.ndarray | None = None,
                     background: np.ndarray | None = None, faint: np.ndarray | None = None):
    """The modulus constraint in place on far fields (B, …) complex64: F ← F·M/m on the ``measured`` voxels (all
    when None), unchanged elsewhere, where m is the model's modulus: |F|, or √(max(|F|² ⊛ G, c·|F|²) + b) with
    ``blurred`` = |F|² ⊛ G, the blur's ``centre`` weight c and the flat ``background`` b per run (as
    ``coherence.modulus``). Returns Σ (m − M)² over the measured voxels per run (float64, χ's numerator) and the
    mean of (M/m)² over the ``faint`` voxels (all when None; 1 off the measured ones): the background's EM factor."""
    rows = len(field)
    squared, faint_ratio = np.empty(rows, np.float64), np.empty(rows, np.float64)
    flat = lambda a, none: none if a is None else a.reshape(rows, -1)  # noqa: E731
    _impose(field.reshape(rows, -1), magnitude.reshape(rows, -1), flat(measured, _NONE_B), flat(blurred, _NONE_F),
            _per_run(centre, rows), _per_run(background, rows),
            flat(faint, _NONE_B), squared, faint_ratio)
    return squared, faint_ratio


def _per_run(values, rows: int) -> np.ndarray:
    """One float32 per run (a single value stands for all), or the empty marker for none."""
    if values is None:
        return _NONE_1
    return np.ascontiguousarray(np.broadcast_to(np.asarray(values, np.float32).reshape(-1), rows))


def hio_update(projected: np.ndarray, obj: np.ndarray, support: np.ndarray, beta: float) -> np.ndarray:
    """HIO's real-space step in place on ``projected``: kept inside the support, ρ − β·ρ' outside. Returns it."""
    rows = len(projected)
    _hio(projected.reshape(rows, -1), obj.reshape(rows, -1), support.reshape(rows, -1), np.float32(beta))
    return projected


def warm_up() -> None:
    """Compile the loops now (or load them from numba's cache): a worker pays this when it starts, not in its first
    scan's time (on this machine about 1.7 s to compile, 0.6 s to load, numba's import included)."""
    if not available():
        return
    field, magnitude, every = np.ones((1, 8), np.complex64), np.ones((1, 8), np.float32), np.ones((1, 8), bool)
    impose_magnitude(field, magnitude)
    impose_magnitude(field, magnitude, every, magnitude.copy(), [0.5], [0.1], every)
    hio_update(field, field.copy(), every, 0.9)
