"""What the live view shows before the rocking curve's peak (issue 33): the preview computed, the network's own
answer, and the answer shown (``plans.preview_shown``: the network's until the frames taken pass the peak, then
the preview), over the fractions of frames as live (each preview warm-started from the one before it).

    per family and fraction: median plain phase error of each, right (< 0.1 rad) of each, and the share of
    scans whose shown answer is the network's

    .venv/bin/python benchmarks/preview_shown.py [--count 24] [--seed 4621] [--families facets,defects,fill]
                                                 [--json rows.json] [--converge SCHEDULE]

``--converge``: the preview plan's converge (``PREVIEW_PLAN.converge`` by default), to measure a longer or shorter
one; each row gives the seconds per scan of its preview (the network's answer to the partial scan included).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import variants  # noqa: E402
from shared.nn.data import magnitude_of  # noqa: E402
from shared.nn.inference import Predictor  # noqa: E402
from shared.solver import evaluation  # noqa: E402

RIGHT = 0.1  # rad


def measure(family: str, count: int, seed: int, predictor) -> list[dict]:
    intensity, truth, _ = evaluation.population(family, count, seed)
    rows, began = [], time.perf_counter()
    for fraction, shown, nn, computed in evaluation.live_previews(predictor, magnitude_of(intensity)):
        seconds = (time.perf_counter() - began) / count
        errors = {name: np.array(evaluation.all_errors(answer, truth)["phase_unweighted"])
                  for name, answer in (("computed", computed), ("network", nn), ("shown", shown))}
        rows.append({"family": family, "fraction": fraction,
                     "network_shown": float(np.mean([np.array_equal(s, n) for s, n in zip(shown, nn)])),
                     **{f"median_{k}": float(np.median(v)) for k, v in errors.items()},
                     **{f"right_{k}": int((v < RIGHT).sum()) for k, v in errors.items()},
                     "seconds_per_scan": round(seconds, 4), "converge": evaluation.PREVIEW_PLAN.converge})
        print(json.dumps(rows[-1]), flush=True)
        began = time.perf_counter()
    return rows


def main() -> None:
    parser = variants.population_parser(__doc__.splitlines()[0], 4621)
    parser.add_argument("--converge", help="the preview plan's converge (default: as shipped)")
    args = parser.parse_args()
    if args.converge:
        evaluation.PREVIEW_PLAN = dataclasses.replace(evaluation.PREVIEW_PLAN, converge=args.converge)
    predictor = Predictor()
    rows = [row for family in args.families.split(",") for row in measure(family, args.count, args.seed, predictor)]
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print(f"\n| family | frames | network shown | median: computed / network / shown | right: computed / network / "
          f"shown (of {args.count}) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['family']} | {r['fraction']:.0%} | {r['network_shown']:.0%} | {r['median_computed']:.3f} / "
              f"{r['median_network']:.3f} / {r['median_shown']:.3f} | {r['right_computed']} / {r['right_network']} / "
              f"{r['right_shown']} |")


if __name__ == "__main__":
    main()
