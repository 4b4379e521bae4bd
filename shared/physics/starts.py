"""Candidate starts for phase retrieval, built from a network's prediction.

The network's shape is a very good start for projections, its phase less so
(a flat phase often converges more reliably), and it cannot tell a crystal from
its twin. So several starts are run side by side and the data decide:

- ``flat``: the predicted amplitude with a flat phase;
- ``nn``: the prediction as it is;
- ``twin``: the prediction's twin, conj(ρ(−r));
- ``flat_twin``: the inverted amplitude with a flat phase;
- ``random``: the predicted amplitude with a random phase (an ordinary
  random start, but inside the network's support).
"""

from __future__ import annotations

import numpy as np

from shared.physics.metrics import point_inversion, twin


def _flat(obj, rng):
    return np.abs(obj)


def _nn(obj, rng):
    return obj


def _flat_twin(obj, rng):
    return point_inversion(np.abs(obj))


def _random(obj, rng):
    return np.abs(obj) * np.exp(1j * rng.uniform(-np.pi, np.pi, obj.shape))


STARTS = {"flat": _flat, "nn": _nn, "twin": lambda obj, rng: twin(obj), "flat_twin": _flat_twin, "random": _random}


def candidate_starts(prediction: np.ndarray, names, seed: int = 0) -> np.ndarray:
    """(B, n, n, n) complex predictions → (B·S, n, n, n) starts, scan-major (scan b's starts are rows b·S … b·S+S−1)."""
    unknown = [n for n in names if n not in STARTS]
    if unknown:
        raise ValueError(f"unknown start {unknown[0]!r}; use {', '.join(STARTS)}")
    rng = np.random.default_rng(seed)
    return np.stack([STARTS[name](obj, rng) for obj in prediction for name in names]).astype(np.complex64)
