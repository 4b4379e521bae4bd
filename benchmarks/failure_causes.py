"""Why is the refined stage wrong where it is (issue 31)? A search that missed, or data that do not tell?

For each crystal family (``shared.physics.families``) at a seed, every scan is refined as the service refines it
(``stages.reconstruct(…, refine=True)``), and once more from the **true crystal**: the refined plan's last steps
(``20*ER`` → tighten → ``20*ER`` on all data → AD polish) with every partial-coherence blur the run again tries,
the lowest χ_free kept, exactly as the service would choose among them. No search can start nearer the answer.
A wrong answer (plain phase error ≥ 0.1 rad) is then

    search      the truth's fit is right and predicts the withheld voxels better (lower χ_free) than the wrong
                answer: the data prefer the crystal; more search, selected by χ_free, would find it
    blind       the truth's fit is right, but the wrong answer's χ_free is as low or lower: the withheld voxels
                cannot tell them apart, so no selection by the data can
    width       a blurred scan whose truth's fit is wrong at the widths the run again tries and right at the width
                it was measured with (an oracle): the data hold the crystal, the model's width misses
                (``width_oracle.py``)
    data        the truth's fit is itself wrong: these data, with this forward model, do not hold the crystal to
                0.1 rad (too few photons, a blur at any width, a model that misses)

    .venv/bin/python benchmarks/failure_causes.py [--count 24] [--seed 9991] [--families facets,defects,fill]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import variants  # noqa: E402

RIGHT = 0.1  # rad
CAUSES = ("search", "blind", "width", "data")


def fit_from_truth(intensity, truth, measured=None, widths=None):
    """The refined plan's last steps started from the true crystal (every blur the run again tries, the lowest
    χ_free kept, as the service chooses): what these data hold at best. ``measured``: as ``converge``'s;
    ``widths``: the blurs tried (σ on the detector axes; by default the run again's)."""
    import dataclasses

    import numpy as np

    from shared.solver import effort, trust
    from shared.solver.plans import REFINE_PLAN, converge

    plan = dataclasses.replace(REFINE_PLAN, starts=("previous",), explore=(), converge="20*ER",
                               coherence=effort.AGAIN_COHERENCE if widths is None else tuple(widths))
    crystal = truth.astype(np.complex64)
    return converge(intensity, crystal, measured, plan, warm=list(crystal),
                    counting=[trust.photon_step(v) is not None for v in intensity])


def fit_from_truth_at(intensity, truth, widths):
    """``fit_from_truth`` with one blur per scan, its own (σ on the detector axes; 0: coherent)."""
    import numpy as np

    fits = [fit_from_truth(intensity[k:k + 1], truth[k:k + 1], widths=(float(width),))
            for k, width in enumerate(widths)]
    return np.concatenate([f.obj for f in fits]), np.concatenate([f.chi_free for f in fits])


def run_case(family: str, variant: str, count: int, seed: int) -> dict:
    import numpy as np

    from shared.nn.inference import Predictor
    from shared.solver import evaluation, stages

    intensity, truth, kinds = evaluation.population(family, count, seed)
    refined = stages.reconstruct(intensity, Predictor(), refine=True)["refined"]
    answer = (refined.amplitude * np.exp(1j * refined.phase)).astype(np.complex64)
    errors = np.array(evaluation.all_errors(answer, truth)["phase_unweighted"])
    held = fit_from_truth(intensity, truth)
    truth_errors = np.array(evaluation.all_errors(held.obj, truth)["phase_unweighted"])
    answer_free = np.array(refined.info["chi_free"], np.float64)
    at_width = {}  # the blurred scans the truth's fit misses: its error at the width each was measured with
    blurred = [k for k in range(count) if errors[k] >= RIGHT and truth_errors[k] >= RIGHT and kinds[k]["blur"] > 0]
    if blurred:
        fits, _ = fit_from_truth_at(intensity[blurred], truth[blurred], [kinds[k]["blur"] for k in blurred])
        at_width = dict(zip(blurred, evaluation.all_errors(fits, truth[blurred])["phase_unweighted"]))
    causes = []
    for k in range(count):
        if errors[k] < RIGHT:
            causes.append("right")
        elif truth_errors[k] >= RIGHT:
            causes.append("width" if at_width.get(k, np.inf) < RIGHT else "data")
        else:
            causes.append("search" if held.chi_free[k] < answer_free[k] else "blind")
    return {"family": family, "variant": variant, "count": count, "seed": seed, "right": int((errors < RIGHT).sum()),
            "truth_right": int((truth_errors < RIGHT).sum()), **{c: causes.count(c) for c in CAUSES},
            "errors": [round(float(e), 4) for e in errors], "truth_errors": [round(float(e), 4) for e in truth_errors],
            "chi_free": [round(float(c), 5) for c in answer_free],
            "truth_chi_free": [round(float(c), 5) for c in held.chi_free], "causes": causes, "kinds": kinds}


def main() -> None:
    args = variants.arguments(__doc__.splitlines()[0], 9991, ("shipped",))
    if args.case:
        print(json.dumps(run_case(args.case, args.variant, args.count, args.seed)))
        return
    rows = variants.run_each(__file__, args.families.split(","), args,
                             brief=("errors", "truth_errors", "chi_free", "truth_chi_free", "causes", "kinds"))
    print("\n| family | right | right from the truth | wrong: search | wrong: blind | wrong: width | wrong: data |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['family']} | {r['right']}/{r['count']} | {r['truth_right']}/{r['count']} | {r['search']} "
              f"| {r['blind']} | {r['width']} | {r['data']} |")


if __name__ == "__main__":
    main()
