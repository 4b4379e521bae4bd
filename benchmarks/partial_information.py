"""How much do the first frames of a scan say? An oracle bound for the live preview (issue 33).

The preview's target is a right phase (< 0.1 rad) with 60 % of the frames. Before tuning a plan for it, ask
whether the data allow it: give ER/HIO the *true* support (the crystal's own shape, dilated by one voxel,
held fixed: no plan can know more of the shape) and let the frames not yet taken float, as the preview does.
Then, per scan and fraction of frames:

    oracle right    best of ``--starts`` random starts (by χ_free on the frames taken) is right
    truth's χ_free  the true object's own misfit on the withheld voxels of the frames taken (its scale fitted)
    look-alikes     among the scans the coherent model describes (no detector blur, no background), those where
                    the search found a *wrong* answer (> 0.1 rad) inside the true support that fits the withheld
                    voxels of the frames taken as well as the truth does (χ_free ≤ truth's + ``--slack``): on
                    such a scan no method judged by the data, with any support, can tell which is the crystal.
                    χ_free, not χ: on the fitted voxels a wrong answer beats the truth by fitting noise

The search withholds the service's free voxels (``phasing.free_voxels``, 5 %) from every projection.
    preview right   the shipped preview (``PREVIEW_PLAN`` from the network, warm-started over the fractions
                    as live), same scans, same run

    .venv/bin/python benchmarks/partial_information.py [--count 16] [--seed 9980] [--fractions 0.6,0.8,1.0]
                     [--families facets,defects,fill] [--starts 4] [--no-preview] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import scipy.fft as sfft
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.physics import metrics, phasing  # noqa: E402
from shared.solver import evaluation  # noqa: E402

RIGHT = 0.1  # rad
SCHEDULE = phasing.PAPER_SCHEDULE  # the textbook's 620 iterations, the support held
AXES = (1, 2, 3)


def true_support(truth: np.ndarray) -> np.ndarray:
    amp = np.abs(truth)
    inside = amp > 0.1 * amp.max(axis=AXES, keepdims=True)
    return np.stack([ndimage.binary_dilation(s, iterations=1) for s in inside])


def oracle_search(intensity, support, taken, starts: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """ER/HIO inside the true support (held), frames not taken free: (best answer per scan by χ_free, its χ_free)."""
    batch, size = len(intensity), intensity.shape[1]
    magnitude = sfft.ifftshift(np.sqrt(np.clip(intensity, 0, None)), axes=AXES).astype(np.float32)
    magnitude = np.repeat(magnitude, starts, axis=0)
    held = np.repeat(support, starts, axis=0)
    fitted = sfft.ifftshift(taken & ~phasing.free_voxels(taken.shape))
    measured = np.broadcast_to(fitted, magnitude.shape).copy()
    rng = np.random.default_rng(seed)
    obj = (held * np.exp(1j * rng.uniform(-np.pi, np.pi, held.shape))).astype(np.complex64)
    scale = np.sqrt((magnitude**2).sum(AXES) / ((np.abs(obj) ** 2).sum(AXES) * size**3))
    obj *= scale.reshape(-1, 1, 1, 1).astype(np.float32)
    state = phasing.PhasingState(magnitude, obj, held, measured, shrink_every=0)
    result = phasing.run_schedule(state, SCHEDULE)
    chi = chi_free(result, np.repeat(intensity, starts, axis=0), taken)
    pick = chi.reshape(batch, starts).argmin(axis=1) + np.arange(batch) * starts
    return result[pick], chi[pick]


def chi_free(objects, intensity, taken) -> np.ndarray:
    """χ per scan on the withheld voxels of the frames taken (each object's scale fitted there)."""
    judged = taken & phasing.free_voxels(taken.shape)
    return np.array([metrics.chi(o, i, judged) for o, i in zip(objects, intensity)])


def previews(intensity, fractions) -> dict[float, np.ndarray]:
    """The shipped preview at each fraction, warm-started over the evaluation's fractions, as the service runs it."""
    from shared.nn.data import magnitude_of
    from shared.nn.inference import Predictor

    every = sorted(set(evaluation.FRACTIONS) | set(fractions))
    return {fraction: preview for fraction, preview, _, _ in
            evaluation.live_previews(Predictor(), magnitude_of(intensity), every) if fraction in fractions}


def measure(family: str, count: int, seed: int, fractions, starts: int, slack: float, preview: bool) -> dict:
    intensity, truth, kinds = evaluation.population(family, count, seed)
    support = true_support(truth)
    shown = previews(intensity, fractions) if preview else {}
    rows = {}
    for fraction in fractions:
        taken = evaluation.frames_taken(intensity.shape[1:], fraction)
        started = time.perf_counter()
        answer, chi = oracle_search(intensity, support, taken, starts, seed)
        error = np.array(evaluation.all_errors(answer, truth)["phase_unweighted"])
        truth_chi = chi_free(truth, intensity, taken)
        coherent = np.array([k["blur"] == 0 and k["background"] == 0 for k in kinds])
        look_alike = coherent & (error > RIGHT) & (chi <= truth_chi + slack)
        row = {"oracle right": int((error < RIGHT).sum()), "oracle median": float(np.median(error)),
               "look-alikes": int(look_alike.sum()), "coherent": int(coherent.sum()), "count": count,
               "noise-free look-alikes": int((look_alike & np.array([k["photons"] == 0 for k in kinds])).sum()),
               "seconds": time.perf_counter() - started,
               "scans": [{"error": float(e), "chi_free": float(c), "truth chi_free": float(t), **k}
                         for e, c, t, k in zip(error, chi, truth_chi, kinds)]}
        if fraction in shown:
            p_error = np.array(evaluation.all_errors(shown[fraction], truth)["phase_unweighted"])
            row |= {"preview right": int((p_error < RIGHT).sum()), "preview median": float(np.median(p_error))}
            for scan, e in zip(row["scans"], p_error):
                scan["preview error"] = float(e)
        rows[str(fraction)] = row
        print(f"{family} {fraction:.0%}: oracle {row['oracle right']}/{count} (median {row['oracle median']:.3f}), "
              f"look-alikes {row['look-alikes']}/{row['coherent']}"
              + (f", preview {row['preview right']}/{count} ({row['preview median']:.3f})" if fraction in shown else ""),
              flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--seed", type=int, default=9980)
    parser.add_argument("--fractions", default="0.6,0.8,1.0")
    parser.add_argument("--families", default="facets,defects,fill")
    parser.add_argument("--starts", type=int, default=4)
    parser.add_argument("--slack", type=float, default=0.005, help="χ above the truth's still called as good")
    parser.add_argument("--no-preview", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    fractions = [float(f) for f in args.fractions.split(",")]
    out = {"seed": args.seed, "starts": args.starts, "slack": args.slack, "schedule": SCHEDULE, "families": {}}
    for family in args.families.split(","):
        out["families"][family] = measure(family, args.count, args.seed, fractions, args.starts, args.slack,
                                          not args.no_preview)
    print("\n| family | frames | oracle right (median) | look-alikes (coherent scans) | preview right (median) |\n|---|---|---|---|---|")
    for family, rows in out["families"].items():
        for fraction, r in rows.items():
            shown = f"{r['preview right']}/{r['count']} ({r['preview median']:.3f})" if "preview right" in r else "—"
            print(f"| {family} | {float(fraction):.0%} | {r['oracle right']}/{r['count']} ({r['oracle median']:.3f}) "
                  f"| {r['look-alikes']}/{r['coherent']} | {shown} |")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
