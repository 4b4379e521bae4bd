"""What the flatten step (``Plan.flatten``: uniform-density restarts of each scan's leading run) costs and gains on
grids larger than the 32³ it was measured on (issues 31, 33): the refined stage with and without it, each variant in
its own process, on the same scans.

    cases      sim<N>   crystals of ``crystals.simulated_scan`` on an N³ grid (their size scales with N), photon
                        counts log-uniform in ``--photons`` (the 32³ gain was largest at 10⁶)
               real     the real sets (``evaluation.real_sets``: the paper's 64³ example, scan 54 at 128³ as counted
                        and as the beamline corrects it): no truth, so χ_free and the time only
    variants   shipped      `cdi-live reconstruct --refine` defaults (the full grid left out: its own stage)
               no_flatten   the same without the flatten step
    per case   right (< 0.1 rad, the BCDI ambiguities removed), median error, seconds per scan, seconds in the
               flatten step, how often a restart took the leading run's place, called converged (right among them)

    .venv/bin/python benchmarks/flatten_grid.py [--families sim64,sim128,real] [--count 8] [--seed 4301]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import variants  # noqa: E402
from shared.wire import realdata  # noqa: E402

PHOTONS = (1e5, 1e7)


def scans(case: str, count: int, seed: int):
    """(names, intensities, counts or None, truths or None) of a case."""
    import numpy as np

    from shared.physics import crystals, fourier
    from shared.solver import evaluation

    if case == "real":
        sets = evaluation.real_sets(realdata.folder(), evaluation.REFINE_SIZE)
        return list(sets), [i for i, _ in sets.values()], [c for _, c in sets.values()], None
    size = int(case[len("sim"):])
    made = [crystals.simulated_scan(size, seed, i, i, True, PHOTONS) for i in range(count)]
    return ([f"{seed}/{i} ({m[4]:.2g} photons)" for i, m in enumerate(made)],
            [np.round(m[0]).astype(np.float32) for m in made], [None] * count,
            [fourier.make_object(m[1], m[2]).astype(np.complex64) for m in made])


def run_case(case: str, variant: str, count: int, seed: int) -> dict:
    import numpy as np

    from shared.nn.inference import Predictor
    from shared.physics import metrics
    from shared.solver import stages

    if variant == "no_flatten":
        variants.without_flatten()
    names, intensities, counts, truths = scans(case, count, seed)
    predictor, rows = Predictor(), []
    for k, (name, intensity, counted) in enumerate(zip(names, intensities, counts)):
        began = time.perf_counter()  # one scan at a time, as the service refines a large one
        refined = stages.reconstruct(intensity[None], predictor, refine=True, full_grid=False,
                                     counts=None if counted is None else counted[None])["refined"]
        row = {"scan": name, "shape": list(intensity.shape), "seconds": time.perf_counter() - began,
               "flatten_seconds": refined.info["stage_seconds"].get("flatten", 0.0),
               "start": refined.info["start"][0], "chi_free": float(refined.info["chi_free"][0]),
               "chi_free_floor": float(refined.info["chi_free_floor"][0]), "verdict": refined.info["verdict"][0],
               "verdict_reason": refined.info["verdict_reason"][0], "runs": refined.info["runs"][0]}
        if truths is not None:
            obj = refined.amplitude[0] * np.exp(1j * refined.phase[0])
            row["error"] = float(metrics.errors(obj.astype(np.complex64), truths[k])["phase_unweighted"])
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    errors = np.array([r.get("error", np.nan) for r in rows])
    converged = np.array([r["verdict"] == "converged" for r in rows])
    return {"family": case, "variant": variant, "count": len(rows), "seed": seed,
            "right": int((errors < 0.1).sum()), "median_error": float(np.median(errors)),
            "seconds_per_scan": float(np.mean([r["seconds"] for r in rows])),
            "flatten_seconds_per_scan": float(np.mean([r["flatten_seconds"] for r in rows])),
            "flattened": sum("flattened" in r["start"] for r in rows), "converged": int(converged.sum()),
            "right_among_converged": int((errors[converged] < 0.1).sum()), "scans": rows}


def main() -> None:
    args = variants.arguments(__doc__.splitlines()[0], 4301, ("shipped", "no_flatten"), "sim64,sim128,real")
    if args.case:
        print(json.dumps(run_case(args.case, args.variant, args.count, args.seed)))
        return
    rows = variants.run_each(__file__, args.families.split(","), args, brief=("scans",))
    print("\n| case | variant | right | median error | converged (right) | s/scan | of it, flatten | restart kept |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['family']} | {r['variant']} | {r['right']}/{r['count']} | {r['median_error']:.3f} "
              f"| {r['converged']} ({r['right_among_converged']}) | {r['seconds_per_scan']:.1f} "
              f"| {r['flatten_seconds_per_scan']:.1f} | {r['flattened']}/{r['count']} |")
    real = [r for r in rows if r["family"] == "real"]
    for r in real:
        for s in r["scans"]:
            print(f"- {r['variant']}: {s['scan']}: χ_free {s['chi_free']:.4f} (floor {s['chi_free_floor']:.4f}), "
                  f"{s['verdict']} ({s['verdict_reason']}), start {s['start']}, {s['seconds']:.1f} s")


if __name__ == "__main__":
    main()
