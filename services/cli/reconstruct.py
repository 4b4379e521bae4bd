"""Reconstruct shape and strain with 3D-CDI-NN (milliseconds per scan).

INPUT is a measured intensity (3D) or a batch (4D), any size ≥ 32 per axis;
larger volumes are cropped around the Bragg peak and DCT-downsampled to 32³,
and the result is returned on the input's real-space grid.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from services.cli.options import positive_float, positive_int
from shared import __version__
from shared.errors import InputError
from shared.files import read_intensity, write_result, write_vti


def add_arguments(p):
    p.add_argument("input", type=Path, help="intensity: .npy/.npz/.h5/.cxi/.tif or a TIFF folder; 4D = batch")
    p.add_argument("--out", type=Path, required=True, help="output .h5")
    p.add_argument("--dataset", help="dataset name inside .h5/.npz")
    p.add_argument("--weights", type=Path, help="network weights (default: the shipped ones)")
    p.add_argument("--batch", type=positive_int, default=64, help="scans per network call")
    p.add_argument("--network-grid", action="store_true", help="keep the 32³ network grid (no resampling)")
    p.add_argument("--format", choices=["h5", "cxi"], default="h5")
    p.add_argument("--vti", type=Path, help="also write the first scan as VTK .vti")
    p.add_argument("--refine", action="store_true", help="refine the prediction by AD through the forward model")
    p.add_argument("--refine-steps", type=positive_int, default=200, help="maximum refinement steps")
    p.add_argument("--time-budget", type=positive_float, help="seconds of refinement per scan at most")
    p.add_argument("--refine-loss", choices=["gaussian", "poisson"], default="gaussian")
    p.add_argument("--refine-size", type=positive_int, default=64, help="largest refinement grid per axis")


def run(args):
    intensity, was_batch = read_intensity(args.input, args.dataset, min_size=32)
    if args.refine_size < 32:
        raise InputError("--refine-size must be at least 32")
    from shared.nn.inference import Predictor  # TensorFlow loads only when needed
    from shared.reconstruction import reconstruct

    started = time.perf_counter()
    predictor = Predictor(args.weights, args.batch)
    load_seconds = time.perf_counter() - started
    with tqdm(total=len(intensity), desc="3D-CDI-NN", unit="scan", disable=None if len(intensity) > 8 else True) as bar:
        stages = reconstruct(intensity, predictor, args.refine_steps if args.refine else 0, args.time_budget,
                             args.refine_size, args.refine_loss, not args.network_grid, bar.update)
    final_name = "refined" if args.refine else "nn"
    final = stages[final_name]
    pick = slice(None) if was_batch else 0
    extra = {}
    for name, stage in stages.items():
        extra.update({f"{name}/amplitude": stage.amplitude[pick], f"{name}/phase": stage.phase[pick],
                      f"{name}/chi": stage.chi, f"{name}/seconds": np.float64(stage.seconds)})
    write_result(args.out, final.amplitude[pick], final.phase[pick], final.support[pick],
                 {"method": "3D-CDI-NN" + (" + AD refinement" if args.refine else ""), "stage": final_name,
                  "model_version": predictor.card.get("version", "unknown"), "chi": final.chi,
                  "chi_nn": stages["nn"].chi, "seconds_nn": stages["nn"].seconds,
                  "seconds": sum(s.seconds for s in stages.values()), "load_seconds": load_seconds,
                  "version": __version__}, args.format, extra=extra if args.format == "h5" else None)
    if args.vti:
        write_vti(args.vti, {"amplitude": final.amplitude[0], "phase": final.phase[0]})
    summary = ", ".join(f"{name}: median χ {np.median(s.chi):.4f} in {1000 * s.seconds / len(intensity):.0f} ms/scan"
                        for name, s in stages.items())
    print(f"{len(intensity)} scan(s) — {summary} → {args.out}")
