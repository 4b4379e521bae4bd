"""What a blurred scan's width is worth (issue 31): the refined plan's last steps from the true crystal, at the run
again's widths and at the scan's own.

A third of every family is measured with a detector blur (σ 0.4–1 pixel) and the refined stage is almost never right
on those. ``failure_causes.py`` counts most of them as "data": even the truth's fit, at the widths the run again tries
(``effort.AGAIN_COHERENCE``), is wrong. Here the same fit is made at three models, for the blurred scans alone:

    grid       the run again's widths, the lowest χ_free kept (``failure_causes.fit_from_truth``, as the service chooses)
    true       the width the scan was measured with (an oracle: no service knows it)
    coherent   no blur

right (plain phase error < 0.1 rad), median error and median χ_free of each. Where "true" is right and "grid" is not,
the data hold the crystal and the model's width is what misses.

With ``--search``, the same scans also go through the whole refined stage (``stages.reconstruct``), as shipped and with
its run again at the scan's true width alone (``effort.AGAIN_COHERENCE``; one scan at a time): how far knowing the
width would take the search.

    .venv/bin/python benchmarks/width_oracle.py [--count 24] [--seed 4671] [--families facets,defects,fill] [--search]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import variants  # noqa: E402
from benchmarks.failure_causes import RIGHT, fit_from_truth, fit_from_truth_at  # noqa: E402

MODELS = ("grid", "true", "coherent")
SEARCHES = ("search", "search_true")


def searched(intensity, widths, oracle: bool):
    """The refined stage's answers, one scan at a time: as shipped, or (``oracle``) with the run again at the scan's
    own width alone."""
    import numpy as np

    from shared.nn.inference import Predictor
    from shared.solver import effort, stages

    predictor, shipped, answers = Predictor(), effort.AGAIN_COHERENCE, []
    try:
        for k, width in enumerate(widths):
            effort.AGAIN_COHERENCE = (float(width),) if oracle else shipped
            refined = stages.reconstruct(intensity[k:k + 1], predictor, refine=True)["refined"]
            answers.append((refined.amplitude * np.exp(1j * refined.phase)).astype(np.complex64))
    finally:
        effort.AGAIN_COHERENCE = shipped
    return np.concatenate(answers), np.full(len(widths), np.nan)


def run_case(family: str, count: int, seed: int, search: bool = False) -> dict:
    import numpy as np

    from shared.solver import evaluation

    intensity, truth, kinds = evaluation.population(family, count, seed)
    blurred = [k for k in range(count) if kinds[k]["blur"] > 0]
    intensity, truth = intensity[blurred], truth[blurred]
    widths = [kinds[k]["blur"] for k in blurred]
    grid = fit_from_truth(intensity, truth)
    fits = {"grid": (grid.obj, grid.chi_free), "true": fit_from_truth_at(intensity, truth, widths),
            "coherent": fit_from_truth_at(intensity, truth, [0.0] * len(blurred))}
    if search:
        fits |= {"search": searched(intensity, widths, False), "search_true": searched(intensity, widths, True)}
    row = {"family": family, "seed": seed, "blurred": len(blurred), "widths": [round(float(w), 3) for w in widths],
           "grid_widths": [round(float(w), 3) for w in grid.coherence[:, 1]]}
    for model, (obj, chi_free) in fits.items():
        errors = np.array(evaluation.all_errors(obj, truth)["phase_unweighted"])
        row[model] = {"right": int((errors < RIGHT).sum()), "median_error": float(np.median(errors)),
                      "median_chi_free": float(np.median(chi_free)), "errors": [round(float(e), 4) for e in errors]}
    return row


def main() -> None:
    parser = variants.population_parser(__doc__.splitlines()[0], 4671)
    parser.add_argument("--search", action="store_true", help="the refined stage too, as shipped and at the true width")
    args = parser.parse_args()
    rows = []
    for family in args.families.split(","):
        rows.append(run_case(family, args.count, args.seed, args.search))
        print(json.dumps({k: v for k, v in rows[-1].items() if k not in MODELS + SEARCHES}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    table(rows, MODELS, "right from the truth: grid / true width / coherent", median_chi_free=True)
    if args.search:
        table(rows, SEARCHES, "right, the refined stage: shipped / run again at the true width")


def table(rows: list[dict], models, title: str, median_chi_free: bool = False) -> None:
    """One row per family: right, median error (and median χ_free) of each model, separated by slashes."""
    columns = [("right", "{}"), ("median_error", "{:.3f}")] + ([("median_chi_free", "{:.4f}")] if median_chi_free else [])
    heads = {"right": title, "median_error": "median error (rad)", "median_chi_free": "median χ_free"}
    print("\n| family | blurred scans | " + " | ".join(heads[c] for c, _ in columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for r in rows:
        cells = [" / ".join(form.format(r[m][c]) for m in models) for c, form in columns]
        print(f"| {r['family']} | {r['blurred']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
