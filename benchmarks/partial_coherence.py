"""The real-data model (issue 31, item 4): the refined stage with and without partial coherence and with and
without the flat background, in the same run.

    families   the refined stage (`cdi-live reconstruct --refine` defaults, batched as the CLI batches) on each
               crystal family (``shared.physics.families``: a third of each is measured with a detector blur, a
               third with a flat background), each variant in its own process:
                 shipped        as shipped (a scan left uncertain runs again with blur widths 0, 0.5 and 1 voxel:
                                ``shared.solver.effort.AGAIN_COHERENCE``; a flat background fitted to counts)
                 coherent       the run again with width 0 only
                 no_background  no flat background
               right (plain phase error < 0.1 rad), on the blurred and the background scans too, median error,
               seconds per scan, the width chosen against the true blur, the background fitted against the true one
    paper      the paper's 64³ example: χ, χ_free against its floor, the width and background chosen, every way

    .venv/bin/python benchmarks/partial_coherence.py [--count 24] [--seed 5150] [--families facets,defects,fill]
                                                     [--variants shipped,coherent,no_background] [--json rows.json]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import variants  # noqa: E402

from shared.wire import realdata  # noqa: E402
VARIANTS = ("shipped", "coherent", "no_background")  # also "no_refit", "deblurred" (``run_again.py``'s)


def run_case(case: str, variant: str, count: int, seed: int) -> dict:
    import dataclasses

    import numpy as np

    from shared.nn.inference import Predictor
    from shared.solver import effort, evaluation, stages
    from shared.solver.plans import REFINE_PLAN

    if variant == "coherent":
        effort.AGAIN_COHERENCE = (0.0,)
    if variant in ("no_refit", "deblurred"):  # as shipped before the thirtieth session: no steps after the runs
        variants.without_width_refit()
    if variant == "deblurred":  # its whole form: every width refitted by the long schedule, every fit polished
        variants.with_deblurred_search()
    plan = dataclasses.replace(REFINE_PLAN, background=variant != "no_background")
    predictor = Predictor()
    if case == "paper":
        intensity = realdata.paper_intensity()[None]
        truth, kinds = None, None
    else:
        intensity, truth, kinds = evaluation.population(case, count, seed)
    began = time.perf_counter()
    refined = stages.reconstruct(intensity, predictor, refine=True, plan=plan)["refined"]
    seconds = (time.perf_counter() - began) / len(intensity)
    info = refined.info
    row = {"case": case, "variant": variant, "seconds_per_scan": seconds,
           "blur_chosen": [b[1] for b in info["coherence_blur"]], "chi": [float(c) for c in refined.chi],
           "chi_free": info["chi_free"], "chi_free_floor": info["chi_free_floor"], "verdict": info["verdict"],
           "background_fitted": info["background"]}
    if truth is not None:
        obj = (refined.amplitude * np.exp(1j * refined.phase)).astype(np.complex64)
        errors = np.array(evaluation.all_errors(obj, truth)["phase_unweighted"])
        blurred = np.array([k["blur"] > 0 for k in kinds])
        flat = np.array([k["background"] > 0 for k in kinds])
        converged = np.array([v == "converged" for v in info["verdict"]])
        row.update(right=int((errors < 0.1).sum()), right_blurred=int((errors[blurred] < 0.1).sum()),
                   blurred=int(blurred.sum()), median_error=float(np.median(errors)),
                   median_error_blurred=float(np.median(errors[blurred])), converged=int(converged.sum()),
                   right_among_converged=int((errors[converged] < 0.1).sum()),
                   right_background=int((errors[flat] < 0.1).sum()), with_background=int(flat.sum()),
                   median_error_background=float(np.median(errors[flat])),
                   blur_true=[k["blur"] for k in kinds], background_true=[k["background"] for k in kinds],
                   errors=[round(float(e), 4) for e in errors], count=len(errors))
    return row


def main() -> None:
    args = variants.arguments(__doc__.splitlines()[0], 5150, VARIANTS)
    if args.case:
        print(json.dumps(run_case(args.case, args.variant, args.count, args.seed)))
        return
    rows = variants.run_each(__file__, [*args.families.split(","), "paper"], args)
    print("\n| case | variant | right | blurred right | median error | blurred median | background right "
          "| background median | converged (right) | s/scan |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["case"] == "paper":
            continue
        print(f"| {r['case']} | {r['variant']} | {r['right']}/{r['count']} | {r['right_blurred']}/{r['blurred']} "
              f"| {r['median_error']:.3f} | {r['median_error_blurred']:.3f} "
              f"| {r['right_background']}/{r['with_background']} | {r['median_error_background']:.3f} | {r['converged']} "
              f"({r['right_among_converged']}) | {r['seconds_per_scan']:.2f} |")
    for r in rows:
        if r["case"] == "paper":
            print(f"paper example, {r['variant']}: χ {r['chi'][0]:.4f}, χ_free {r['chi_free'][0]:.4f} "
                  f"(floor {r['chi_free_floor'][0]:.4f}), blur σ {r['blur_chosen'][0]}, "
                  f"background {r['background_fitted'][0]:.3g}, {r['seconds_per_scan']:.1f} s")


if __name__ == "__main__":
    main()
