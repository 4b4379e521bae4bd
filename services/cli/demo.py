"""One-command demo: simulate crystals, reconstruct them with 3D-CDI-NN, NN + AD refinement and ER/HIO, plot.

(The streaming demo with the live page replaces this once the gateway's page exists.)
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
    from shared.reconstruction import reconstruct

    args.out.mkdir(parents=True, exist_ok=True)
    scans = [crystals.simulated_scan(32, args.seed, i, i, True, (1e6, 1e7)) for i in range(args.count)]
    intensity = np.stack([s[0] for s in scans])
    truth = [s[1] * np.exp(1j * s[2]) for s in scans]
    stages = reconstruct(intensity, Predictor(), refine_steps=300)
    started = time.perf_counter()
    erhio, _, _ = phasing.phase_retrieve(intensity)
    erhio_time = time.perf_counter() - started
    for name, stage in stages.items():
        write_result(args.out / f"{name}.h5", stage.amplitude, stage.phase, stage.support,
                     {"chi": stage.chi, "seconds": stage.seconds, "stage": name})
    for i in range(args.count):
        shown = {"truth": metrics.canonical(truth[i])[:2]}
        line = f"crystal {i}:"
        for name, label in (("nn", "3D-CDI-NN"), ("refined", "NN + AD")):
            stage = stages[name]
            e = metrics.errors(stage.amplitude[i] * np.exp(1j * stage.phase[i]), truth[i])
            shown[label] = (stage.amplitude[i], stage.phase[i])
            line += f" {label} {e['amplitude']:.3f}/{e['phase']:.3f}"
        e = metrics.errors(erhio[i], truth[i])
        shown["ER/HIO"] = metrics.canonical(erhio[i])[:2]
        print(f"{line} ER/HIO {e['amplitude']:.3f}/{e['phase']:.3f}  (amplitude error / phase error, rad)")
        plots.central_slices(shown, args.out / f"crystal_{i}.png", f"simulated crystal {i}")
    print(f"per scan: 3D-CDI-NN {1000 * stages['nn'].seconds / args.count:.0f} ms (incl. first-call set-up), "
          f"NN + AD {stages['refined'].seconds / args.count:.2f} s, ER/HIO {erhio_time / args.count:.2f} s "
          f"→ pictures and HDF5 files in {args.out}/")
