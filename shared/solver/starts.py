"""Candidate starts for phase retrieval, built from a network's prediction.

The network's shape is a very good start for projections, its phase less so
(a flat phase often converges more reliably), and it cannot tell a crystal from
its twin. So several starts are run side by side and the data decide:

- ``flat``: the predicted amplitude with a flat phase;
- ``nn``: the prediction as it is;
- ``twin``: the prediction's twin, conj(ρ(−r));
- ``flat_twin``: the inverted amplitude with a flat phase;
- ``random``: the predicted amplitude with a random phase (an ordinary
  random start, but inside the network's support);
- ``box``: the textbook's start, independent of the network: a random phase in a
  centred box of half the grid (``phasing.box_support``, as ``phase-retrieve``
  and cohere start), for a search the network's shape cannot bias;
- ``previous``: the last answer for the same scan (``warm``: the live view's
  preview from fewer frames), else the predicted amplitude with a flat phase.
"""

from __future__ import annotations

import zlib

import numpy as np

from shared.physics.metrics import point_inversion, twin
from shared.physics.phasing import box_support


def _flat(obj, rng):
    return np.abs(obj)


def _nn(obj, rng):
    return obj


def _flat_twin(obj, rng):
    return point_inversion(np.abs(obj))


def _random(obj, rng):
    return np.abs(obj) * np.exp(1j * rng.uniform(-np.pi, np.pi, obj.shape))


def _box(obj, rng):
    return box_support(obj.shape) * np.exp(1j * rng.uniform(-np.pi, np.pi, obj.shape))


STARTS = {"flat": _flat, "nn": _nn, "twin": lambda obj, rng: twin(obj), "flat_twin": _flat_twin, "random": _random,
          "box": _box}


def candidate_starts(prediction: np.ndarray, names, seed: int = 0, warm=None) -> np.ndarray:
    """(B, n, n, n) complex predictions → (B·S, n, n, n) starts, scan-major (scan b's starts are rows b·S … b·S+S−1).
    ``warm``: per scan, the start ``previous`` (None where a scan has none).

    Each scan draws its random starts from ``seed`` and its own prediction: its answer does not depend on which
    scans share its batch (a run again batches only the scans left uncertain)."""
    unknown = [n for n in names if n not in STARTS and n != "previous"]
    if unknown:
        raise ValueError(f"unknown start {unknown[0]!r}; use {', '.join(STARTS)} or previous")
    warm = [None] * len(prediction) if warm is None else warm

    def start(name, obj, previous, rng):
        if name == "previous":
            return previous if previous is not None else _flat(obj, rng)
        return STARTS[name](obj, rng)

    def starts_of(obj, previous):
        rng = np.random.default_rng([seed, zlib.crc32(np.ascontiguousarray(obj).tobytes())])  # the scan's own
        return [start(name, obj, previous, rng) for name in names]

    return np.stack([candidate for obj, previous in zip(prediction, warm)
                     for candidate in starts_of(obj, previous)]).astype(np.complex64)
