"""When more frames would not change the reconstruction: the convergence signal of a scan being acquired.

A rocking scan can stop early when two things hold at a preview:

1. **Little signal is left** in the frames not taken yet. The rocking curve (the
   measured intensity summed per frame, on the network's grid) has passed its
   peak, and mirroring the frames still to come about that peak — a rocking
   curve is close to symmetric about the Bragg angle — estimates the intensity
   they would add: at most ``signal_left`` of the whole.
2. **The answer has not jumped**: this preview and the one before agree, up to
   BCDI's ambiguities (shift, phase offset and ramp, twin; ``metrics.errors``):
   phase difference ≤ ``phase_change`` rad, amplitude difference ≤ ``amplitude_change``.

The outer frames carry the high-q detail, so the threshold on the signal left is
strict: cutting where 1 % is left cost up to 0.1 rad of refined phase error.

The thresholds were set on simulated crystals of seed 7100 and measured on others
(``benchmarks/early_stop.py``, docs/early-stop/README.md). Pure functions on arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.physics import metrics


@dataclass(frozen=True)
class Criterion:
    signal_left: float = 0.002  # fraction of the rocking curve's intensity estimated in the frames still to come
    # Safeguards against a preview that jumped (a twin flip, a failed start): a single-start preview varies
    # by 0.1–0.3 rad from one to the next even when more frames change nothing, so these are loose.
    phase_change: float = 0.3  # rad, between successive previews (amplitude-weighted, ambiguities removed)
    amplitude_change: float = 0.3  # relative, between successive previews


CRITERION = Criterion()


def signal_left(intensity: np.ndarray, measured_samples: np.ndarray) -> float:
    """Estimated fraction of the rocking curve's intensity in samples not measured yet (1.0 while the
    peak has not been passed). ``intensity`` is frames-first; ``measured_samples`` flags axis-0 samples."""
    curve = np.asarray(intensity, np.float64).reshape(len(intensity), -1).sum(axis=1)
    measured = np.asarray(measured_samples, bool)
    if not measured.any():
        return 1.0
    if measured.all():
        return 0.0
    taken = np.flatnonzero(measured)
    last = taken.max()
    peak = taken[np.argmax(curve[taken])]
    if peak >= last - 1:  # still rising, or at the top: the other half is all to come
        return 1.0
    to_come = 0.0
    for j in np.flatnonzero(~measured):
        mirror = 2 * peak - j
        # the mirror frame if it was measured; beyond the data, the faintest measured edge
        to_come += curve[mirror] if 0 <= mirror < len(curve) and measured[mirror] else curve[taken].min()
    total = curve[taken].sum() + to_come
    return float(to_come / total) if total > 0 else 1.0


def peak_passed(intensity: np.ndarray, measured_samples: np.ndarray) -> bool:
    """Whether the frames taken have passed the rocking curve's peak (``signal_left`` below 1): before it a preview
    rests on less than half of reciprocal space (``plans.preview_shown``)."""
    return signal_left(intensity, measured_samples) < 1.0


def previews_agree(current: np.ndarray, previous: np.ndarray, criterion: Criterion = CRITERION) -> dict:
    """How much the reconstruction moved between two previews (complex objects on one grid)."""
    change = metrics.errors(current, previous)
    return {"phase_change": change["phase"], "amplitude_change": change["amplitude"],
            "agree": change["phase"] <= criterion.phase_change and change["amplitude"] <= criterion.amplitude_change}


def decide(intensity: np.ndarray, measured_samples: np.ndarray, current: np.ndarray, previous: np.ndarray | None,
           criterion: Criterion = CRITERION) -> dict:
    """The signal for one preview: {converged, signal_left, phase_change, amplitude_change}."""
    left = signal_left(intensity, measured_samples)
    verdict = {"signal_left": left, "phase_change": None, "amplitude_change": None, "converged": False}
    if previous is None or left >= 1.0:  # nothing to compare, or the peak not passed yet
        return verdict
    agreement = previews_agree(current, previous, criterion)
    verdict.update(phase_change=agreement["phase_change"], amplitude_change=agreement["amplitude_change"],
                   converged=agreement["agree"] and left <= criterion.signal_left)
    return verdict
