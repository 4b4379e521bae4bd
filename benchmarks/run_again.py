"""How long a run again searches (issue 31): the refined stage with the run again's converge at 100 iterations
(as the first run's) and at 620 (the textbook's, as shipped), beside ER/HIO ×4, in the same run.

    families   each crystal family (``shared.physics.families``), each variant in its own process:
                 shipped        `cdi-live reconstruct --refine` defaults: a scan left uncertain runs again with
                                ``effort.AGAIN_CONVERGE`` = ``phasing.PAPER_SCHEDULE`` (620 iterations)
                 short          the same, the run again's converge as the first run's (``REFINE_PLAN.converge``)
                 erhio4         `phase-retrieve --starts 4`: the textbook ER/HIO from a centred half-size box,
                                best of 4 random starts by χ (the careful user's yardstick)
               right (plain phase error < 0.1 rad, the BCDI ambiguities removed), median error, seconds per scan
               (batched, this machine's CPU), called converged and right among them

    .venv/bin/python benchmarks/run_again.py [--count 24] [--seed 9906] [--families facets,defects,fill]
                                             [--variants shipped,short,erhio4] [--json rows.json]
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import variants  # noqa: E402

VARIANTS = ("shipped", "short", "erhio4")
# also: "no_photons" (no run again where the floor is above NOISE_LIMIT), "stall<fraction>" (``effort.AGAIN_STALL``),
# "runs<n>" (``effort.MAX_RUNS``: runs2 is the refined stage without the textbook's own search), "textbook_all"
# (that search for photon-limited scans too),
# "plain_network" (the network's plain answer, without the mirror average),
# "no_flatten" (the refined plan without its uniform-density restarts, ``Plan.flatten``),
# "raar" (the runs after the first converge with RAAR where they run HIO: ``phasing.relaxed_averaged_alternating_
# reflections``), "raar_all" (the first run's explore and converge too), "oss" and "oss_all" (the same with OSS,
# ``phasing.oversampling_smoothness``), "guided<n>" (the textbook's own search as a guided one, n generations of
# ``effort.GENERATION_SCHEDULE``, each member bred with the best between them: ``effort.guided``), "guided<n>_long"
# (each generation as long as the textbook), "no_refit" (the refined stage without its steps after the runs: no width
# refit, no deblurred search; shipped before the thirtieth session), "widths" (each answer of a scan that ran again
# refitted at other blurs: ``effort.refit_widths``; "widths_all": coherent answers too; "widths_same": each at its own width, the iterations
# alone; a suffix "_<schedule>" sets ``effort.WIDTH_SCHEDULE``), "deblurred" (widths refitted on a finer grid, then a
# blurred answer's search again on its data deblurred at that width: ``effort.DEBLURRED_SEARCH``), "deblurred_lean" (the
# same with five widths, each fitted by 50*ER), "deblurred_fast" (the same widths as "deblurred", screened by 20*ER, the
# best two refitted by 100*HIO+30*ER, the fits without the AD polish but the one kept: shipped since the thirtieth
# session). "widths*", "deblurred" and "deblurred_lean" start from "no_refit", as measured,
# "fused" (ER/HIO's element-wise work in the fused loops of ``shared.physics.kernels``, stated explicitly: on by default
# since the thirty-second session; "erhio4_fused" the same for the yardstick), "numpy_iteration" (NumPy's iteration,
# ``CDI_LIVE_KERNELS=0``), "no_resample" (the verdict without its check on Poisson resamples of the answer,
# ``shared.solver.resampling``), "every_search" (that check for answers found by a run again too), "no_wiener" (the
# answers as fitted, without the Wiener estimate on photon counts: ``Plan.wiener``, on since the thirty-sixth session),
# "blur_threshold<x>" (runs with a blur model shrink-wrapped at x of the peak: ``Plan.blur_threshold``;
# "blur_threshold_none": at the plan's ``threshold``, as every other run), "wider_promise" (an answer a run again
# found on photon counts may be called converged: ``trust.WIDER_SEARCH_PROMISE``, off since the thirty-seventh session),
# "wider_none" (none may, a coherent one neither: ``trust.WIDER_COHERENT_PROMISE`` off, as the thirty-seventh session
# shipped; on since the thirty-eighth), "blur_margin<x>" (a blurred fit replaces a coherent answer only where it
# lowers χ_free by more than the fraction x: ``effort.BLUR_MARGIN``)
TRUST_FIELDS = ("verdict_reason", "chi_free", "chi_free_floor", "chi_floor", "wider_search",
                "coherence_blur")  # per scan, in --json
ERHIO_BATCH = 8  # scans per phase_retrieve call (as the evaluation batches them)


def run_case(family: str, variant: str, count: int, seed: int) -> dict:
    import numpy as np

    from shared.physics import phasing
    from shared.solver import effort, evaluation

    label = variant
    if variant in ("numpy_iteration", "fused", "erhio4_fused"):  # read at every iteration (``kernels.available``)
        os.environ["CDI_LIVE_KERNELS"] = "0" if variant == "numpy_iteration" else "1"
        variant = "erhio4" if variant == "erhio4_fused" else "shipped"
    intensity, truth, kinds = evaluation.population(family, count, seed)
    verdicts, starts, resampled = [""] * count, [""] * count, [None] * count
    trusted = {}  # per scan, the refined stage's trust fields (to weigh another verdict rule on the same answers)
    if variant == "erhio4":
        began = time.perf_counter()
        obj = np.concatenate([phasing.phase_retrieve(intensity[i:i + ERHIO_BATCH], starts=4, seed=i)[0]
                              for i in range(0, count, ERHIO_BATCH)])
    else:
        from shared.nn.inference import Predictor
        from shared.solver import stages
        from shared.solver.plans import REFINE_PLAN

        if variant == "short":
            effort.AGAIN_CONVERGE = REFINE_PLAN.converge
        if variant == "no_photons":
            effort.AGAIN_SLACK = float("inf")
        if variant.startswith("runs"):  # e.g. runs2: without the textbook's own search (``effort.MAX_RUNS``)
            effort.MAX_RUNS = int(variant[len("runs"):])
        if variant == "textbook_all":  # the textbook's search for photon-limited scans too
            effort.TEXTBOOK_PHOTON_LIMITED = True
        if variant == "no_flatten":
            variants.without_flatten()
        if variant in ("raar", "raar_all", "oss", "oss_all"):  # another algorithm where the refined stage runs HIO
            variants.with_algorithm(variant.split("_")[0].upper(), first_run=variant.endswith("_all"))
        if variant.startswith("guided"):  # e.g. guided3, guided3_long
            effort.TEXTBOOK_GENERATIONS = int(variant[len("guided"):].split("_")[0])
            if variant.endswith("_long"):
                effort.GENERATION_SCHEDULE = phasing.PAPER_SCHEDULE
        if variant.startswith("widths") or variant in ("no_refit", "deblurred", "deblurred_lean"):
            variants.without_width_refit()  # the forms measured before the thirtieth session start from none
        if variant.startswith("widths"):  # a blurred answer's width refined: widths[_all][_<schedule>]
            effort.WIDTH_FACTORS = (0.7, 0.85, 1.0, 1.15, 1.3)
            rest = variant[len("widths"):]
            if rest.startswith("_all"):  # coherent answers too
                effort.WIDTH_COHERENT = (0.0, 0.35, 0.5, 0.7, 0.9)
                rest = rest[len("_all"):]
            if rest.startswith("_same"):  # every answer refitted at its own width: the schedule's iterations alone
                effort.WIDTH_FACTORS, effort.WIDTH_COHERENT = (1.0,), (0.0,)
                rest = rest[len("_same"):]
            if rest:
                effort.WIDTH_SCHEDULE = rest[1:]
        if variant.startswith("deblurred"):  # the width refitted on a finer grid, then a search on data deblurred at it
            variants.with_deblurred_search()
            if variant == "deblurred_lean":  # five widths, each fitted by ER alone
                effort.WIDTH_FACTORS, effort.WIDTH_COHERENT = (0.7, 0.85, 1.0, 1.15, 1.3), (0.0, 0.4, 0.6, 0.8, 1.0)
                effort.WIDTH_SCHEDULE = "50*ER"
            if variant == "deblurred_fast":  # the widths screened by 20*ER, the best two refitted; one polish
                variants.with_fast_width_refit()
        if variant == "no_resample":  # the verdict without its check on resamples (``shared.solver.resampling``)
            from shared.solver import resampling

            resampling.RESAMPLES = 0
        if variant == "every_search":  # the check for answers of a run again too (the first form measured)
            from shared.solver import resampling

            resampling.EVERY_SEARCH = True
        if variant == "no_wiener":  # the answers as fitted, without the Wiener estimate (before the 36th session)
            variants.without_wiener()
        if variant.startswith("blur_threshold"):  # e.g. blur_threshold0.15; blur_threshold_none: as every run
            rest = variant[len("blur_threshold"):]
            variants.with_blur_threshold(None if rest == "_none" else float(rest))
        if variant == "wider_promise":  # a run again's answer on counts may be called converged (before the 37th)
            from shared.solver import trust

            trust.WIDER_SEARCH_PROMISE = True
        if variant == "wider_none":  # not a coherent one either (the 37th session's verdict)
            from shared.solver import trust

            trust.WIDER_COHERENT_PROMISE = False
        if variant.startswith("blur_margin"):  # e.g. blur_margin0.05 (``effort.BLUR_MARGIN``)
            effort.BLUR_MARGIN = float(variant[len("blur_margin"):])
        if variant.startswith("stall"):  # e.g. stall0.02
            effort.AGAIN_STALL = float(variant[len("stall"):])
        predictor = Predictor(mirrored=variant != "plain_network")
        began = time.perf_counter()
        refined = stages.reconstruct(intensity, predictor, refine=True)["refined"]
        obj = (refined.amplitude * np.exp(1j * refined.phase)).astype(np.complex64)
        verdicts, starts = refined.info["verdict"], refined.info["start"]
        resampled = refined.info["resampled_error"]
        trusted = {key: list(refined.info[key]) for key in TRUST_FIELDS}
    seconds = (time.perf_counter() - began) / count
    errors = np.array(evaluation.all_errors(obj, truth)["phase_unweighted"])
    converged = np.array([v == "converged" for v in verdicts])
    return {"family": family, "variant": label, "count": count, "seed": seed, "right": int((errors < 0.1).sum()),
            "median_error": float(np.median(errors)), "seconds_per_scan": seconds, "converged": int(converged.sum()),
            "right_among_converged": int((errors[converged] < 0.1).sum()),
            "errors": [round(float(e), 4) for e in errors], "verdicts": list(verdicts), "kinds": kinds,
            "starts": list(starts), "resampled_error": list(resampled), **trusted}


def main() -> None:
    args = variants.arguments(__doc__.splitlines()[0], 9906, VARIANTS)
    if args.case:
        print(json.dumps(run_case(args.case, args.variant, args.count, args.seed)))
        return
    rows = variants.run_each(__file__, args.families.split(","), args,
                             brief=("errors", "verdicts", "kinds", "starts", "resampled_error", *TRUST_FIELDS))
    print("\n| family | variant | right | median error | converged (right) | s/scan |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        converged = f"{r['converged']} ({r['right_among_converged']})" if not r["variant"].startswith("erhio4") else "—"
        print(f"| {r['family']} | {r['variant']} | {r['right']}/{r['count']} | {r['median_error']:.3f} | {converged} "
              f"| {r['seconds_per_scan']:.2f} |")


if __name__ == "__main__":
    main()
