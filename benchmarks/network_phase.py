"""Does the network earn its place (issue 33)? Two sets of weights on the same held-out crystals, same run.

For each crystal family (``shared.physics.families``) at a seed no training set used:
    network        the plain phase error of the network's own answer (BCDI's ambiguities removed)
    flat           its amplitude with a flat phase: the bar the network's phase has to beat
    beats flat     the share of scans where the network's phase is the better one
    amplitude      the network's amplitude error
    preview 60 %   the live preview with the first 60 % of the frames (the peak passed), warm-started, as the
                   service runs it, and with all frames: right (< 0.1 rad) and median error
    refined        the refined stage's first run (``REFINE_PLAN`` from the network's starts, no run again):
                   right and seconds per scan: do the network's starts improve it?
    short          ``SHORT_PLAN``: 120 iterations from the network's answer alone: do its starts shorten the plan?
    real data      χ of the network's answer against the two real sets' 32³ network inputs (no truth there, and
                   no training set holds them); the paper's own network's answer for its example is the yardstick

    .venv/bin/python benchmarks/network_phase.py --weights shipped,runs/new/final.weights.h5
                     [--count 48] [--seed 9940] [--families facets,defects,fill] [--network-only] [--json out.json]
    .venv/bin/python benchmarks/network_phase.py --weights shipped:plain,shipped   # without and with mirror averaging
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.wire import realdata  # noqa: E402
from shared.nn.data import magnitude_of, truncate_frames  # noqa: E402
from shared.nn.inference import Predictor  # noqa: E402
from shared.physics import downsample, families, metrics  # noqa: E402
from shared.solver import evaluation, trust  # noqa: E402
from shared.solver.plans import PREVIEW_PLAN, REFINE_PLAN, Plan, converge  # noqa: E402

RIGHT = 0.1  # rad
PARTIAL = 0.6
# A short plan from the network's own answer alone: if its phase is worth having, this is where it shows.
SHORT_PLAN = Plan(starts=("nn",), explore=(), converge="80*HIO+20*ER", tighten="", polish_steps=0)


def phase_errors(estimates, truth) -> np.ndarray:
    return np.array(evaluation.all_errors(estimates, truth)["phase_unweighted"])


def measure(predictor: Predictor, family: str, count: int, seed: int, network_only: bool = False) -> dict:
    intensity, truth, _ = evaluation.population(family, count, seed)
    magnitudes = magnitude_of(intensity)
    amp, phase = predictor.predict_magnitudes(magnitudes)
    nn = (amp * np.exp(1j * phase)).astype(np.complex64)
    nn_errors = evaluation.all_errors(nn, truth)  # phase and amplitude in one pass
    network = np.array(nn_errors["phase_unweighted"])
    flat = phase_errors(np.abs(nn).astype(np.complex64), truth)
    row = {"network": float(np.median(network)), "flat": float(np.median(flat)),
           "beats flat": float(np.mean(network < flat)), "amplitude": float(np.median(nn_errors["amplitude"])),
           "count": count}
    if network_only:
        return row
    size = magnitudes.shape[1]
    kept = int(round(PARTIAL * size))
    partial = truncate_frames(magnitudes, np.full(count, kept))
    measured = np.broadcast_to((np.arange(size) < kept)[:, None, None], partial.shape[1:])
    a, p = predictor.predict_magnitudes(partial)
    partial_nn = (a * np.exp(1j * p)).astype(np.complex64)
    early = converge(partial**2, partial_nn, measured, PREVIEW_PLAN).obj  # frames not yet taken left free
    late = converge(magnitudes**2, nn, plan=PREVIEW_PLAN, warm=list(early)).obj  # as the service: its inputs
    counting = [trust.photon_step(v) is not None for v in intensity]
    started = time.perf_counter()
    refined = converge(intensity, nn, plan=REFINE_PLAN, counting=counting).obj
    refined_s = (time.perf_counter() - started) / count
    started = time.perf_counter()
    short = converge(intensity, nn, plan=SHORT_PLAN, counting=counting).obj
    short_s = (time.perf_counter() - started) / count
    errors = {"preview 60 %": phase_errors(early, truth), "preview 100 %": phase_errors(late, truth),
              "refined": phase_errors(refined, truth), "short": phase_errors(short, truth)}
    return {**row, **{f"{k} right": int(np.sum(v < RIGHT)) for k, v in errors.items()},
            **{f"{k} median": float(np.median(v)) for k, v in errors.items()},
            "refined s per scan": refined_s, "short s per scan": short_s}


def real_inputs(data: Path) -> dict[str, np.ndarray]:
    """The two real sets as the network sees them: 32³ magnitudes (max 1)."""
    paper = realdata.paper_intensity("ft_downsampled_32.npy", data)
    scan54 = realdata.scan54_frames(root=data)
    return {"paper example": downsample.network_input(paper), "scan 54": downsample.network_input(scan54)}


def real_chi(predictor: Predictor, inputs: dict[str, np.ndarray]) -> dict[str, float]:
    amp, phase = predictor.predict_magnitudes(np.stack(list(inputs.values())))
    return {name: metrics.chi(a * np.exp(1j * p), m**2) for name, a, p, m in zip(inputs, amp, phase, inputs.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="shipped", help="comma-separated weight files ('shipped': the default; "
                        "a ':plain' suffix: without mirror averaging)")
    parser.add_argument("--count", type=int, default=48)
    parser.add_argument("--seed", type=int, default=9940)
    parser.add_argument("--families", default=",".join(families.NAMES))
    parser.add_argument("--network-only", action="store_true", help="the network and the flat phase only (seconds)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--data", type=Path, default=realdata.folder(),
                        help="the real sets")
    args = parser.parse_args()
    rows, real = [], {}
    inputs = real_inputs(args.data) if args.data.is_dir() else {}
    if inputs:
        paper_nn = np.load(realdata.paper_file("nn_output_32.npy", args.data))
        real["the paper's network"] = {"paper example": metrics.chi(paper_nn, inputs["paper example"] ** 2)}
    for weights in args.weights.split(","):
        path, _, mode = weights.partition(":")  # "…:plain": one answer per pattern, not the mirrors' average
        predictor = Predictor(None if path == "shipped" else path, mirrored=mode != "plain")
        predictor.predict_magnitudes(np.zeros((1, 32, 32, 32), np.float32))  # graph built outside timings
        if inputs:
            real[weights] = real_chi(predictor, inputs)
            print(json.dumps({"weights": weights, "real χ": real[weights]}), flush=True)
        for family in args.families.split(","):
            measured = measure(predictor, family, args.count, args.seed, args.network_only)
            row = {"weights": weights, "family": family, **measured}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"families": rows, "real χ": real}, indent=1))
    print("\n| weights | family | network phase | flat phase | network beats flat | amplitude | "
          "preview 60 % right | preview 100 % right | refined right | refined s/scan | short plan right | "
          "short s/scan |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        n = r["count"]
        if "refined right" not in r:
            r = {**r, "preview 60 % right": "—", "preview 100 % right": "—", "refined right": "—", "short right": "—",
                 "refined s per scan": float("nan"), "short s per scan": float("nan")}
        print(f"| {r['weights']} | {r['family']} | {r['network']:.3f} | {r['flat']:.3f} | {r['beats flat']:.0%} | "
              f"{r['amplitude']:.3f} | {r['preview 60 % right']}/{n} | {r['preview 100 % right']}/{n} | "
              f"{r['refined right']}/{n} | {r['refined s per scan']:.2f} | {r['short right']}/{n} | "
              f"{r['short s per scan']:.2f} |")

    if real:
        print("\nχ of the network's answer against the real sets' 32³ inputs (lower fits the data better):\n")
        print("| weights | paper example | scan 54 |\n|---|---|---|")
        for name, chis in real.items():
            print(f"| {name} | {chis['paper example']:.3f} | " + (f"{chis['scan 54']:.3f} |" if "scan 54" in chis
                                                                      else "— |"))


if __name__ == "__main__":
    main()
