"""A milder blur than the families hold (issue 31): is the refined stage still ahead of `--starts 4`, and is its
verdict still right, where partial coherence blurs the pattern only a little?

The families (``shared.physics.families``) blur a third of their scans at σ 0.4–1 pixel on the detector axes. Here
every scan is blurred, at σ drawn in ``--blur LO,HI`` (default 0.15–0.4), with the families' crystals and photons
otherwise (every fourth scan noise-free, no background). Per family: right (plain phase error < 0.1 rad), median
error, called converged (right among them) and seconds per scan, for `phase-retrieve --starts 4` (``erhio4``) and
the refined stage as shipped, in one process.

    .venv/bin/python benchmarks/mild_blur.py [--seed 4951] [--count 24] [--families defects,fill] [--blur 0.15,0.4]
                                             [--json rows.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=4951)
    parser.add_argument("--count", type=int, default=24)
    parser.add_argument("--families", default="defects,fill")
    parser.add_argument("--blur", default="0.15,0.4")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    low, high = (float(x) for x in args.blur.split(","))
    from shared.physics import families

    families.measure = functools.partial(families.measure, blur_range=(low, high), every_scan_blurred=True,
                                         with_background=False)  # this process only
    from benchmarks import run_again

    rows = []
    print("| family | method | right | median error | converged (right) | s/scan |\n|---|---|---|---|---|---|")
    for family in args.families.split(","):
        for variant in ("erhio4", "shipped"):
            r = run_again.run_case(family, variant, args.count, args.seed)
            rows.append(r)
            converged = "—" if variant == "erhio4" else f"{r['converged']} ({r['right_among_converged']})"
            print(f"| {family} | {variant} | {r['right']}/{r['count']} | {r['median_error']:.3f} | {converged} "
                  f"| {r['seconds_per_scan']:.2f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
