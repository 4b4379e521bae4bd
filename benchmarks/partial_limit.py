"""What a partial scan allows (issue 33): is the live preview's miss with 60 % of the frames its cheap plan's, or
the data's? The same scans, in one run:

    preview        the live view's preview computed at that fraction (``evaluation.live_previews``: ``PREVIEW_PLAN``
                   on the frames taken so far, warm-started from the previews before it)
    refined        the service's whole refined stage (network, first run, runs again, the textbook's search:
                   ``stages.reconstruct(refine=True)``) on the same frames, those not yet taken marked unmeasured
    refined, all   the refined stage on every frame (what the scan ends with)
    truth          the refined plan's last steps started from the true crystal on the same frames
                   (``failure_causes.fit_from_truth``: every blur the run again tries, the lowest χ_free kept): what
                   these frames hold at best, as no search can start nearer

    per family: right (plain phase error < 0.1 rad, the BCDI ambiguities removed), median error, seconds per scan

If the refined stage with 60 % of the frames is right about as often as with all of them, the data suffice and a
stronger preview would close the gap; if not, the frames not yet taken hold what is missing.

    .venv/bin/python benchmarks/partial_limit.py [--count 16] [--seed 4641] [--fraction 0.6] [--json rows.json]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import variants  # noqa: E402
from benchmarks.failure_causes import fit_from_truth  # noqa: E402
from shared.nn.data import magnitude_of  # noqa: E402
from shared.nn.inference import Predictor  # noqa: E402
from shared.solver import evaluation, stages  # noqa: E402

RIGHT = 0.1  # rad


def refined(intensity, predictor, measured=None):
    began = time.perf_counter()
    stage = stages.reconstruct(intensity, predictor, refine=True, measured=measured)["refined"]
    return (stage.amplitude * np.exp(1j * stage.phase)).astype(np.complex64), (time.perf_counter() - began) / len(
        intensity)


def from_truth(intensity, truth, measured):
    began = time.perf_counter()
    held = fit_from_truth(intensity, truth, measured)
    return held.obj, (time.perf_counter() - began) / len(intensity)


def measure(family: str, count: int, seed: int, fraction: float, predictor) -> dict:
    intensity, truth, kinds = evaluation.population(family, count, seed)
    fractions = tuple(f for f in evaluation.FRACTIONS if f < fraction) + (fraction,)
    began = time.perf_counter()
    *_, (_, _, _, preview) = evaluation.live_previews(predictor, magnitude_of(intensity), fractions)
    answers = {"preview": (preview, (time.perf_counter() - began) / count)}
    taken = evaluation.frames_taken(intensity.shape[1:], fraction)
    answers["refined"] = refined(intensity * taken, predictor, np.broadcast_to(taken, intensity.shape))
    answers["refined, all"] = refined(intensity, predictor)
    answers["truth"] = from_truth(intensity * taken, truth, np.broadcast_to(taken, intensity.shape))
    row = {"family": family, "count": count, "seed": seed, "fraction": fraction, "kinds": kinds}
    for name, (obj, seconds) in answers.items():
        errors = np.array(evaluation.all_errors(obj, truth)["phase_unweighted"])
        row[name] = {"right": int((errors < RIGHT).sum()), "median": float(np.median(errors)),
                     "seconds_per_scan": seconds, "errors": [round(float(e), 4) for e in errors]}
    return row


def main() -> None:
    parser = variants.population_parser(__doc__.splitlines()[0], 4641, count=16)
    parser.add_argument("--fraction", type=float, default=0.6)
    args = parser.parse_args()
    predictor = Predictor()
    rows = []
    for family in args.families.split(","):
        rows.append(measure(family, args.count, args.seed, args.fraction, predictor))
        print(json.dumps({k: ({m: v[m] for m in ("right", "median", "seconds_per_scan")} if isinstance(v, dict) else v)
                          for k, v in rows[-1].items() if k != "kinds"}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    names = ("preview", "refined", "refined, all", "truth")
    print(f"\n| family | right with {args.fraction:.0%} of the frames: preview / refined stage / from the truth | right "
          f"with all: refined stage | median (rad): {' / '.join(names)} | s/scan: {' / '.join(names)} |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['family']} | {r['preview']['right']} / {r['refined']['right']} / {r['truth']['right']} of "
              f"{r['count']} | "
              f"{r['refined, all']['right']} | {' / '.join(format(r[n]['median'], '.3f') for n in names)} | "
              f"{' / '.join(format(r[n]['seconds_per_scan'], '.2f') for n in names)} |")


if __name__ == "__main__":
    main()
