"""Iterative phase retrieval (ER/HIO with shrink-wrap), the baseline.

Default schedule is the paper's comparison: 3*(20*ER+180*HIO)+20*ER, 620
iterations, averaged over the last 20, from a random phase in a centred box of
half the array, shrink-wrap every 20 iterations (σ 1, threshold 0.1): what a
careful user runs. Scans of a batch are retrieved together.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from services.cli.options import positive_int
from shared import __version__
from shared.wire.files import read_intensity, write_result, write_vti
from shared.physics import metrics, phasing


def add_arguments(p):
    p.add_argument("input", type=Path, help="intensity: .npy/.npz/.h5/.cxi/.tif or a TIFF folder; 4D = batch")
    p.add_argument("--out", type=Path, required=True, help="output .h5 (or .cxi with --format cxi)")
    p.add_argument("--dataset", help="dataset name inside .h5/.npz (default: first 3D/4D one)")
    p.add_argument("--schedule", default=phasing.PAPER_SCHEDULE, help="e.g. '3*(20*ER+180*HIO)+20*ER'")
    p.add_argument("--starts", type=positive_int, default=1, help="random starts per scan; lowest χ kept")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--beta", type=float, default=0.9, help="HIO feedback")
    p.add_argument("--sigma", type=float, default=1.0, help="shrink-wrap blur (voxels)")
    p.add_argument("--threshold", type=float, default=0.1, help="shrink-wrap threshold")
    p.add_argument("--shrink-every", type=positive_int, default=20, help="iterations between shrink-wraps")
    p.add_argument("--initial-support", choices=["box", "autocorrelation"], default="box",
                   help="box: a centred box of half the array (default, as a careful user starts); "
                        "autocorrelation: the support of the data's autocorrelation")
    p.add_argument("--batch", type=positive_int, default=16, help="scans retrieved together")
    p.add_argument("--format", choices=["h5", "cxi"], default="h5")
    p.add_argument("--vti", type=Path, help="also write the first scan as VTK .vti for ParaView")


def run(args):
    intensity, was_batch = read_intensity(args.input, args.dataset, min_size=8)
    steps = phasing.parse_schedule(args.schedule)
    iterations = sum(n for _, n in steps)
    started = time.perf_counter()
    amplitude, phase, support, chi = [], [], [], []
    with tqdm(total=iterations * intensity.shape[0], desc="ER/HIO", unit="it·scan", disable=None) as bar:
        for first in range(0, intensity.shape[0], args.batch):
            chunk = intensity[first:first + args.batch]
            objects, _, chis = phasing.phase_retrieve(
                chunk, args.schedule, args.starts, args.seed + first, args.beta, args.sigma, args.threshold,
                args.shrink_every, progress=lambda k, b=len(chunk): bar.update(k * b), initial=args.initial_support)
            for obj in objects:
                a, p, s = metrics.canonical(obj, phase_outside=True)  # the file reproduces the fit
                amplitude.append(a), phase.append(p), support.append(s)
            chi.extend(float(c) for c in chis)
    seconds = time.perf_counter() - started
    shape_out = slice(None) if was_batch else 0
    write_result(args.out, np.stack(amplitude)[shape_out], np.stack(phase)[shape_out], np.stack(support)[shape_out],
                 {"method": "ER/HIO", "schedule": args.schedule, "starts": args.starts, "chi": np.array(chi),
                  "seconds": seconds, "seconds_per_scan": seconds / len(chi), "version": __version__}, args.format)
    if args.vti:
        write_vti(args.vti, {"amplitude": amplitude[0], "phase": phase[0]})
    print(f"{len(chi)} scan(s), {iterations} iterations, median χ {np.median(chi):.4f}, "
          f"{seconds / len(chi):.2f} s per scan → {args.out}")
