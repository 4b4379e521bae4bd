"""Held-out evaluation of the refined stage, 3D-CDI-NN, ER/HIO with 1 and 4 random starts and cohere-core
(1 start, best of 4, its genetic algorithm) where installed.

Produces a Markdown report with PNG figures: success rate and plain phase error
per method, error distributions, central slices, the live preview on partial
scans against a flat phase, and both real data sets (χ of the written result
against the input, beside `phase-retrieve --starts 4`, timed in the same run).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from shared import effort, plots, trust, yardstick
from shared.nn.data import magnitude_of, truncate_frames
from shared.physics import crystals, metrics, phasing
from shared.pipeline import PREVIEW_PLAN, REFINE_PLAN, REFINE_SIZE, converge

FRACTIONS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
SUCCESS = 0.1  # rad: plain RMS phase error below this is a success


def held_out_set(count: int, seed: int, photons=(1e5, 1e7)):
    """Crystals never seen in training (training shards use other seeds); every third is noise-free."""
    scans = [crystals.simulated_scan(32, seed, i, i, True, (0.0, 0.0) if i % 3 == 0 else photons)
             for i in range(count)]
    intensity = np.stack([s[0] for s in scans]).astype(np.float32)
    truth = np.stack([s[1] * np.exp(1j * s[2]) for s in scans]).astype(np.complex64)
    return intensity, truth


def all_errors(estimates, truth) -> dict[str, list[float]]:
    values = {"amplitude": [], "phase": [], "phase_unweighted": []}
    for est, true in zip(estimates, truth):
        for key, value in metrics.errors(est, true).items():
            values[key].append(value)
    return values


def timed(fn):
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def cohere_rows(intensity, bar=None) -> dict[str, tuple[np.ndarray, float]]:
    """cohere-core as its users run it, on the same crystals: (objects, seconds) for 1 start, the best of
    4 (whose first start is the 1-start row) and its genetic algorithm."""
    starts, ga, start_s, ga_s = [], [], 0.0, 0.0
    for k, volume in enumerate(intensity):
        runs, seconds = timed(lambda: [yardstick.cohere_phase(volume, seed=4 * k + j) for j in range(4)])
        starts.append(runs)
        start_s += seconds
        bred, seconds = timed(lambda: yardstick.cohere_ga(volume, seed=k))
        ga.append(bred)
        ga_s += seconds
        if bar is not None:
            bar.update(1)
    return {"cohere-core, 1 start": (np.stack([runs[0][0] for runs in starts]), start_s / 4),
            "cohere-core, best of 4": (np.stack([yardstick.lowest_error(runs) for runs in starts]), start_s),
            f"cohere-core, GA ({yardstick.GA_POPULATION}×{yardstick.GA_GENERATIONS})": (np.stack(ga), ga_s)}


def evaluate(predictor, out: Path, count: int = 48, seed: int = 9000, real_data: Path | None = None,
             real_size: int = REFINE_SIZE, cohere: bool = True) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    intensity, truth = held_out_set(count, seed)
    magnitudes = magnitude_of(intensity)
    predictor.predict_magnitudes(magnitudes[:2])  # warm-up: exclude graph building from timings
    converge(intensity[:1], np.abs(truth[:1]), plan=REFINE_PLAN)  # and the AD polish's
    (amp, phase), nn_s = timed(lambda: predictor.predict_magnitudes(magnitudes))
    nn = (amp * np.exp(1j * phase)).astype(np.complex64)
    stage, refine_s = timed(lambda: effort.refine_with_effort(  # with adaptive effort, as the service runs it
        intensity, nn, None, REFINE_PLAN, [trust.noise_floor(v) for v in intensity],
        converge(intensity, nn, plan=REFINE_PLAN))[0])
    refined = stage.obj
    trusted, trust_s = timed(lambda: trust_of(stage, intensity))
    refine_s += trust_s  # the verdict and the uncertainty map are part of the stage's answer
    preview, preview_s = timed(lambda: converge(intensity, nn, plan=PREVIEW_PLAN).obj)
    baselines = {}
    for starts in (1, 4):
        with tqdm(total=620 * count * starts, desc=f"ER/HIO ×{starts}", unit="it·scan") as bar:
            baselines[starts] = timed(lambda: np.concatenate([
                phasing.phase_retrieve(intensity[i:i + 16], starts=starts, seed=i,
                                       progress=lambda k, b=len(intensity[i:i + 16]) * starts: bar.update(k * b))[0]
                for i in range(0, count, 16)]))
    yardsticks = {}
    cohere = cohere and yardstick.available()
    if cohere:
        with tqdm(total=count, desc="cohere-core ×4 and GA", unit="scan") as bar:
            yardsticks = cohere_rows(intensity, bar)
    methods = {"refined stage (NN → ER/HIO → AD)": (refined, nn_s + refine_s),
               "preview (NN shape + 60 ER/HIO)": (preview, nn_s + preview_s),
               "3D-CDI-NN": (nn, nn_s),
               "ER/HIO, 1 random start": baselines[1],
               "ER/HIO, 4 random starts": baselines[4],
               **yardsticks,
               "NN amplitude, flat phase": (np.abs(nn).astype(np.complex64), nn_s),
               "zero phase, true support": (np.abs(truth).astype(np.complex64), None)}
    results = {}
    for name, (estimates, _) in tqdm(methods.items(), desc="metrics"):
        results[name] = all_errors(estimates, truth)
        results[name]["chi"] = [metrics.chi(e, i) for e, i in zip(estimates, intensity)]
    plots.distributions(results, out / "errors.png", f"held-out simulated crystals (n={count})")
    middle = int(np.argsort(results["3D-CDI-NN"]["phase_unweighted"])[count // 2])
    show = {"truth": truth[middle], "3D-CDI-NN": nn[middle], "refined": refined[middle],
            "ER/HIO ×4": baselines[4][0][middle]}
    plots.central_slices({k: metrics.canonical(v)[:2] for k, v in show.items()}, out / "slices.png",
                         "median crystal: truth | 3D-CDI-NN | refined stage | ER/HIO, best of 4")
    partial = partial_scans(predictor, magnitudes, truth)
    plots.curve(list(FRACTIONS), {k: v["median"] for k, v in partial.items()}, out / "partial.png",
                "fraction of rocking frames acquired", "median plain phase error (rad)", "live preview on partial scans")
    real = evaluate_real(predictor, out, real_data, real_size) if real_data else {}
    errors_refined = results["refined stage (NN → ER/HIO → AD)"]["phase_unweighted"]
    summary = {"count": count, "seed": seed, "cohere": cohere, "plan": REFINE_PLAN.describe(), "preview_plan": PREVIEW_PLAN.describe(),
               "calibration": calibration(trusted, errors_refined),
               "seconds_per_scan": {name: (t / count if t is not None else None) for name, (_, t) in methods.items()},
               "success": {name: int(np.sum(np.array(r["phase_unweighted"]) < SUCCESS)) for name, r in results.items()},
               "median": {m: {k: float(np.median(v)) for k, v in r.items()} for m, r in results.items()},
               "partial": partial, "real": real}
    (out / "README.md").write_text(report(summary))
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    return summary


def trust_of(stage, intensity) -> list[dict]:
    """Per scan of a ``converge`` result: noise floor, mean phase uncertainty over the crystal, verdict."""
    rows = []
    for obj, alternatives, fitted, volume in zip(stage.obj, stage.alternatives, stage.support, intensity):
        floor = trust.noise_floor(volume)
        spread = trust.phase_spread(obj, list(alternatives))
        support = np.abs(obj) > 0.1 * np.abs(obj).max()
        chi, free = metrics.chi(obj, volume), trust.free_fraction(fitted)
        rows.append({"chi": chi, "floor": floor, "fitted_floor": trust.fitted_floor(floor, free),
                     "uncertainty": float(spread[support].mean()), "verdict": trust.verdict(chi, floor, spread, support, free)})
    return rows


def calibration(rows: list[dict], errors: list[float]) -> dict:
    """Verdict against truth, and the uncertainty against the actual error (quartile bins)."""
    right = [e < SUCCESS for e in errors]
    table = {v: {"right": sum(r["verdict"] == v and ok for r, ok in zip(rows, right)),
                 "wrong": sum(r["verdict"] == v and not ok for r, ok in zip(rows, right))}
             for v in ("converged", "uncertain")}
    spread = np.array([r["uncertainty"] for r in rows])
    edges = np.quantile(spread, [0, 0.25, 0.5, 0.75, 1.0])
    bins = []
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (spread >= low) & (spread <= high)
        bins.append({"uncertainty": [float(low), float(high)], "scans": int(inside.sum()),
                     "median_error": float(np.median(np.array(errors)[inside])) if inside.any() else None,
                     "wrong": int(sum(not ok for ok, i in zip(right, inside) if i))})
    return {"verdicts": table, "bins": bins,
            "mean_uncertainty_right": float(np.mean(spread[np.array(right)])) if any(right) else None,
            "mean_uncertainty_wrong": float(np.mean(spread[~np.array(right)])) if not all(right) else None,
            "rows": [{**r, "error": float(e)} for r, e in zip(rows, errors)]}


def partial_scans(predictor, magnitudes, truth) -> dict:
    """Plain phase error of the preview, the network and a flat phase when only the first frames are in."""
    series = {"preview": [], "3D-CDI-NN": [], "flat phase": []}
    better = []
    size = magnitudes.shape[1]
    for fraction in tqdm(FRACTIONS, desc="partial scans"):
        kept = int(round(fraction * size))
        partial = truncate_frames(magnitudes, np.full(len(magnitudes), kept))
        measured = np.broadcast_to((np.arange(size) < kept)[:, None, None], partial.shape[1:])
        a, p = predictor.predict_magnitudes(partial)
        nn = (a * np.exp(1j * p)).astype(np.complex64)
        preview = converge(partial**2, nn, measured, PREVIEW_PLAN).obj
        errs = {"preview": all_errors(preview, truth)["phase_unweighted"],
                "3D-CDI-NN": all_errors(nn, truth)["phase_unweighted"],
                "flat phase": all_errors(np.abs(nn).astype(np.complex64), truth)["phase_unweighted"]}
        for key, values in errs.items():
            series[key].append(float(np.median(values)))
        better.append(float(np.mean(np.array(errs["preview"]) < np.array(errs["flat phase"]))))
    return {key: {"median": values} for key, values in series.items()} | {"preview beats flat": {"median": better}}


def real_sets(data: Path, real_size: int) -> dict[str, np.ndarray]:
    """Both real sets as intensities: the paper's 64³ crop, and the APS scan DCT-downsampled to ``real_size``
    per axis (phase-retrieve on the raw 201×256×256 frames would take about 20 minutes here)."""
    sets = {}
    paper = data / "paper-example" / "ft_crop_64.npy"
    if paper.exists():
        sets["paper example (Au, ft_crop_64², 64³)"] = np.load(paper).astype(np.float32) ** 2
    scan = data / "aps-34idc-scan54" / "frames.npz"
    if scan.exists():
        from shared.reconstruction import peak_offset, peak_to_centre, to_grid

        with np.load(scan) as z:
            frames = z["frames"].astype(np.float32)
        centred = peak_to_centre(frames, peak_offset(frames))
        grid = tuple(min(n, real_size) for n in frames.shape)
        sets[f"APS 34-ID-C scan 54 (201×256×256, DCT to {'×'.join(map(str, grid))})"] = to_grid(centred, grid)
    return sets


def evaluate_real(predictor, out: Path, data: Path, real_size: int = REFINE_SIZE) -> dict:
    """Both real sets: χ of the written refined result and of `phase-retrieve --starts 4` against the same input."""
    from shared.reconstruction import reconstruct

    summary = {}
    for k, (name, intensity) in enumerate(real_sets(data, real_size).items()):
        stages, ours_s = timed(lambda: reconstruct(intensity[None], predictor, refine=True))
        refined, nn = stages["refined"], stages["nn"]
        ours = refined.amplitude[0] * np.exp(1j * refined.phase[0])
        (objects, _, _), erhio_s = timed(lambda: phasing.phase_retrieve(intensity[None], starts=4, seed=k))
        ea, ep, _ = metrics.canonical(objects[0], phase_outside=True)  # as phase-retrieve writes it
        erhio = ea * np.exp(1j * ep)
        summary[name] = {"shape": list(intensity.shape), "nn_chi": float(nn.chi[0]),
                         "refined_chi": metrics.chi(ours, intensity), "refined_chi_reported": float(refined.chi[0]),
                         "refined_seconds": ours_s, "erhio_chi": metrics.chi(erhio, intensity), "erhio_seconds": erhio_s,
                         "start": refined.info["start"][0], "figure": f"real_{k}.png",
                         "verdict": refined.info["verdict"][0], "chi_floor": float(refined.info["chi_floor"][0])}
        plots.central_slices({"refined stage": (refined.amplitude[0], refined.phase[0] * refined.support[0]),
                              "ER/HIO (best of 4)": metrics.canonical(objects[0])[:2]}, out / f"real_{k}.png", name)
    return summary


def _version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"


def report(s: dict) -> str:
    med, times = s["median"], s["seconds_per_scan"]
    lines = ["# Evaluation: refined stage, 3D-CDI-NN, ER/HIO and cohere-core", "",
             f"Held-out simulated Au crystals: {s['count']} (seed {s['seed']}, disjoint from training and from the "
             "seed the refined stage was tuned on), 32³, every third noise-free, the others with Poisson noise at "
             "1e5–1e7 photons. Errors remove the BCDI ambiguities (offset, shift, ramp, twin). **Success**: plain RMS "
             f"phase error inside the true support (amplitude > ½ max) below {SUCCESS} rad. The weighted phase error "
             "weights each voxel by the estimate's amplitude there (a voxel the estimate leaves empty is a shape "
             "error). Times are per scan on this machine's CPU, batched, all in one run. Generated by "
             "`cdi-live evaluate`.", "", f"Refined stage: {s['plan']}; a scan it leaves uncertain runs again from new starts, up to "
             f"{effort.MAX_RUNS} runs (adaptive effort, `shared/effort.py`).", "",
             f"Preview: {s['preview_plan']}.", "",
             "| method | success | median plain phase error (rad) | median amplitude error | median χ | time per scan "
             "| median weighted phase error |",
             "|---|---|---|---|---|---|---|"]
    for name, m in med.items():
        t = times.get(name)
        t = "—" if t is None else (f"{1000 * t:.1f} ms" if t < 1 else f"{t:.2f} s")
        lines.append(f"| {name} | {s['success'][name]}/{s['count']} | {m['phase_unweighted']:.3f} "
                     f"| {m['amplitude']:.3f} | {m['chi']:.3f} | {t} | {m['phase']:.3f} |")
    ref, four, cohere4 = "refined stage (NN → ER/HIO → AD)", "ER/HIO, 4 random starts", "cohere-core, best of 4"
    if times.get(ref) and times.get(four):
        lines += ["", f"The refined stage takes {times[four] / times[ref]:.1f}× less time per scan than ER/HIO "
                      "with 4 random starts on the same batch"
                  + (f", {times[cohere4] / times[ref]:.1f}× less than cohere-core's best of 4." if times.get(cohere4)
                     else ".")]
    if s.get("cohere"):
        lines += ["", f"cohere-core {_version('cohere-core')} (APS), numpy backend, as its users run it: "
                  "3*(20*ER+180*HIO)+20*ER, HIO β 0.9, Gaussian shrink-wrap (σ 1, threshold 0.1) every iteration, "
                  "initial support half the array, twin removal; best of 4 by cohere's own error; its genetic "
                  f"algorithm with {yardstick.GA_POPULATION} members × {yardstick.GA_GENERATIONS} generations, "
                  f"breeding {yardstick.GA_BREED} with the best (`shared/yardstick.py`). Its object is conjugated "
                  "(ifftn convention) before it is compared."]
    else:
        lines += ["", "cohere-core is not installed here: its rows are left out (`pip install '.[yardstick]'`)."]
    c = s["calibration"]
    v = c["verdicts"]
    called = v["converged"]["right"] + v["converged"]["wrong"]
    lines += ["", "## Trust: verdict and uncertainty against the truth (`shared/trust.py`)", "",
              "Each refined answer carries a verdict and a per-voxel phase uncertainty (the spread of independent "
              "solutions after alignment). The χ a right answer reaches is the data's Poisson floor lowered by the "
              "noise its free voxels fit: floor·√(1 − 2·support/measured voxels), the fitted floor. Rule: "
              f"{trust.RULE}.", "",
              "| verdict | right (< 0.1 rad) | wrong |", "|---|---|---|",
              f"| converged | {v['converged']['right']} | {v['converged']['wrong']} |",
              f"| uncertain | {v['uncertain']['right']} | {v['uncertain']['wrong']} |", "",
              f"Called converged: {called}/{s['count']}; right among them: "
              f"{v['converged']['right']}/{called if called else 1}. Mean uncertainty over the crystal: "
              f"{c['mean_uncertainty_right'] or float('nan'):.3f} rad on right answers, "
              f"{c['mean_uncertainty_wrong'] or float('nan'):.3f} on wrong ones.", "",
              "| mean uncertainty (rad) | scans | median actual phase error | wrong |", "|---|---|---|---|"]
    for b in c["bins"]:
        median = "—" if b["median_error"] is None else f"{b['median_error']:.3f}"
        lines.append(f"| {b['uncertainty'][0]:.3f}–{b['uncertainty'][1]:.3f} | {b['scans']} | {median} | {b['wrong']} |")
    lines += ["", "![error distributions](errors.png)", "", "![central slices](slices.png)", "",
              "## Partial scans (the live preview)", "",
              "Median plain phase error with only the first frames of the rocking curve; the preview leaves the "
              "frames not yet taken free (masked), the network sees them as zeros.", "",
              "| fraction of frames | preview | 3D-CDI-NN | flat phase (NN shape) | scans where preview beats flat |",
              "|---|---|---|---|---|"]
    p = s["partial"]
    for i, f in enumerate(FRACTIONS):
        lines.append(f"| {f:.1f} | {p['preview']['median'][i]:.3f} | {p['3D-CDI-NN']['median'][i]:.3f} "
                     f"| {p['flat phase']['median'][i]:.3f} | {100 * p['preview beats flat']['median'][i]:.0f} % |")
    lines += ["", "![partial scans](partial.png)", "", "## Real data", "",
              "χ = ‖s·|fftshift(fftn(amplitude·e^{i·phase}))| − √I‖ / ‖√I‖ (best scale s) of the written result "
              "against the same input for both tools; both timed in this run. The paper's example is photon counts "
              "normalised to a maximum of 1: its floor comes from the counts, recovered by its one-photon step "
              "(the smallest non-zero value; 6.4·10⁶ photons at the peak). Scan 54 is DCT-downsampled here (no "
              "longer counts: floor 0). Scan 54 at full resolution, as `reconstruct --refine` runs it (the full-grid stage): "
              "floor 0.142 from its raw counts, χ 0.152, verdict uncertain (the floor is above 0.125: too few "
              "photons to promise 0.1 rad); see docs/BENCHMARKS.md.", "",
              "| data | χ refined stage (file) | χ reported | χ floor | verdict | time | χ `phase-retrieve --starts 4` "
              "| time | χ 3D-CDI-NN |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, r in s["real"].items():
        lines.append(f"| {name} | {r['refined_chi']:.4f} | {r['refined_chi_reported']:.4f} | {r.get('chi_floor', 0):.4f} "
                     f"| {r.get('verdict', '—')} | {r['refined_seconds']:.1f} s "
                     f"| {r['erhio_chi']:.4f} | {r['erhio_seconds']:.1f} s | {r['nn_chi']:.3f} |")
    for name, r in s["real"].items():
        lines += ["", f"![{name}]({r['figure']})"]
    return "\n".join(lines) + "\n"
