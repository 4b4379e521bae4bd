"""The fused ER/HIO loops (``shared.physics.kernels``, numba) against NumPy's iteration, in the same run.

    iteration   one HIO iteration on batches of 1, 8 and 32 scans of 32³: the coherent model, and the whole model
                (frames left free, a blur, a flat background fitted on faint voxels): ms, NumPy vs fused
    refined     the refined stage (`cdi-live reconstruct --refine` defaults) on ``--count`` scans of each family,
                batched as the CLI batches: seconds per scan, right (plain phase error < 0.1 rad), median error
    erhio4      `phase-retrieve --starts 4` (the textbook ER/HIO, best of 4): the yardstick runs the same iteration
    scan54      the refined stage of APS scan 54 (201×256², binned to 128³), without the full-grid stage: seconds, χ
    Each solver case runs in its own process, once with ``CDI_LIVE_KERNELS=0`` (NumPy) and once with the loops.

    .venv/bin/python benchmarks/phasing_kernels.py [--count 16] [--seed 4781] [--families fill,defects]
                                                   [--skip-scan54] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RIGHT = 0.1  # rad


def iteration_rows(repeats: int = 30) -> list[dict]:
    import numpy as np

    from shared.physics import coherence, phasing

    rows, rng = [], np.random.default_rng(0)
    for batch in (1, 8, 32):
        shape = (batch, 32, 32, 32)
        magnitude = rng.random(shape, dtype=np.float32)
        obj = (rng.random(shape) * np.exp(2j * np.pi * rng.random(shape))).astype(np.complex64)
        obj *= np.sqrt((magnitude**2).sum() / ((np.abs(obj) ** 2).sum() * 32**3))
        support, measured, faint = rng.random(shape) < 0.3, rng.random(shape) < 0.9, rng.random(shape) < 0.5
        models = {"coherent": {},
                  "whole model": dict(measured=measured, coherence=coherence.of(shape[1:], [[0.5, 0.8, 1.0]] * batch),
                                      background=np.full(batch, 1e-3, np.float32), faint=faint)}
        for model, extra in models.items():
            row = {"batch": batch, "model": model}
            for name, flag in (("numpy", "0"), ("fused", "1")):
                os.environ["CDI_LIVE_KERNELS"] = flag
                starts = [obj.copy() for _ in range(repeats + 1)]
                state = phasing.PhasingState(magnitude, starts[0], support, **extra)
                phasing.hybrid_input_output(state)  # compiled, planned
                began = time.perf_counter()
                for start in starts[1:]:
                    state.obj = start
                    phasing.hybrid_input_output(state)
                row[name] = (time.perf_counter() - began) / repeats * 1e3
            row["speed-up"] = row["numpy"] / row["fused"]
            rows.append(row)
    os.environ.pop("CDI_LIVE_KERNELS", None)
    return rows


def solver_case(case: str, count: int, seed: int) -> dict:
    """One case in this process (``CDI_LIVE_KERNELS`` set by the caller): 'refined:<family>', 'erhio4:<family>',
    'scan54'."""
    import numpy as np

    from shared.nn.inference import Predictor
    from shared.physics import phasing
    from shared.solver import evaluation
    from shared.solver.stages import reconstruct
    from shared.wire import realdata

    if case == "scan54":
        predictor = Predictor()
        reconstruct(realdata.paper_intensity()[None], predictor, refine=True)  # warm-up: TensorFlow, the loops
        began = time.perf_counter()
        stage = reconstruct(realdata.scan54_frames()[None], predictor, refine=True, full_grid=False)["refined"]
        return {"seconds": time.perf_counter() - began, "chi": float(stage.chi[0])}
    what, family = case.split(":")
    intensity, truth, _ = evaluation.population(family, count, seed)
    if what == "erhio4":
        phasing.phase_retrieve(intensity[:1], "2*HIO+2*ER", starts=1)  # warm-up: the loops, FFTW's plans
        began = time.perf_counter()
        objects = np.concatenate([phasing.phase_retrieve(intensity[i:i + 8], starts=4, seed=i)[0]
                                  for i in range(0, count, 8)])
    else:
        predictor = Predictor()
        reconstruct(intensity[:2], predictor, refine=True)  # warm-up
        began = time.perf_counter()
        objects = []
        for first in range(0, count, 16):  # the CLI's batch
            stage = reconstruct(intensity[first:first + 16], predictor, refine=True)["refined"]
            objects += list((stage.amplitude * np.exp(1j * stage.phase)).astype(np.complex64))
    seconds = time.perf_counter() - began
    errors = np.array(evaluation.all_errors(np.stack(objects), truth)["phase_unweighted"])
    return {"seconds_per_scan": seconds / count, "right": int((errors < RIGHT).sum()),
            "median_error": float(np.median(errors)), "count": count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--seed", type=int, default=4781)
    parser.add_argument("--families", default="fill,defects")
    parser.add_argument("--skip-scan54", action="store_true")
    parser.add_argument("--json")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(solver_case(args.case, args.count, args.seed)))
        return
    from shared.physics import kernels

    print(f"numba installed: {kernels.numba is not None}")
    report = {"iteration": iteration_rows()}
    print("\n| batch | model | NumPy ms | fused ms | speed-up |\n|---|---|---|---|---|")
    for r in report["iteration"]:
        print(f"| {r['batch']} | {r['model']} | {r['numpy']:.2f} | {r['fused']:.2f} | {r['speed-up']:.2f}× |",
              flush=True)
    cases = [f"{what}:{family}" for family in args.families.split(",") for what in ("refined", "erhio4")]
    cases += [] if args.skip_scan54 else ["scan54"]
    for case in cases:
        for name, flag in (("numpy", "0"), ("fused", "1")):
            out = subprocess.run([sys.executable, __file__, "--case", case, "--count", str(args.count),
                                  "--seed", str(args.seed)], capture_output=True, text=True, check=True,
                                 env={**os.environ, "CDI_LIVE_KERNELS": flag}).stdout.strip().splitlines()[-1]
            report[f"{case}:{name}"] = json.loads(out)
            print(case, name, out, flush=True)
    print("\n| case | NumPy | fused | speed-up |\n|---|---|---|---|")
    for case in cases:
        a, b = report[f"{case}:numpy"], report[f"{case}:fused"]
        key = "seconds" if case == "scan54" else "seconds_per_scan"
        quality = (lambda r: f"χ {r['chi']:.4f}") if case == "scan54" else \
            (lambda r: f"right {r['right']}/{r['count']}, median {r['median_error']:.3f}")
        print(f"| {case} | {a[key]:.2f} s ({quality(a)}) | {b[key]:.2f} s ({quality(b)}) | {a[key] / b[key]:.2f}× |")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
