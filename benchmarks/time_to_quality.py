"""Time to quality: the refined stage against ER/HIO from random starts and the field's own tool.

Held-out simulated crystals (seed 8000: used neither in training, nor for tuning the refined
stage, nor by `cdi-live evaluate`), every third noise-free, the others with Poisson noise at
1e5–1e7 photons; both real sets. In one run on this CPU, per method: success rate (plain
phase error < 0.1 rad), median plain phase error, seconds per scan and the ratio to
`phase-retrieve --starts 4`; on real data χ of the result against the same input. cohere-core
(``pip install cohere-core``) is run where installed. Also the peak memory of a 64³ and 128³
AD polish. Writes docs/time_to_quality.png.

    .venv/bin/python benchmarks/time_to_quality.py [--count 16] [--cohere-starts 4]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from shared.solver.yardstick import available as cohere_available, cohere_best_of, cohere_phase  # noqa: E402
from shared import plots  # noqa: E402
from shared.wire import realdata  # noqa: E402
from shared.solver.evaluation import SUCCESS, held_out_set, real_sets, timed  # noqa: E402
from shared.nn.data import magnitude_of  # noqa: E402
from shared.nn.inference import Predictor  # noqa: E402
from shared.physics import crystals, metrics, phasing  # noqa: E402
from shared.solver.plans import REFINE_PLAN, converge  # noqa: E402
from shared.solver.stages import reconstruct  # noqa: E402
from shared.solver.refinement import refine  # noqa: E402



def _peak_rss_mb() -> float:
    """VmHWM of this process (unlike ru_maxrss, not inherited across fork/exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _refine_peak(path, queue):
    import keras

    data = np.load(path)
    intensity, obj = data["intensity"], data["obj"]
    keras.ops.convert_to_tensor(intensity).numpy()  # TensorFlow loaded and running: the baseline
    before = _peak_rss_mb()
    refine(intensity[None], obj[None], steps=20)
    queue.put((before, _peak_rss_mb()))


def peak_memory_mb(size):
    """(peak RSS with TensorFlow loaded and the data read, peak RSS after a size³ refinement) in MB,
    measured in a fresh process so nothing else's peak is counted."""
    import multiprocessing
    import tempfile

    amp, phase, _ = crystals.random_crystal(size, np.random.default_rng(size), supersample=2)
    obj = (amp * np.exp(1j * phase)).astype(np.complex64)
    intensity = (np.abs(np.fft.fftshift(np.fft.fftn(obj))) ** 2).astype(np.float32)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "case.npz"
        np.savez(path, intensity=intensity, obj=obj)
        context = multiprocessing.get_context("spawn")
        queue = context.Queue()
        process = context.Process(target=_refine_peak, args=(str(path), queue))
        process.start()
        result = queue.get(timeout=600)
        process.join()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=16, help="simulated crystals")
    parser.add_argument("--cohere-starts", type=int, default=4, help="random starts for cohere's best-of row")
    parser.add_argument("--no-real", action="store_true", help="skip the real data sets")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "time_to_quality.png")
    args = parser.parse_args()
    predictor = Predictor()
    intensity, truth = held_out_set(args.count, 8000)
    magnitudes = magnitude_of(intensity)
    predictor.predict_magnitudes(magnitudes[:2])  # graphs built outside the timings
    converge(intensity[:1], np.abs(truth[:1]), plan=REFINE_PLAN)

    def refined():
        amp, phase = predictor.predict_magnitudes(magnitudes)
        return converge(intensity, (amp * np.exp(1j * phase)).astype(np.complex64)).obj

    def without_network():
        """The same refined stage seeded by the autocorrelation's support (what ER/HIO starts from): how much
        of the refined stage's success is the network's shape."""
        import scipy.fft as sfft

        support = phasing.initial_support(sfft.ifftshift(np.sqrt(intensity), axes=(1, 2, 3)))
        return converge(intensity, support.astype(np.complex64)).obj  # centred already

    methods = {"refined stage (NN → ER/HIO → AD)": refined,
               "refined stage seeded without the network": without_network,
               "ER/HIO, 1 random start": lambda: phasing.phase_retrieve(intensity, starts=1, seed=1)[0],
               "ER/HIO, 4 random starts": lambda: phasing.phase_retrieve(intensity, starts=4, seed=1)[0]}
    if cohere_available():
        methods["cohere-core 4.5, 1 start"] = lambda: np.stack([cohere_phase(i, seed=k)[0]
                                                                 for k, i in enumerate(intensity)])
        methods[f"cohere-core 4.5, best of {args.cohere_starts}"] = lambda: np.stack(
            [cohere_best_of(i, args.cohere_starts) for i in intensity])
    else:
        print("cohere-core not installed (pip install cohere-core): its rows are left out")
    rows = {}
    for name, run in methods.items():
        estimates, seconds = timed(run)
        phase_errors = [metrics.errors(e, t)["phase_unweighted"] for e, t in zip(estimates, truth)]
        rows[name] = {"success": int(np.sum(np.array(phase_errors) < SUCCESS)), "median": float(np.median(phase_errors)),
                      "seconds": seconds / args.count}
    four = rows["ER/HIO, 4 random starts"]["seconds"]
    print(f"held-out crystals: {args.count} (seed 8000), success = plain phase error < {SUCCESS} rad")
    print(f"{'method':34s} {'success':>8s} {'median':>8s} {'s/scan':>8s} {'× faster than ER/HIO ×4':>24s}")
    for name, r in rows.items():
        print(f"{name:34s} {r['success']:>4d}/{args.count:<3d} {r['median']:8.3f} {r['seconds']:8.3f} "
              f"{four / r['seconds']:24.1f}")
    plots.curve({name: [r["seconds"]] for name, r in rows.items()},
                {name: [r["success"] / args.count] for name, r in rows.items()}, args.out,
                "seconds per scan (2-core CPU)", f"success rate (phase error < {SUCCESS} rad)",
                f"time to quality, {args.count} held-out crystals", logx=True)
    if not args.no_real:
        for name, (volume, _) in real_sets(realdata.folder(), 128).items():
            stages, ours_s = timed(lambda: reconstruct(volume[None], predictor, refine=True))
            ours = stages["refined"].amplitude[0] * np.exp(1j * stages["refined"].phase[0])
            (objects, _, _), erhio_s = timed(lambda: phasing.phase_retrieve(volume[None], starts=4, seed=0))
            line = (f"{name}: χ refined {metrics.chi(ours, volume):.4f} in {ours_s:.1f} s | ER/HIO ×4 "
                    f"{metrics.chi(objects[0], volume):.4f} in {erhio_s:.1f} s")
            if cohere_available():
                obj, cohere_s = timed(lambda: cohere_phase(volume, seed=0)[0])
                line += f" | cohere 1 start {metrics.chi(obj, volume):.4f} in {cohere_s:.1f} s"
            print(line)
    for size in (64, 128):
        before, during = peak_memory_mb(size)
        print(f"peak memory of a {size}³ AD polish: {during:.0f} MB RSS, {during - before:.0f} MB above "
              f"the process with TensorFlow loaded and the data read ({before:.0f} MB)")
    print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
