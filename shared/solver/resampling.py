"""Would this search land within 0.1 rad at this scan's photons? A parametric bootstrap of the answer.

    resample  Poisson counts drawn from the answer's own model (its far field, with the blur and flat
              background it was fitted with) at the scan's photon step, on the voxels that were measured
    search    the plan's first run (``shared.solver.plans.converge``), on every resample of a batch at once, from
              the scan's own starts (the network's prediction), with the answer's blur: the search that found the
              answer, so only answers the first run found are checked (``EVERY_SEARCH``)
    error     each resample's answer against the answer, as the evaluation measures against the truth: the
              plain phase error over the crystal, offset, sub-voxel shift, ramp and twin removed
              (``shared.physics.metrics.errors``). It is the error this search makes on data like these
              when the answer is the truth: the resampled_error is the largest of RESAMPLES

Why: on noisy data a wrong basin can predict the withheld voxels down to their floor and both finalists can
sit in it (one data set, one noise). Noisy platelets of a held-out family were called converged at 0.19 and
0.28 rad (seed 4851). Their resamples landed as far from them as they were from the truth
(docs/BENCHMARKS.md, "Thirty-third session"): the search's own error, at the scan's own photons.

Pure functions on arrays, around ``converge``.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from shared.physics import metrics
from shared.solver import trust
from shared.solver.plans import Plan, converge

RESAMPLES = int(os.environ.get("CDI_LIVE_RESAMPLES", "2"))  # Poisson draws per answer checked (0: no check)
# Only an answer the first run found is checked: the check reruns that search. An answer found by a run again (620
# iterations, other starts) is not: on bright scans the first run's misses on its resamples are the search's, not the
# photons' (seed 4861: 6 right answers of runs again, at 3.5·10⁷–10⁸ photons, resampled 0.12–0.90 rad, all demoted).
EVERY_SEARCH = False
# The resamples' runs are polished as the plan polishes (None; 0: none). Without the polish the check took 0.54
# against 0.94 s per 32³ scan, but that form missed its rule on time (seed 4881: 1.13× pooled, where the processes'
# own spread was ±10 %: 1.06× on a family with no answer checked), so the form measured on seed 4871 stands:
# docs/BENCHMARKS.md, "Thirty-third session".
POLISH_STEPS = None
SEED = 33  # the draws are reproducible: one answer, one verdict
# The phase of a checkpoint whose answers wait for this check alone (``effort.first_run_kept``): resumed from it, only
# the check runs (the service's "preempted" event names it; ``shared.state.scheduling`` ranks it as a run again)
CHECK = "check"


def model_counts(obj: np.ndarray, blur, background: float, total: float) -> np.ndarray:
    """The answer's expected intensity (centred, as the data): |F(ρ)|² ⊛ G_σ scaled to ``total`` over the
    grid less the flat ``background``, plus that background per voxel."""
    power = metrics.model_modulus(obj, blur).astype(np.float64) ** 2
    signal = max(total - background * obj.size, 0.0)
    return power * signal / max(power.sum(), 1e-30) + max(background, 0.0)


def draws(data: np.ndarray, obj: np.ndarray, blur, background: float, measured: np.ndarray | None,
          rng: np.random.Generator) -> list[np.ndarray] | None:
    """RESAMPLES Poisson draws of the answer's model at the data's photon step (None where the data are not
    counts: no noise to draw)."""
    inside = np.ones(data.shape, bool) if measured is None else np.asarray(measured, bool)
    step = trust.photon_step(data[inside])
    if step is None:
        return None
    expected = model_counts(obj, blur, background, float(np.clip(data[inside], 0, None).sum() / inside.mean())) / step
    return [(rng.poisson(expected) * step).astype(np.float32) for _ in range(RESAMPLES)]


def resampled_errors(data: np.ndarray, prediction: np.ndarray, measured: np.ndarray | None, plan: Plan,
                     answer: np.ndarray, blurs: np.ndarray, backgrounds, counting, scans,
                     yield_now=None) -> dict[int, float]:
    """Per scan in ``scans`` (indices into the batch, whose data are counts), the largest phase error of the
    plan's first run on RESAMPLES draws of its answer's model against the answer. One batch per blur.
    ``yield_now``: as ``converge``'s (Preempted: the check is cut short and none is kept)."""
    rng = np.random.default_rng(SEED)
    found: dict[int, float] = {}
    groups: dict[tuple, list] = {}
    for k in scans:
        groups.setdefault(tuple(np.round(np.asarray(blurs[k], np.float64), 4)), []).append(k)
    for blur, members in groups.items():
        drawn, who = [], []
        for k in members:
            made = draws(data[k], answer[k], blur, float(backgrounds[k]), None if measured is None else measured[k],
                         rng)
            if made is not None:
                drawn += made
                who += [k] * len(made)
        if not drawn:
            continue
        coherent = not trust.is_blurred(blur)
        run_plan = dataclasses.replace(plan, coherence=() if coherent else (np.asarray(blur),),
                                       polish_steps=plan.polish_steps if POLISH_STEPS is None else POLISH_STEPS)
        mask = None if measured is None else np.stack([measured[k] for k in who])
        result = converge(np.stack(drawn), prediction[who], mask, run_plan,
                          counting=None if counting is None else np.asarray(counting)[who], yield_now=yield_now)
        for j, k in enumerate(who):
            error = metrics.errors(result.obj[j], answer[k])["phase_unweighted"]
            found[k] = max(found.get(k, 0.0), float(error))
    return found
