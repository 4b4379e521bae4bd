"""Time to quality: ER/HIO from random starts vs NN, NN + AD refinement and NN + ER/HIO.

For simulated crystals (with truth) and both real sets, in one run on this CPU:
χ against wall time for each method, the speed-up of NN + AD in reaching
ER/HIO's final χ, final errors where the truth is known, and peak memory of a
64³ and 128³ refinement. Writes docs/time_to_quality.png.
    .venv/bin/python benchmarks/time_to_quality.py [--count 4]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from shared import plots  # noqa: E402
from shared.nn.inference import Predictor  # noqa: E402
from shared.physics import crystals, downsample, metrics, phasing  # noqa: E402
from shared.reconstruction import embed, refinement_data  # noqa: E402
from shared.refinement import refine  # noqa: E402

DATA = Path(os.environ.get("CDI_LIVE_DATA", ROOT.parent / "shared" / "data"))


def erhio_curve(intensity, start=None, schedule=phasing.PAPER_SCHEDULE, seed=0):
    history = []
    began = time.perf_counter()
    objects, _, chi = phasing.phase_retrieve(intensity[None], schedule, seed=seed, start=None if start is None else start[None],
                                             history=history)
    return [t - began for t, _ in history], [float(c[0]) for _, c in history], objects[0], float(chi[0])


def first_time_below(times, chis, target):
    for t, c in zip(times, chis):
        if c <= target:
            return t
    return None


def one_case(name, measured, predictor, truth=None):
    """measured: intensity on the refinement grid (≤ 64³)."""
    started = time.perf_counter()
    net_in = downsample.dct_downsample(np.sqrt(measured), 32) if measured.shape != (32,) * 3 else np.sqrt(measured)
    net_in = np.clip(net_in, 0, None)
    amp, phase = predictor.predict_magnitudes((net_in / net_in.max())[None])
    start = embed(amp[0] * np.exp(1j * phase[0]), measured.shape)
    nn_seconds = time.perf_counter() - started
    t_it, chi_it, obj_it, final_it = erhio_curve(measured)
    result = refine(measured[None], start[None], steps=400)
    t_ad = [nn_seconds + t for t, _ in result.history]
    chi_ad = [float(c[0]) for _, c in result.history]
    t_nnit, chi_nnit, obj_nnit, _ = erhio_curve(measured, start, "20*ER+80*HIO+20*ER")
    t_nnit = [nn_seconds + t for t in t_nnit]
    reach = first_time_below(t_ad, chi_ad, final_it)
    reach_nnit = first_time_below(t_nnit, chi_nnit, final_it)
    total_it = t_it[-1]
    row = {"case": name, "grid": measured.shape[0], "erhio_s": total_it, "erhio_chi": final_it, "nn_chi": chi_ad[0],
           "nn_ad_chi": float(result.chi[0]), "nn_ad_s": t_ad[-1],
           "speedup_ad": total_it / reach if reach else None, "speedup_nn_erhio": total_it / reach_nnit if reach_nnit else None}
    if truth is not None:
        row["erhio_err"] = metrics.errors(obj_it, truth)
        row["nn_ad_err"] = metrics.errors(result.obj[0], truth)
    curves = {"ER/HIO (random start)": (t_it, chi_it), "NN + AD": (t_ad, chi_ad), "NN + ER/HIO": (t_nnit, chi_nnit)}
    return row, curves


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
    parser.add_argument("--count", type=int, default=4, help="simulated crystals")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "time_to_quality.png")
    args = parser.parse_args()
    predictor = Predictor()
    predictor.predict_magnitudes(np.zeros((1, 32, 32, 32), np.float32))  # build the graph outside the timings
    cases = []
    for i in range(args.count):
        intensity, amp, phase, _, _ = crystals.simulated_scan(32, 8000, i, i, True, (1e7, 1e7))
        cases.append((f"simulated {i}", intensity, amp * np.exp(1j * phase)))
    paper = DATA / "paper-example" / "ft_crop_64.npy"
    if paper.exists():
        cases.append(("paper example 64³", np.load(paper).astype(np.float32) ** 2, None))
    scan = DATA / "aps-34idc-scan54" / "frames.npz"
    if scan.exists():
        with np.load(scan) as z:
            cases.append(("APS 34-ID-C scan 54", refinement_data(z["frames"].astype(np.float32), 64)[0], None))
    rows, all_curves = [], {}
    for name, measured, truth in cases:
        row, curves = one_case(name, measured, predictor, truth)
        rows.append(row)
        all_curves[name] = curves
        fmt = lambda v: f"{v:.1f}×" if v else "not reached"  # noqa: E731
        print(f"{name:24s} {row['grid']}³  ER/HIO χ {row['erhio_chi']:.4f} in {row['erhio_s']:.1f} s | "
              f"NN χ {row['nn_chi']:.4f} | NN+AD χ {row['nn_ad_chi']:.4f} in {row['nn_ad_s']:.1f} s | "
              f"speed-up to ER/HIO's χ: NN+AD {fmt(row['speedup_ad'])}, NN+ER/HIO {fmt(row['speedup_nn_erhio'])}")
        if truth is not None:
            print(f"{'':24s} errors amplitude/phase: ER/HIO {row['erhio_err']['amplitude']:.3f}/{row['erhio_err']['phase']:.3f}"
                  f"  NN+AD {row['nn_ad_err']['amplitude']:.3f}/{row['nn_ad_err']['phase']:.3f}")
    name = cases[0][0]
    series = {k: v[1] for k, v in all_curves[name].items()}
    xs = {k: [max(t, 1e-3) for t in v[0]] for k, v in all_curves[name].items()}
    plots.curve(xs, series, args.out, "wall time (s)", "χ", f"time to quality — {name}", logx=True, logy=True)
    for size in (64, 128):
        before, during = peak_memory_mb(size)
        print(f"peak memory of a {size}³ refinement: {during:.0f} MB RSS, {during - before:.0f} MB above "
              f"the process with TensorFlow loaded and the data read ({before:.0f} MB)")
    print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
