"""What separates a right answer from a wrong one that the verdict calls converged (issue 31: ≥ 98 % of the scans
called converged must be right)? Per scan of the refined stage, every trust field it writes beside its true error.

    families   each crystal family (``shared.physics.families``), each in its own process, and ``photons1e6``:
               ``crystals.simulated_scan`` at 10⁶ photons, where the verdict was least precise
    per scan   the plain phase error against the truth (the BCDI ambiguities removed), the trust fields as the
               file writes them (``evaluation.trust_of``: verdict, reason, χ_free, its floor, the Poisson floor, the
               finalists' mean phase spread), the scan's photons, background and blur, the answer's fitted blur,
               the start kept and its runs
    table      per family: called converged, right among them, and the wrong ones' errors and trust fields

    .venv/bin/python benchmarks/verdict_calibration.py [--families facets,defects,fill,photons1e6] [--count 24]
                                                       [--seed 4401] [--json rows.json]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import variants  # noqa: E402

PHOTON_LIMITED = 1e6


def population(family: str, count: int, seed: int):
    """(intensity, truth, kinds) of a family, or of crystals at PHOTON_LIMITED photons for ``photons1e6``."""
    import numpy as np

    from shared.physics import crystals, fourier
    from shared.solver import evaluation

    if family != "photons1e6":
        return evaluation.population(family, count, seed)
    made = [crystals.simulated_scan(32, seed, i, i, True, (PHOTON_LIMITED, PHOTON_LIMITED)) for i in range(count)]
    return (np.stack([np.round(m[0]) for m in made]).astype(np.float32),
            np.stack([fourier.make_object(m[1], m[2]) for m in made]).astype(np.complex64),
            [{"kind": "facets", "photons": m[4], "background": 0.0, "blur": 0.0} for m in made])


def run_case(family: str, variant: str, count: int, seed: int) -> dict:
    import numpy as np

    from shared.nn.inference import Predictor
    from shared.solver import evaluation, stages

    intensity, truth, kinds = population(family, count, seed)
    predictor = Predictor()
    began = time.perf_counter()
    refined = stages.reconstruct(intensity, predictor, refine=True)["refined"]
    seconds = (time.perf_counter() - began) / count
    obj = (refined.amplitude * np.exp(1j * refined.phase)).astype(np.complex64)
    errors = evaluation.all_errors(obj, truth)["phase_unweighted"]
    rows = [{**row, **kind, "error": round(float(e), 4), "start": s, "runs": r, "answer_blur": b}
            for row, kind, e, s, r, b in zip(evaluation.trust_of(refined), kinds, errors, refined.info["start"],
                                             refined.info["runs"], refined.info["coherence_blur"])]
    converged = [r for r in rows if r["verdict"] == "converged"]
    return {"family": family, "variant": variant, "count": count, "seed": seed, "seconds_per_scan": seconds,
            "right": sum(r["error"] < evaluation.SUCCESS for r in rows), "converged": len(converged),
            "right_among_converged": sum(r["error"] < evaluation.SUCCESS for r in converged), "rows": rows}


def main() -> None:
    args = variants.arguments(__doc__.splitlines()[0], 4401, ("shipped",), "facets,defects,fill,photons1e6")
    if args.case:
        print(json.dumps(run_case(args.case, args.variant, args.count, args.seed)))
        return
    found = variants.run_each(__file__, args.families.split(","), args, brief=("rows",))
    print("\n| family | seed | right | converged | right among them | wrong ones: error, χ_free/floor, spread |")
    print("|---|---|---|---|---|---|")
    for f in found:
        wrong = [r for r in f["rows"] if r["verdict"] == "converged" and r["error"] >= 0.1]
        told = "; ".join(f"{r['error']:.3f}, {r['chi_free'] / max(r['chi_free_floor'], 1e-9):.2f}, {r['uncertainty']:.3f}"
                         for r in wrong) or "—"
        print(f"| {f['family']} | {f['seed']} | {f['right']}/{f['count']} | {f['converged']} "
              f"| {f['right_among_converged']} | {told} |")


if __name__ == "__main__":
    main()
