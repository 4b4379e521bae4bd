"""Adaptive effort: more work for a scan whose answer is not trusted yet, none for one that is.

    judge     after a run of the refined stage each scan gets its verdict (``shared.trust``): χ against
              its noise floor, and whether its independent solutions agree
    again     a scan left "uncertain" whose data could allow a verdict (floor ≤ NOISE_LIMIT) runs the
              plan again from new starts (the network's shape with random phases, a new seed), up to
              MAX_RUNS runs in all; a scan that reached its floor stops at once
    answer    the lowest-χ answer of all its runs; its other solutions are the best answer of each other
              run (independent searches: where they disagree is the phase uncertainty)
    where     on refinement grids of at most SMALL_GRID voxels (a run ≲ 1 s on 2 cores, so a run that
              cannot yield keeps live work waiting no longer than that); a larger, binned scan gets its
              further work from the full-grid stage (``shared.fullgrid``)

Pure functions on arrays, around ``shared.pipeline.converge``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from shared import trust
from shared.pipeline import Converged, Plan, converge

MAX_RUNS = 2
AGAIN_STARTS = ("random", "random", "flat", "twin")
SMALL_GRID = 64**3


def verdicts(result: Converged, floors) -> list[str]:
    """Each scan's verdict on its own grid (the run's χ, against the intensity it was fitted to)."""
    out = []
    for k, obj in enumerate(result.obj):
        others = list(result.alternatives[k]) if result.alternatives is not None else []
        support = np.abs(obj) > 0.1 * np.abs(obj).max()
        spread = trust.phase_spread(obj, others) if others else None
        out.append(trust.verdict(float(result.chi[k]), floors[k], spread, support))
    return out


def needs_more(verdict: str, floor: float) -> bool:
    return verdict == "uncertain" and floor <= trust.NOISE_LIMIT


def refine_with_effort(intensity: np.ndarray, prediction: np.ndarray, measured: np.ndarray | None, plan: Plan,
                       floors, first: Converged) -> tuple[Converged, list[int]]:
    """``first`` (a run of ``converge``), with more runs for the scans that need them; returns the merged
    result and the number of runs per scan."""
    runs = [1] * len(first.obj)
    if np.prod(first.obj.shape[1:]) > SMALL_GRID:
        return first, runs
    best = dataclasses.replace(first, obj=np.array(first.obj), support=np.array(first.support),
                               chi=np.array(first.chi), start=list(first.start), seconds=dict(first.seconds),
                               alternatives=None if first.alternatives is None else np.array(first.alternatives))
    answers = [[(float(first.chi[k]), obj)] for k, obj in enumerate(first.obj)]  # every run's best, per scan
    again_plan = dataclasses.replace(plan, starts=AGAIN_STARTS)
    for attempt in range(1, MAX_RUNS):
        todo = [k for k, v in enumerate(verdicts(best, floors)) if needs_more(v, floors[k])]
        if not todo:
            break
        again = converge(intensity[todo], prediction[todo], None if measured is None else measured[todo],
                         again_plan, seed=attempt)
        for j, k in enumerate(todo):
            runs[k] += 1
            answers[k].append((float(again.chi[j]), again.obj[j]))
            if again.chi[j] < best.chi[k]:
                best.obj[k], best.support[k], best.chi[k] = again.obj[j], again.support[j], again.chi[j]
                best.start[k] = f"{again.start[j]} (run {attempt + 1})"
        for name, seconds in again.seconds.items():
            best.seconds[name] = best.seconds.get(name, 0.0) + seconds
        if best.alternatives is not None:  # the runner-up run's answer: an independent solution
            for k in todo:
                runner_up = sorted(answers[k], key=lambda answer: answer[0])[1][1]  # the best is the lowest χ
                best.alternatives[k] = np.repeat(runner_up[None], best.alternatives.shape[1], 0)
    return best, runs
