"""Train 3D-CDI-NN on simulated shards (sequential schedule, resumable).

Run it again with the same --out to resume exactly after an interruption.
"""

from __future__ import annotations

import json
from pathlib import Path

from services.cli.options import fraction, positive_int
from shared.physics.errors import InputError


def add_arguments(p):
    p.add_argument("data", type=Path, nargs="+", help="HDF5 shards written by 'cdi-live simulate --size 32'")
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoint, log.csv, weights)")
    p.add_argument("--width", type=positive_int, default=8, help="filters at the first level")
    p.add_argument("--batch", type=positive_int, default=16)
    p.add_argument("--steps-per-epoch", type=positive_int, default=100)
    p.add_argument("--schedule", default="shape=4,strain=4,joint=14", help="stages and their epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--partial-probability", type=fraction, default=0.5, help="share of truncated rocking curves")
    p.add_argument("--flaw-probability", type=fraction, default=0.5,
                   help="share of scans given a module gap and dead pixels, inpainted as the service does")
    p.add_argument("--twin", default="canonical", choices=["canonical", "min"],
                   help="twin image: canonical targets, or the smaller loss of prediction and twin")
    p.add_argument("--init", type=Path, help="weights to start from (fine-tuning; ignored when resuming)")
    p.add_argument("--precision", default="float32", choices=["float32", "mixed_bfloat16", "mixed_float16"])


def run(args):
    for path in [*args.data, *([args.init] if args.init else [])]:
        if not path.exists():
            raise InputError(f"{path}: no such file")
    from shared.nn.training import TrainConfig, parse_schedule, train  # TensorFlow loads only when needed

    try:
        parse_schedule(args.schedule)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    config = TrainConfig(data=[str(p) for p in args.data], out=str(args.out), width=args.width,
                         batch_size=args.batch, steps_per_epoch=args.steps_per_epoch, schedule=args.schedule,
                         seed=args.seed, partial_probability=args.partial_probability,
                         flaw_probability=args.flaw_probability, precision=args.precision,
                         twin=args.twin, init=str(args.init or ""))
    summary = train(config)
    print(json.dumps(summary["final"], indent=1))
