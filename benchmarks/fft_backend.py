"""FFTW (pyFFTW, ``shared.physics.fftw``) against scipy's own FFT, in the same run.

    transforms   batched complex64 transforms per shape: scipy's pocketfft vs FFTW through the project's
                 backend rule (what each call gets), µs per call
    refined      the refined stage (`cdi-live reconstruct --refine` defaults) on 12 crystals of the `fill`
                 family (never tuned on), 32³, batched as the CLI batches: seconds per scan and median phase
                 error, once with the backend, once with scipy alone (each in its own process)
    erhio        `phase-retrieve`'s ER/HIO (the paper's 620 iterations), same crystals, one start
    scan54       the refined stage of APS scan 54 (201×256×256, binned to 128³), without the full-grid stage

    .venv/bin/python benchmarks/fft_backend.py [--count 12] [--skip-scan54]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.wire import realdata  # noqa: E402
SEED = 7100


def transforms() -> list[dict]:
    import numpy as np
    import scipy.fft as sfft

    rows, rng = [], np.random.default_rng(0)
    for shape in [(8, 32, 32, 32), (4, 64, 64, 64), (4, 128, 128, 128), (1, 201, 256, 220)]:
        x = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
        repeats = 30 if x.size < 10**7 else 4
        row = {"shape": list(shape)}
        for name in ("scipy", "project"):
            with _backend(name):
                sfft.fftn(x, axes=(1, 2, 3), workers=-1)
                began = time.perf_counter()
                for _ in range(repeats):
                    sfft.fftn(x, axes=(1, 2, 3), workers=-1)
                row[name] = (time.perf_counter() - began) / repeats * 1e6
        row["speed-up"] = row["scipy"] / row["project"]
        rows.append(row)
    return rows


def _backend(name: str):
    """scipy's own FFT alone, or the project's rule (the global backend ``fftw.install()`` set)."""
    import contextlib

    import scipy.fft as sfft

    return sfft.set_backend("scipy", only=True) if name == "scipy" else contextlib.nullcontext()


def solver_case(case: str, count: int) -> dict:
    """One case in this process; ``case`` ends in ':scipy' for the baseline."""
    import numpy as np
    import scipy.fft as sfft

    from shared.physics import fftw

    fftw.install()
    what, backend = case.split(":")
    if backend == "scipy":
        sfft.set_global_backend("scipy")
    from shared.nn.inference import Predictor
    from shared.physics import families, metrics, phasing
    from shared.solver.stages import reconstruct

    if what == "scan54":
        intensity = realdata.scan54_frames()[None]
        predictor = Predictor()
        reconstruct(realdata.paper_intensity()[None], predictor,
                    refine=True)  # warm-up: TensorFlow graphs
        began = time.perf_counter()
        stages = reconstruct(intensity, predictor, refine=True, full_grid=False)
        return {"seconds": time.perf_counter() - began, "chi": float(stages["refined"].chi[0])}
    scans = families.population("fill", count, SEED)
    intensity = np.stack([s.intensity for s in scans])
    if what == "erhio":
        began = time.perf_counter()
        objects, _, _ = phasing.phase_retrieve(intensity, phasing.PAPER_SCHEDULE, starts=1, seed=0)
        seconds = time.perf_counter() - began
    else:
        predictor = Predictor()
        reconstruct(intensity[:2], predictor, refine=True)  # warm-up: TensorFlow graphs
        began = time.perf_counter()
        objects = []
        for first in range(0, count, 16):  # the CLI's batch
            stage = reconstruct(intensity[first:first + 16], predictor, refine=True)["refined"]
            objects += [a * np.exp(1j * p) for a, p in zip(stage.amplitude, stage.phase)]
        seconds = time.perf_counter() - began
    errors = [metrics.errors(o, s.truth)["phase"] for o, s in zip(objects, scans)]
    return {"seconds_per_scan": seconds / count, "median_phase_error": float(np.median(errors)),
            "right": int(np.sum(np.array(errors) < 0.1)), "count": count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=12)
    parser.add_argument("--skip-scan54", action="store_true")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(solver_case(args.case, args.count)))
        return
    from shared.physics import fftw

    fftw.install()
    print(f"pyFFTW installed: {fftw.pyfftw is not None}")
    report = {"transforms": transforms()}
    for row in report["transforms"]:
        print(f"{'×'.join(map(str, row['shape']))}: scipy {row['scipy']:.0f} µs, project {row['project']:.0f} µs "
              f"({row['speed-up']:.2f}×)", flush=True)
    cases = ["refined", "erhio"] + ([] if args.skip_scan54 else ["scan54"])
    for case in cases:
        for backend in ("fftw", "scipy"):
            out = subprocess.run([sys.executable, __file__, "--case", f"{case}:{backend}", "--count", str(args.count)],
                                 capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            report[f"{case}:{backend}"] = json.loads(out)
            print(case, backend, out, flush=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
