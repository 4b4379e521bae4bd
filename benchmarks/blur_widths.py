"""Which blur widths a run again tries, and how the verdict judges a blurred fit (issue 31): the refined stage as
shipped beside the same code with finer widths (or a blurred fit judged as a coherent one), and ER/HIO ×4, in the
same run.

    families   each crystal family (``shared.physics.families``), each variant in its own process:
                 shipped     `cdi-live reconstruct --refine` defaults: a scan left uncertain runs again with every
                             blur of ``effort.AGAIN_COHERENCE`` (σ 0.5 or 1 voxel on the detector axes, 0.5 on every
                             axis), and a blurred answer is judged with ``trust.BLURRED_ALLOWANCE``
                 fine        the same with σ 0.4 to 1 voxel in steps of 0.15 on the detector axes (tried, not kept)
                 allowance   the same as shipped, a blurred answer judged as a coherent one (MODEL_ALLOWANCE)
                 erhio4      `phase-retrieve --starts 4`: the textbook ER/HIO from a centred half-size box, best of
                             4 random starts by χ (the careful user's yardstick)
               right (plain phase error < 0.1 rad, the BCDI ambiguities removed), median error, seconds per scan,
               called converged and right among them; the same for the scans measured with a detector blur

    .venv/bin/python benchmarks/blur_widths.py [--count 24] [--seed 9930] [--families facets,defects,fill]
                                               [--variants shipped,fine,erhio4] [--json rows.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import run_again, variants  # noqa: E402

VARIANTS = ("shipped", "fine", "erhio4")  # and "allowance"
FINE = (0.0, 0.4, 0.55, 0.7, 0.85, 1.0, (0.5, 0.5, 0.5))


def run_case(family: str, variant: str, count: int, seed: int) -> dict:
    from shared.solver import effort, trust

    if variant == "fine":
        effort.AGAIN_COHERENCE = FINE
    if variant == "allowance":
        trust.BLURRED_ALLOWANCE = trust.MODEL_ALLOWANCE
    row = run_again.run_case(family, "erhio4" if variant == "erhio4" else "shipped", count, seed)
    blurred = [k for k, kind in enumerate(row["kinds"]) if kind["blur"]]
    right = [row["errors"][k] < 0.1 for k in blurred]
    converged = [row["verdicts"][k] == "converged" for k in blurred]
    return {**row, "variant": variant, "blurred": len(blurred), "blurred_right": sum(right),
            "blurred_converged": sum(converged), "blurred_right_among_converged": sum(r and c for r, c in
                                                                                  zip(right, converged))}


def main() -> None:
    args = variants.arguments(__doc__.splitlines()[0], 9930, VARIANTS)
    if args.case:
        print(json.dumps(run_case(args.case, args.variant, args.count, args.seed)))
        return
    rows = variants.run_each(__file__, args.families.split(","), args, brief=("errors", "verdicts", "kinds"))
    print("\n| family | variant | right | median error | converged (right) | blurred scans right | "
          "blurred converged (right) | s/scan |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        judged = r["variant"] != "erhio4"
        converged = f"{r['converged']} ({r['right_among_converged']})" if judged else "—"
        blurred = f"{r['blurred_converged']} ({r['blurred_right_among_converged']})" if judged else "—"
        print(f"| {r['family']} | {r['variant']} | {r['right']}/{r['count']} | {r['median_error']:.3f} | {converged} "
              f"| {r['blurred_right']}/{r['blurred']} | {blurred} | {r['seconds_per_scan']:.2f} |")


if __name__ == "__main__":
    main()
