"""How long can the refinement worker go without a chance to yield? (issues 21, 33)

A live scan's job waits until the job running before it asks ``yield_now`` and gives way. This runs the refined
stage as the worker does (``stages.refined_stage`` with ``yield_now`` and ``requeue_again``, nothing ever asked to
yield) and records when each ask came: the longest stretch between two asks is the longest a live scan can wait
for the cores, beside the worker's own ``YIELD_CHECK_S`` (it asks Redis at most that often).

    scan54    APS 34-ID-C scan 54 (201×256×256 raw counts), binned to 128³: a backlog job
    full      scan 54's full-grid stage (``stages.full_stage``, as the worker runs it), after its refined stage
    live      a simulated 32³ scan (facets, seed 4699), its first run, run again or check: a live job

Each stretch is named by the phase the refined stage was in when it ended (``phases``: seconds per phase from the
stage's own clock). On an idle machine: the worker runs at niceness 10 beside the scan being taken, so its
stretches last longer in the service.

    .venv/bin/python benchmarks/yield_gaps.py [--cases scan54,live] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


def case_input(name: str):
    from shared.physics import families
    from shared.wire import realdata

    if name in ("scan54", "full"):
        frames = realdata.scan54_frames()
        return frames, frames
    scans = families.population("facets", 6, 4699)
    volume = next(s.intensity for s in scans if s.photons > 0)
    return volume, volume


def stretches(name: str) -> dict:
    from shared.nn.inference import Predictor
    from shared.physics import kernels
    from shared.solver import refinement, resampling
    from shared.solver.plans import Preempted
    from shared.solver.stages import full_stage, refined_stage

    kernels.warm_up()
    if hasattr(refinement, "warm_up"):  # the worker's warm-up where this version has it
        refinement.warm_up(batches=(1, resampling.RESAMPLES))
    volume, counts = case_input(name)
    nn = Predictor().reconstruct(volume[None], on_input_grid=False)
    asks = []

    def yield_now() -> bool:
        asks.append(time.perf_counter())
        return False

    refined_asks = None if name == "full" else yield_now
    began = time.perf_counter()
    asks.append(began)
    try:
        stage = refined_stage(volume[None], nn.amplitude, nn.phase, nn.crops, None, on_input_grid=False,
                              yield_now=refined_asks, counts=counts[None], requeue_again=True, inpainted=True)
        phases = stage.info["stage_seconds"]
        if name == "full":  # the worker's call: the refined result's region, floor, blur, background and offset
            info = {key: stage.info[key] for key in ("region", "chi_floor", "coherence_blur", "background",
                                                     "bragg_peak_offset")}
            asks[:] = [time.perf_counter()]
            began = asks[0]
            full = full_stage(volume[None], info, stage.finalists, None, yield_now=yield_now, keep_ramp=False)
            phases = {"fit": full.info["fit"][0]["seconds"], "iterations": full.info["fit"][0]["iterations"]}
    except Preempted:  # never asked to: nothing to report
        raise SystemExit("the stage yielded though never asked to")
    asks.append(time.perf_counter())
    gaps = np.diff(asks)
    longest = np.argsort(gaps)[::-1][:5]
    return {"case": name, "seconds": asks[-1] - began, "asks": len(asks) - 2,
            "longest_s": [round(float(gaps[i]), 3) for i in longest],
            "longest_at_s": [round(float(asks[i] - began), 2) for i in longest],
            "phases": {k: round(float(v), 3) for k, v in phases.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="scan54,full,live")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = []
    for name in args.cases.split(","):
        found = stretches(name)
        results.append(found)
        print(f"{name}: {found['seconds']:.1f} s, {found['asks']} asks; longest stretches without one "
              f"{found['longest_s']} s, ending at {found['longest_at_s']} s; phases {found['phases']}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
