"""Detector flags (issue 22): phase error with module gaps and dead pixels at the dtype's maximum.

Unseen simulated crystals (seed 4242, never tuned on), 1e6 photons, 32 frames of 32×32, uint32. Each
scan is reconstructed (refined stage) as sent, then with two detector columns beside the Bragg peak
(a module gap) and five dead pixels set to 2³²−1 (DECTRIS' flag):

    clean      the scan unflagged
    flags      flagged, no mask given (flags detected from the dtype's maximum)
    mask       flagged, and the gap given as a pixel mask (``--mask``)

Reports the median plain phase error (rad) of each, and each answer's verdict; target: flagged within +0.03 rad
of clean, and no wrong answer called converged.

    .venv/bin/python benchmarks/detector_flags.py [--crystals 8] [--seed 4242] [--weights shipped,runs/x/final.weights.h5]

With several weights, each is measured on the same crystals and flags, one after the other.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from services.beamline.sim import detector_flaws  # noqa: E402
from shared.wire.detector import invalid  # noqa: E402
from shared.nn.inference import Predictor  # noqa: E402
from shared.physics import crystals, fourier, metrics  # noqa: E402
from shared.solver.evaluation import SUCCESS  # noqa: E402
from shared.solver.stages import reconstruct  # noqa: E402

SEED, PHOTONS = 4242, 1e6


def flagged_copy(counts: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    """The frames with a 2-column gap beside the peak and 5 dead pixels at the flag, as the beamline simulator
    sends them (``detector_flaws``); their pixel mask."""
    peak_col = int(np.unravel_index(np.argmax(counts), counts.shape)[2])
    dead = [(rng.integers(0, counts.shape[1]), rng.integers(0, counts.shape[2])) for _ in range(5)]
    return detector_flaws(counts, [peak_col + 1, peak_col + 2], dead)


def phase_error(stage, truth) -> float:
    obj = stage.amplitude[0] * np.exp(1j * stage.phase[0])
    return metrics.errors(obj, truth)["phase_unweighted"]


def judged(row: dict, name: str, stage, truth) -> None:
    """The stage's phase error under ``name``, and its verdict (with its reason) under ``name``_verdict."""
    row[name] = phase_error(stage, truth)
    reason = stage.info["verdict_reason"][0]
    row[f"{name}_verdict"] = stage.info["verdict"][0] + (f" ({reason})" if reason else "")
    row[f"{name}_unmeasured_signal"] = stage.info["unmeasured_signal"][0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crystals", type=int, default=8)
    parser.add_argument("--seed", type=int, default=SEED, help="simulation seed of the crystals (never tuned on)")
    parser.add_argument("--weights", default="shipped", help="comma-separated weight files; 'shipped': the default")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report = {}
    for weights in args.weights.split(","):
        rows = measure(Predictor(None if weights == "shipped" else weights), args.seed, args.crystals)
        medians = {k: float(np.median([r[k] for r in rows])) for k in ("clean", "flags", "mask")}
        print(f"{weights}: median plain phase error over {len(rows)} crystals of seed {args.seed}: clean "
              f"{medians['clean']:.3f}, flags detected {medians['flags']:.3f} (+{medians['flags'] - medians['clean']:.3f}),"
              f" with --mask {medians['mask']:.3f} (+{medians['mask'] - medians['clean']:.3f}) rad; median penalty "
              f"{np.median([r['flags'] - r['clean'] for r in rows]):+.3f}", flush=True)
        for name in ("clean", "flags"):
            right = sum(r[name] < SUCCESS for r in rows)
            called = [r for r in rows if r[f"{name}_verdict"] == "converged"]
            print(f"  {name}: right {right}/{len(rows)}, called converged {len(called)}, wrong among them "
                  f"{sum(r[name] >= SUCCESS for r in called)}", flush=True)
        report[weights] = {"rows": rows, "medians": medians}
    if args.json:
        args.json.write_text(json.dumps({"seed": args.seed, "weights": report}, indent=1))


def measure(predictor, seed: int, count: int) -> list[dict]:
    """Per crystal: the refined stage's phase error clean, flagged (flags found from the dtype), and masked."""
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(count):
        intensity, amplitude, phase, _, _ = crystals.simulated_scan(32, seed, index, index, True, (PHOTONS, PHOTONS))
        truth = fourier.make_object(amplitude, phase)
        counts = np.round(intensity).astype(np.uint32)
        flagged, mask = flagged_copy(counts, rng)
        row = {"crystal": index}
        judged(row, "clean", reconstruct(counts[None].astype(np.float32), predictor, refine=True)["refined"], truth)
        bad = invalid(flagged)  # what the CLI and the service do with frames as sent
        as_sent = np.where(bad, 0, flagged).astype(np.float32)[None]
        judged(row, "flags", reconstruct(as_sent, predictor, refine=True, measured=~bad[None])["refined"], truth)
        with_mask = ~(bad | (mask != 0))[None]
        judged(row, "mask", reconstruct(as_sent, predictor, refine=True, measured=with_mask)["refined"], truth)
        rows.append(row)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    return rows


if __name__ == "__main__":
    main()
