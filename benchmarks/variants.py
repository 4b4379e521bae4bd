"""Benchmarks that compare variants of one code path run each (case, variant) in its own process: a variant
changes module constants, and a fresh process keeps it from leaking into the next (and times each alike)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def population_parser(description: str, seed: int, count: int = 24,
                      families: str = "facets,defects,fill") -> argparse.ArgumentParser:
    """The options of a benchmark over crystal families run in one process: --count, --seed, --families, --json."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--count", type=int, default=count)
    parser.add_argument("--seed", type=int, default=seed)
    parser.add_argument("--families", default=families)
    parser.add_argument("--json", type=Path, help="every row, per scan too")
    return parser


def arguments(description: str, seed: int, variants, families: str = "facets,defects,fill") -> argparse.Namespace:
    """The options every such benchmark takes; ``--case``/``--variant`` (hidden) run one case in this process."""
    parser = population_parser(description, seed, families=families)
    parser.add_argument("--variants", default=",".join(variants))
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    return parser.parse_args()


def run_each(script: str, cases, args: argparse.Namespace, brief=()) -> list[dict]:
    """Every case × variant, each in its own process of ``script`` (which prints its row as JSON last); each row
    is printed as it comes (without the ``brief`` keys), and all are written to ``--json``."""
    rows = []
    for case in cases:
        for variant in args.variants.split(","):
            out = subprocess.run([sys.executable, script, "--case", case, "--variant", variant, "--count",
                                  str(args.count), "--seed", str(args.seed)], capture_output=True, text=True,
                                 cwd=ROOT, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps({k: v for k, v in rows[-1].items() if k not in brief}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return rows


def without_flatten() -> None:
    """The refined plan without its flatten step (``Plan.flatten``), in this process: set on the shipped plan
    instance itself, so that every plan the run again derives from it follows (a plain argument would not reach
    them)."""
    from shared.solver.plans import REFINE_PLAN

    object.__setattr__(REFINE_PLAN, "flatten", ())


def without_wiener() -> None:
    """The refined stage's answers as fitted, without the Wiener estimate on photon counts (``Plan.wiener``), in this
    process (set on the shipped plan instance, as ``without_flatten``)."""
    from shared.solver.plans import REFINE_PLAN

    object.__setattr__(REFINE_PLAN, "wiener", 0.0)


def with_blur_threshold(value: float | None) -> None:
    """Runs with a blur model shrink-wrapped at ``value`` of the peak (``Plan.blur_threshold``; None: the plan's
    ``threshold``, as every run), in this process (set on the shipped plan instance, as ``without_flatten``)."""
    from shared.solver.plans import REFINE_PLAN

    object.__setattr__(REFINE_PLAN, "blur_threshold", value)


def with_algorithm(name: str, first_run: bool = False) -> None:
    """``name`` (RAAR, Luke 2005; OSS, Rodriguez et al. 2013) where the refined stage runs HIO, in this process: in
    the runs after the first (``effort.AGAIN_CONVERGE``, which the textbook's own search inherits) and, with
    ``first_run``, in the first run's explore and converge (set on the shipped plan instance, as
    ``without_flatten``)."""
    from shared.solver import effort
    from shared.solver.plans import REFINE_PLAN

    effort.AGAIN_CONVERGE = effort.AGAIN_CONVERGE.replace("HIO", name)
    if first_run:
        object.__setattr__(REFINE_PLAN, "explore", tuple((s.replace("HIO", name), k) for s, k in REFINE_PLAN.explore))
        object.__setattr__(REFINE_PLAN, "converge", REFINE_PLAN.converge.replace("HIO", name))


def without_width_refit() -> None:
    """The refined stage without the steps after its runs (``effort.refit_widths``: no width refit, no deblurred
    search), as shipped before the thirtieth session, in this process."""
    from shared.solver import effort

    effort.WIDTH_FACTORS, effort.WIDTH_COHERENT, effort.DEBLURRED_SEARCH = (), (), False
    effort.WIDTH_SCREEN, effort.WIDTH_SCHEDULE, effort.WIDTH_POLISH_WINNER = "", "20*ER+100*HIO+30*ER", False


def with_deblurred_search() -> None:
    """The width of each answer that ran again refitted on a finer grid, then a blurred answer's search again on its
    data deblurred at that width (``effort.refit_widths``, ``effort.DEBLURRED_SEARCH``), in this process."""
    from shared.solver import effort

    effort.WIDTH_FACTORS = (0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4)
    effort.WIDTH_COHERENT = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    effort.DEBLURRED_SEARCH = True


def with_fast_width_refit() -> None:
    """The width refit as successive halving (every width 20*ER, the best two 100*HIO+30*ER: ``effort.WIDTH_SCREEN``)
    and its fits without the AD polish but the one that takes an answer's place (``effort.WIDTH_POLISH_WINNER``), in
    this process."""
    from shared.solver import effort

    effort.WIDTH_SCREEN, effort.WIDTH_KEEP, effort.WIDTH_SCHEDULE = "20*ER", 2, "100*HIO+30*ER"
    effort.WIDTH_POLISH_WINNER = True
