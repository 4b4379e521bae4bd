"""The full-grid stage's width (issue 31, item 4): 64³ scans (``tests.test_fullgrid.large_scan``, 10⁸ photons,
coherent or with a detector blur of σ pixel on the full grid) refined at 32³ (as ``--refine-size 32``), then fitted
on the full grid with the refined stage's blur screened on its own grid (``fullgrid.choose_blur``, shipped) and
carried (``width_factors=(1.0,)``, before; only where the refined answer is blurred). One JSON row per scan: the
refined blur, each answer's phase error (rad), blur, χ_free and seconds.

    .venv/bin/python benchmarks/full_grid_width.py [--seed 4821] [--count 12] [--sigma 0] [--blurred-dilation 2]

``--blurred-dilation N`` adds a third fit where the refined answer is blurred: the screened width, its support
dilated by N voxels where the fit's model is blurred (``FullPlan.blurred_dilation``; not shipped).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import numpy as np
    from scipy import ndimage

    from shared.nn.inference import Predictor
    from shared.solver import evaluation, fullgrid, stages
    from tests.test_fullgrid import large_scan

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=4821)
    parser.add_argument("--count", type=int, default=12)
    parser.add_argument("--sigma", type=float, default=0.0, help="detector blur on the full grid (pixel); 0: coherent")
    parser.add_argument("--blurred-dilation", type=int, help="also fit with FullPlan.blurred_dilation set to this")
    args = parser.parse_args()
    predictor = Predictor()

    def error(stage, truth) -> float:
        obj = stage.amplitude * np.exp(1j * stage.phase)
        return round(evaluation.all_errors(obj, truth[None])["phase_unweighted"][0], 4)

    plans = {"screened": fullgrid.FULL_PLAN, "carried": dataclasses.replace(fullgrid.FULL_PLAN, width_factors=(1.0,))}
    if args.blurred_dilation is not None:
        plans[f"blurred_dilation{args.blurred_dilation}"] = dataclasses.replace(
            fullgrid.FULL_PLAN, blurred_dilation=args.blurred_dilation)
    for index in range(args.count):
        counts, truth = large_scan(args.seed, index, 0 if args.sigma else 1e8)
        if args.sigma:  # the detector's blur on the full grid, then counts
            ideal = ndimage.gaussian_filter(counts, (0, args.sigma, args.sigma), mode="wrap")
            counts = np.random.default_rng(args.seed + index).poisson(ideal / ideal.sum() * 1e8).astype(np.float32)
        refined = stages.reconstruct(counts[None], predictor, refine=True, refine_size=32, full_grid=False)["refined"]
        blur = refined.info["coherence_blur"][0]
        row = {"seed": args.seed, "index": index, "sigma": args.sigma, "start": refined.info["start"][0],
               "refined_blur": blur, "refined_error": error(refined, truth)}
        for name, plan in plans.items():
            if name != "screened" and not any(blur):
                continue  # a coherent refined answer is not screened: each is the same fit
            began = time.perf_counter()
            full = stages.full_stage(counts[None], refined.info, refined.finalists, plan=plan)
            row[name] = {"error": error(full, truth), "blur": full.info["coherence_blur"][0],
                         "chi_free": round(full.info["chi_free"][0], 5), "chi": round(float(full.chi[0]), 5),
                         "seconds": round(time.perf_counter() - began, 1), "screen": full.info["fit"][0]["width_screen"]}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
