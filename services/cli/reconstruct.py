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

from services.cli.options import positive_int
from shared import __version__
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


def run(args):
    intensity, was_batch = read_intensity(args.input, args.dataset, min_size=32)
    from shared.nn.inference import Predictor  # TensorFlow loads only when needed

    started = time.perf_counter()
    predictor = Predictor(args.weights, args.batch)
    load_seconds = time.perf_counter() - started
    with tqdm(total=len(intensity), desc="3D-CDI-NN", unit="scan", disable=None if len(intensity) > 8 else True) as bar:
        result = predictor.reconstruct(intensity, on_input_grid=not args.network_grid, progress=bar.update)
    pick = slice(None) if was_batch else 0
    write_result(args.out, result.amplitude[pick], result.phase[pick], result.support[pick],
                 {"method": "3D-CDI-NN", "model_version": predictor.card.get("version", "unknown"),
                  "chi": result.chi, "seconds": result.seconds, "seconds_per_scan": result.seconds / len(intensity),
                  "load_seconds": load_seconds, "version": __version__}, args.format)
    if args.vti:
        write_vti(args.vti, {"amplitude": result.amplitude[0], "phase": result.phase[0]})
    print(f"{len(intensity)} scan(s), median χ {np.median(result.chi):.4f}, "
          f"{1000 * result.seconds / len(intensity):.1f} ms per scan → {args.out}")
