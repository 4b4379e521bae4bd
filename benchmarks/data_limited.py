"""How far from what the data allow is the refined stage (issue 31)? Photon-limited scans, answer against the truth's fit.

Crystals of ``crystals.simulated_scan`` at one photon count (default 10⁶, where the verdict's precision is lowest),
each refined as the service refines it, and twice more from there with the refined plan's last steps (``20*ER`` →
tighten → ``20*ER`` on all data → AD polish):

    answer        the refined stage (``stages.reconstruct(…, refine=True)``)
    from truth    the last steps started from the true crystal: the phase error these data allow (no search can
                  start nearer), and its χ_free (the data's preference: lower predicts the withheld voxels better)
    restarted     the last steps from the answer again, and from its uniform-density restarts (its phase, a flat
                  amplitude on its support at 0.3 and 0.5 of the peak: ``phasing.uniform_density``); the lowest
                  χ_free of the three

Reports per crystal and the medians. ``--no-flatten`` measures the refined plan without its own flatten step.

    .venv/bin/python benchmarks/data_limited.py [--seeds 4243,4244,4245] [--count 8] [--photons 1e6] [--no-flatten]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks import variants  # noqa: E402

from shared.nn.inference import Predictor  # noqa: E402
from shared.physics import crystals, fourier, metrics, phasing  # noqa: E402
from shared.solver.evaluation import SUCCESS  # noqa: E402
from shared.solver.plans import REFINE_PLAN, converge  # noqa: E402
from shared.solver.stages import reconstruct  # noqa: E402

RESTARTS = (0.3, 0.5)


def measure(seed: int, index: int, photons: float, predictor) -> dict:
    intensity, amplitude, phase, _, _ = crystals.simulated_scan(32, seed, index, index, True, (photons, photons))
    truth = fourier.make_object(amplitude, phase).astype(np.complex64)
    data = np.round(intensity).astype(np.float32)
    refined = reconstruct(data[None], predictor, refine=True)["refined"]
    answer = (refined.amplitude[0] * np.exp(1j * refined.phase[0])).astype(np.complex64)
    tail = dataclasses.replace(REFINE_PLAN, starts=("previous",), explore=(), converge="20*ER", flatten=())
    starts = [truth, answer] + [phasing.uniform_density(answer[None], t)[0][0] for t in RESTARTS]
    ended = converge(np.repeat(data[None], len(starts), 0), np.stack(starts), plan=tail, warm=starts,
                     counting=[True] * len(starts))
    error = lambda obj: metrics.errors(obj, truth)["phase_unweighted"]  # noqa: E731
    best = 1 + int(np.argmin(ended.chi_free[1:]))
    return {"crystal": f"{seed}/{index}", "answer": error(answer), "answer_chi_free": float(refined.info["chi_free"][0]),
            "verdict": refined.info["verdict"][0], "start": refined.info["start"][0],
            "answer_again_chi_free": float(ended.chi_free[1]), "from_truth": error(ended.obj[0]), "truth_chi_free": float(ended.chi_free[0]),
            "restarted": error(ended.obj[best]), "restarted_chi_free": float(ended.chi_free[best]),
            "restart_kept": ["answer", *[f"flat {t:g}" for t in RESTARTS]][best - 1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="4243,4244,4245")
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--photons", type=float, default=1e6)
    parser.add_argument("--no-flatten", action="store_true", help="the refined plan without its flatten step")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.no_flatten:
        variants.without_flatten()
    predictor, rows = Predictor(), []
    for seed in map(int, args.seeds.split(",")):
        for index in range(args.count):
            rows.append(measure(seed, index, args.photons, predictor))
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in rows[-1].items()}), flush=True)
    print(f"\n| {len(rows)} crystals, {args.photons:g} photons | median phase error | right (< {SUCCESS} rad) |")
    print("|---|---|---|")
    for key in ("answer", "from_truth", "restarted"):
        values = np.array([r[key] for r in rows])
        print(f"| {key.replace('_', ' ')} | {np.median(values):.3f} | {(values < SUCCESS).sum()}/{len(rows)} |")
    prefer = sum(r["truth_chi_free"] < r["answer_again_chi_free"] for r in rows)
    print(f"\nthe truth's fit predicts the withheld voxels better than the answer's (the same last steps) on "
          f"{prefer}/{len(rows)}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
