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
  preview from fewer frames), else the predicted amplitude with a flat phase;
  where ``warm`` holds a stack of answers, the k-th ``previous`` takes the k-th
  (a guided search's bred population: ``bred``).
"""

from __future__ import annotations

import zlib

import numpy as np

from shared.physics.metrics import align_either_twin, point_inversion, twin
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
    names = list(names)
    unknown = [n for n in names if n not in STARTS and n != "previous"]
    if unknown:
        raise ValueError(f"unknown start {unknown[0]!r}; use {', '.join(STARTS)} or previous")
    warm = [None] * len(prediction) if warm is None else warm

    def start(name, obj, previous, rng, k):
        if name == "previous":
            if previous is None:
                return _flat(obj, rng)
            return previous[k] if np.ndim(previous) > np.ndim(obj) else previous
        return STARTS[name](obj, rng)

    def starts_of(obj, previous):
        rng = np.random.default_rng([seed, zlib.crc32(np.ascontiguousarray(obj).tobytes())])  # the scan's own
        return [start(name, obj, previous, rng, names[:k].count("previous")) for k, name in enumerate(names)]

    return np.stack([candidate for obj, previous in zip(prediction, warm)
                     for candidate in starts_of(obj, previous)]).astype(np.complex64)


def bred(alpha: np.ndarray, member: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """A guided search's child of the population's best (``alpha``) and one member: the geometric mean of their
    amplitudes with the mean of their phases, the member aligned on ``alpha`` first (shift, offset, ramp; its twin
    where that fits better). The genetic algorithm's "sqrt_ab" breeding (Chen et al. 2007; cohere's GA; Ulvestad
    et al. 2017 for crystals with defects): what the best run and another agree on is kept, where they differ is
    searched again. ``bred(alpha, alpha)`` is ``alpha``."""
    other = align_either_twin(member, alpha, np.abs(alpha) > threshold * np.abs(alpha).max())
    phase = np.angle(alpha) + 0.5 * np.angle(other * np.conj(alpha))
    return (np.sqrt(np.abs(alpha) * np.abs(other)) * np.exp(1j * phase)).astype(np.complex64)
