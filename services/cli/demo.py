"""One-command demo: simulate crystals, reconstruct them with ER/HIO and 3D-CDI-NN, plot.

(The streaming demo with the live page replaces this once the gateway exists.)
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from services.cli.options import positive_int


def add_arguments(p):
    p.add_argument("--out", type=Path, default=Path("demo-output"))
    p.add_argument("--count", type=positive_int, default=4)
    p.add_argument("--seed", type=int, default=123)


def run(args):
    from shared import plots
    from shared.files import write_result
    from shared.nn.inference import Predictor
    from shared.physics import crystals, metrics, phasing

    args.out.mkdir(parents=True, exist_ok=True)
    scans = [crystals.simulated_scan(32, args.seed, i, i, True, (1e6, 1e7)) for i in range(args.count)]
    intensity = np.stack([s[0] for s in scans])
    truth = [s[1] * np.exp(1j * s[2]) for s in scans]
    predictor = Predictor()
    started = time.perf_counter()
    nn = predictor.reconstruct(intensity)
    nn_time = time.perf_counter() - started
    started = time.perf_counter()
    erhio, _, chi = phasing.phase_retrieve(intensity)
    erhio_time = time.perf_counter() - started
    write_result(args.out / "nn.h5", nn.amplitude, nn.phase, nn.support, {"chi": nn.chi, "method": "3D-CDI-NN"})
    for i in range(args.count):
        e_nn, e_it = metrics.errors(nn.amplitude[i] * np.exp(1j * nn.phase[i]), truth[i]), metrics.errors(erhio[i], truth[i])
        print(f"crystal {i}: NN amplitude/phase error {e_nn['amplitude']:.3f}/{e_nn['phase']:.3f} rad, "
              f"ER/HIO {e_it['amplitude']:.3f}/{e_it['phase']:.3f} rad")
        plots.central_slices({"truth": metrics.canonical(truth[i])[:2], "3D-CDI-NN": (nn.amplitude[i], nn.phase[i]),
                              "ER/HIO": metrics.canonical(erhio[i])[:2]}, args.out / f"crystal_{i}.png")
    print(f"3D-CDI-NN: {1000 * nn_time / args.count:.1f} ms per scan (incl. first-call set-up); "
          f"ER/HIO: {erhio_time / args.count:.2f} s per scan → pictures in {args.out}/")
