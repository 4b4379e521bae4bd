"""Evaluate the refined stage and the network on held-out simulated crystals and the real data: Markdown + PNG report."""

from __future__ import annotations

import json
from pathlib import Path

from services.cli.options import positive_int
from shared.wire import realdata
from shared.physics import families


def add_arguments(p):
    p.add_argument("--out", type=Path, default=Path("docs/evaluation"), help="report folder")
    p.add_argument("--count", type=positive_int, default=48, help="held-out crystals")
    p.add_argument("--seed", type=int, default=9000, help="held-out seed (training used others)")
    p.add_argument("--weights", type=Path, help="network weights (default: shipped)")
    p.add_argument("--data", type=Path, default=realdata.folder(),
                   help="folder of the real data sets (default $CDI_LIVE_DATA or ../shared/data)")
    p.add_argument("--real-size", type=positive_int, default=128,
                   help="the APS scan is DCT-downsampled to this size per axis for both tools")
    p.add_argument("--family", action="append", choices=list(families.NAMES), dest="families",
                   help=f"crystal family to evaluate, repeatable (default: all; {families.TUNING} is the tuning family)")
    p.add_argument("--no-cohere", action="store_true",
                   help="leave out the cohere-core rows (1 start, best of 4, GA: about 20 s per crystal)")


def run(args):
    from shared.solver.evaluation import evaluate
    from shared.nn.inference import Predictor

    summary = evaluate(Predictor(args.weights), args.out, args.count, args.seed,
                       args.data if args.data.exists() else None, args.real_size, cohere=not args.no_cohere,
                       family_names=args.families or families.NAMES)
    print(json.dumps({name: f["success"] for name, f in summary["families"].items()}, indent=1))
    print(f"report: {args.out / 'README.md'}")
