"""Mirror averaging: the network asked about the mirror images of a diffraction pattern, its answers averaged.

A crystal mirrored on any of its axes diffracts into the same pattern mirrored (|F| of ρ(−x, y, z) is
M(−q_x, q_y, q_z)): an exact symmetry of the forward model, which the network has learned only roughly. Each mirror
image's answer is mirrored back, brought to the plain answer's twin and global phase (neither is fixed by the data),
and the answers are averaged as complex fields. Structure they agree on stays; phase the network makes up
differently for each image averages towards flat.

Only the detector axes are mirrored (4 images): a partial scan lacks its last frames, and a mirror of the rocking
axis would show the network a scan that lacks its first ones, which it never saw in training (on seed 9962 the
previews with 60 % of the frames were right on 4 of 96 with all 8 mirrors, 10 without any).

Measured (``benchmarks/network_phase.py``, seeds 9960 and 9961, 32 crystals per family): the median plain phase error
fell on every family (facets 0.205–0.226 → 0.191–0.210, fill 0.391–0.484 → 0.364–0.405, the held-out defects
0.682–0.719 → 0.644–0.660), and the share of scans where the network's phase beats a flat one rose from 38–53 % to
62–66 % on defects. It costs 4 network evaluations a scan. Pure functions on arrays.
"""

from __future__ import annotations

import itertools

import numpy as np

AXES = (1, 2, 3)  # rocking, detector rows, detector columns
DETECTOR = (2, 3)
MIRRORS = tuple(axes for count in range(3) for axes in itertools.combinations(DETECTOR, count))  # () first: plain


def mirror(x: np.ndarray, axes) -> np.ndarray:
    """A batch (B, n, n, n) mirrored on ``axes`` about index n//2 (the fftshift grid's centre, where q = 0 sits)."""
    for axis in axes:
        x = np.roll(np.flip(x, axis=axis), 1, axis=axis)
    return x


def images(magnitudes: np.ndarray) -> np.ndarray:
    """(B, …) magnitudes → (M·B, …), M = len(MIRRORS): every mirror image of the batch, mirror by mirror (the
    plain batch first)."""
    return np.concatenate([mirror(magnitudes, axes) for axes in MIRRORS])


def average(amplitude: np.ndarray, phase: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The network's answers to ``images(…)`` (M·B, …) → one answer per scan: each mirrored back, aligned on the
    plain answer (twin, global phase), averaged; the amplitude is the mean amplitude, the phase the mean field's."""
    answers = np.split((amplitude * np.exp(1j * phase)).astype(np.complex64), len(MIRRORS))
    plain = answers[0]
    fields = [_aligned(plain, mirror(answer, axes)) for answer, axes in zip(answers, MIRRORS)]
    amplitudes = np.mean([np.abs(f) for f in fields], axis=0)
    return amplitudes.astype(np.float32), np.angle(np.mean(fields, axis=0)).astype(np.float32)


def _aligned(reference: np.ndarray, field: np.ndarray) -> np.ndarray:
    """``field`` or its twin conj(ρ(−r)), whichever overlaps ``reference`` more, with the global phase of that."""
    twin = mirror(np.conj(field), AXES)
    overlaps = [np.sum(np.conj(reference) * f, axis=AXES) for f in (field, twin)]
    use_twin = np.abs(overlaps[1]) > np.abs(overlaps[0])
    chosen = np.where(use_twin[:, None, None, None], twin, field)
    overlap = np.where(use_twin, overlaps[1], overlaps[0])
    return chosen * np.exp(-1j * np.angle(overlap)).astype(np.complex64)[:, None, None, None]
