"""3D-CDI-NN latency and throughput on this CPU, beside ER/HIO in the same run.

Prints ms per scan at batch 1, scans/s at batch 64, the ER/HIO time per scan
(paper schedule, 620 iterations) and the speed-up; then the width trade-off
table (parameters, FLOPs, latency) for untrained models of other widths.
    .venv/bin/python benchmarks/nn_latency.py
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from shared.nn import network  # noqa: E402
from shared.nn.inference import Predictor, use_all_cores  # noqa: E402
from shared.physics import crystals, fourier, phasing  # noqa: E402


def conv_flops(model) -> float:
    """Multiply-adds ×2 of every Conv3D layer for one scan."""
    total = 0.0
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.Conv3D) or layer.__class__.__name__ == "Conv3D":
            out = np.prod(layer.output.shape[1:4])
            cin = layer.input.shape[-1]
            total += 2 * out * np.prod(layer.kernel_size) * cin * layer.filters
    return total


def timed(func, repeats):
    func()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        func()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def latency(model, batch: int, repeats: int) -> float:
    call = tf.function(lambda x: model(x, training=False))
    x = np.random.default_rng(0).random((batch, 32, 32, 32)).astype(np.float32)
    return timed(lambda: call(x), repeats)


def main():
    use_all_cores()
    predictor = Predictor()
    rng = np.random.default_rng(1)
    scans = [fourier.intensity(fourier.make_object(*crystals.random_crystal(32, rng)[:2])) for _ in range(8)]
    intensity = np.stack(scans)
    single = latency(predictor.model, 1, 30)
    batched = latency(predictor.model, 64, 3) / 64
    end_to_end = timed(lambda: predictor.reconstruct(intensity[:1]), 10)  # as shipped: 4 mirror images averaged
    predictor.mirrored = False
    end_to_end_plain = timed(lambda: predictor.reconstruct(intensity[:1]), 10)
    predictor.mirrored = True
    erhio = timed(lambda: phasing.phase_retrieve(intensity), 1) / len(intensity)
    print(f"shipped model (width {predictor.card['width']}), {os.cpu_count()} cores")
    print(f"  batch 1 : {1000 * single:7.1f} ms per scan (network call); {1000 * end_to_end:.1f} ms incl. pre/post-processing "
          f"and the mirror average ({1000 * end_to_end_plain:.1f} ms without)")
    print(f"  batch 64: {1 / batched:7.1f} scans/s")
    print(f"  ER/HIO  : {erhio:7.2f} s per scan (620 iterations, batch of 8)")
    print(f"  speed-up: {erhio / single:.0f}× at batch 1, {erhio / batched:.0f}× batched")
    print("\n| width | parameters | GFLOP/scan | batch-1 ms | batch-64 scans/s |\n|---|---|---|---|---|")
    for width in (4, 8, 16, 32):
        model = network.build_model(width)
        print(f"| {width}/{2 * width}/{4 * width} | {model.count_params():,} | {conv_flops(model) / 1e9:.2f} | "
              f"{1000 * latency(model, 1, 10):.1f} | {64 / latency(model, 64, 2):.1f} |")


if __name__ == "__main__":
    main()
