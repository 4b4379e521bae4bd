"""ER/HIO time per iteration at 32³, 64³, 128³: cdi-live vs a plain NumPy complex128 loop.

Both run the same schedule (10 HIO + 10 ER, shrink-wrap every iteration) on the
same simulated crystal in this run; the ratio is what counts, not the seconds.
    .venv/bin/python benchmarks/erhio_speed.py [--sizes 32 64 128]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.naive_erhio import naive_phase_retrieve  # noqa: E402
from shared.physics import crystals, fourier, phasing  # noqa: E402

ITERATIONS = 20


def crystal_intensity(n: int) -> np.ndarray:
    amp, phase, _ = crystals.random_crystal(n, np.random.default_rng(n), supersample=2)
    return fourier.intensity(fourier.make_object(amp, phase))


def best_of(repeats, func):
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        func()
        times.append(time.perf_counter() - started)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--batch", type=int, default=8, help="scans retrieved together at 32³")
    args = parser.parse_args()
    print(f"{'size':>6} {'naive ms/it':>12} {'cdi-live ms/it':>15} {'speed-up':>9}")
    for n in args.sizes:
        intensity = crystal_intensity(n)
        repeats = 3 if n <= 64 else 1
        naive = best_of(repeats, lambda: naive_phase_retrieve(intensity, 1, 10, 10, 0)) / ITERATIONS
        ours = best_of(repeats, lambda: phasing.phase_retrieve(intensity[None], "10*HIO+10*ER")) / ITERATIONS
        print(f"{n:>5}³ {1000 * naive:>12.2f} {1000 * ours:>15.2f} {naive / ours:>8.1f}×")
    batch = np.stack([crystal_intensity(32)] * args.batch)
    ours_batched = best_of(3, lambda: phasing.phase_retrieve(batch, "10*HIO+10*ER")) / ITERATIONS / args.batch
    naive32 = best_of(3, lambda: naive_phase_retrieve(batch[0], 1, 10, 10, 0)) / ITERATIONS
    print(f"32³ batched ×{args.batch}: {1000 * ours_batched:.2f} ms per iteration per scan, "
          f"{naive32 / ours_batched:.1f}× the plain NumPy loop")


if __name__ == "__main__":
    main()
