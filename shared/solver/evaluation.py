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

from shared.solver import effort, stages, trust, yardstick
from shared import plots
from shared.wire import realdata
from shared.nn.data import magnitude_of, truncate_frames
from shared.physics import coherence, crystals, families, metrics, phasing
from shared.solver.plans import PREVIEW_PLAN, REFINE_PLAN, REFINE_SIZE, converge, preview_shown

FRACTIONS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
SUCCESS = trust.PROMISE  # rad: plain RMS phase error below this is a success (what "converged" promises)
REFINED = "refined stage (NN → ER/HIO → AD)"
PREVIEW = "preview (the refined plan without its polish, all frames)"
PARTIAL_ERRORS = ("preview", "3D-CDI-NN", "flat phase")  # the answers ``partial_scans`` measures at each fraction


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


def population(family: str, count: int, seed: int):
    """A family's held-out crystals (``shared.physics.families``): (intensity, truth, what each scan is)."""
    scans = families.population(family, count, seed)
    kinds = [{"kind": s.kind, "photons": s.photons, "background": s.background, "blur": s.blur} for s in scans]
    return (np.stack([s.intensity for s in scans]).astype(np.float32), np.stack([s.truth for s in scans]), kinds)


def evaluate(predictor, out: Path, count: int = 48, seed: int = 9000, real_data: Path | None = None,
             real_size: int = REFINE_SIZE, cohere: bool = True, family_names=families.NAMES) -> dict:
    """Every family's table (the tuning family marked), the real sets; Markdown, PNG and summary.json in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    cohere = cohere and yardstick.available()
    summary = {"count": count, "seed": seed, "cohere": cohere, "plan": REFINE_PLAN.describe(),
               "again_coherence": [coherence.blur_name(b) for b in effort.AGAIN_COHERENCE],
               "again_converge": effort.AGAIN_CONVERGE, "again_stall": effort.AGAIN_STALL,
               "blur_threshold": REFINE_PLAN.blur_threshold, "threshold": REFINE_PLAN.threshold,
               "width_step": effort.describe_width_step(),
               "preview_plan": PREVIEW_PLAN.describe(), "tuning_family": families.TUNING, "rule": trust.RULE,
               "families": {name: evaluate_family(predictor, out, name, count, seed, cohere) for name in family_names}}
    summary["real"] = evaluate_real(predictor, out, real_data, real_size) if real_data else {}
    (out / "README.md").write_text(report(summary))
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    return summary


def evaluate_family(predictor, out: Path, family: str, count: int, seed: int, cohere: bool) -> dict:
    intensity, truth, kinds = population(family, count, seed)
    magnitudes = magnitude_of(intensity)
    predictor.predict_magnitudes(magnitudes[:2])  # warm-up: exclude graph building from timings
    converge(intensity[:1], np.abs(truth[:1]), plan=REFINE_PLAN)  # and the AD polish's
    (amp, phase), nn_s = timed(lambda: predictor.predict_magnitudes(magnitudes))
    nn = (amp * np.exp(1j * phase)).astype(np.complex64)

    def refined_stage():  # the service's own path (`reconstruct --refine`): its answers, χ and verdicts exactly
        return stages.reconstruct(intensity, predictor, refine=True)["refined"]

    stage, refine_s = timed(refined_stage)
    refined = (stage.amplitude * np.exp(1j * stage.phase)).astype(np.complex64)
    trusted = trust_of(stage)
    preview, preview_s = timed(lambda: converge(intensity, nn, plan=PREVIEW_PLAN).obj)  # as the service: no background
    baselines = {}
    for starts in (1, 4):
        with tqdm(total=620 * count * starts, desc=f"{family}: ER/HIO ×{starts}", unit="it·scan") as bar:
            baselines[starts] = timed(lambda: np.concatenate([
                phasing.phase_retrieve(intensity[i:i + 16], starts=starts, seed=i,
                                       progress=lambda k, b=len(intensity[i:i + 16]) * starts: bar.update(k * b))[0]
                for i in range(0, count, 16)]))
    yardsticks = {}
    if cohere:
        with tqdm(total=count, desc=f"{family}: cohere-core ×4 and GA", unit="scan") as bar:
            yardsticks = cohere_rows(intensity, bar)
    methods = {REFINED: (refined, refine_s),  # its own network call included
               PREVIEW: (preview, nn_s + preview_s),
               "3D-CDI-NN": (nn, nn_s),
               "ER/HIO, 1 random start": baselines[1],
               "ER/HIO, 4 random starts": baselines[4],
               **yardsticks,
               "NN amplitude, flat phase": (np.abs(nn).astype(np.complex64), nn_s),
               "zero phase, true support": (np.abs(truth).astype(np.complex64), None)}
    results = {}
    for name, (estimates, _) in tqdm(methods.items(), desc=f"{family}: metrics"):
        results[name] = all_errors(estimates, truth)
        results[name]["chi"] = [metrics.chi(e, i) for e, i in zip(estimates, intensity)]
    results[REFINED]["chi"] = [float(c) for c in stage.chi]  # its file's χ: its model's, with blur and background
    plots.distributions(results, out / f"errors_{family}.png", f"{family} family, held out (n={count})")
    middle = int(np.argsort(results["3D-CDI-NN"]["phase_unweighted"])[count // 2])
    show = {"truth": truth[middle], "3D-CDI-NN": nn[middle], "refined": refined[middle],
            "ER/HIO ×4": baselines[4][0][middle]}
    plots.central_slices({k: metrics.canonical(v)[:2] for k, v in show.items()}, out / f"slices_{family}.png",
                         f"{family}, median crystal: truth | 3D-CDI-NN | refined stage | ER/HIO, best of 4")
    partial = partial_scans(predictor, magnitudes, truth)
    plot_partial(partial, out / f"partial_{family}.png", family)
    errors_refined = results[REFINED]["phase_unweighted"]
    return {"tuning": family == families.TUNING, "scans": kinds,
            "calibration": calibration(trusted, errors_refined),
            "seconds_per_scan": {name: (t / count if t is not None else None) for name, (_, t) in methods.items()},
            "success": {name: int(np.sum(np.array(r["phase_unweighted"]) < SUCCESS)) for name, r in results.items()},
            "median": {m: {k: float(np.median(v)) for k, v in r.items()} for m, r in results.items()},
            "partial": partial}


def plot_partial(partial: dict, path: Path, family: str) -> None:
    """The median errors of ``partial_scans`` against the fraction of frames (its shares are in the table: a share
    on an axis of radians would read as an error)."""
    plots.curve(list(FRACTIONS), {k: partial[k]["median"] for k in PARTIAL_ERRORS}, path,
                "fraction of rocking frames acquired", "median plain phase error (rad)",
                f"{family}: live preview on partial scans")


def trust_of(stage) -> list[dict]:
    """Per scan of the refined stage (``stages.reconstruct``): the trust fields its file, the API and the page
    give it, its χ as written there (its model's: blur and background) and the mean phase uncertainty over the
    crystal."""
    info = stage.info
    keys = ("verdict", "verdict_reason", "verdict_detail", "chi_free", "chi_free_floor", "chi_floor",
            "chi_floor_fitted", "unmeasured_signal", "resampled_error")
    return [{"chi": float(stage.chi[k]), **{key: info[key][k] for key in keys},
             "uncertainty": float(stage.uncertainty[k][stage.support[k]].mean())} for k in range(len(stage.chi))]


def calibration(rows: list[dict], errors: list[float]) -> dict:
    """Verdict against truth, and the uncertainty against the actual error (quartile bins)."""
    right = [e < SUCCESS for e in errors]
    table = {v: {"right": sum(r["verdict"] == v and ok for r, ok in zip(rows, right)),
                 "wrong": sum(r["verdict"] == v and not ok for r, ok in zip(rows, right))}
             for v in ("converged", "uncertain")}
    reasons = {reason: {"right": sum(r["verdict_reason"] == reason and ok for r, ok in zip(rows, right)),
                        "wrong": sum(r["verdict_reason"] == reason and not ok for r, ok in zip(rows, right))}
               for reason in trust.REASONS}
    spread = np.array([r["uncertainty"] for r in rows])
    edges = np.quantile(spread, [0, 0.25, 0.5, 0.75, 1.0])
    bins = []
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (spread >= low) & (spread <= high)
        bins.append({"uncertainty": [float(low), float(high)], "scans": int(inside.sum()),
                     "median_error": float(np.median(np.array(errors)[inside])) if inside.any() else None,
                     "wrong": int(sum(not ok for ok, i in zip(right, inside) if i))})
    return {"verdicts": table, "reasons": reasons, "bins": bins,
            "mean_uncertainty_right": float(np.mean(spread[np.array(right)])) if any(right) else None,
            "mean_uncertainty_wrong": float(np.mean(spread[~np.array(right)])) if not all(right) else None,
            "rows": [{**r, "error": float(e)} for r, e in zip(rows, errors)]}


def frames_taken(shape, fraction: float) -> np.ndarray:
    """Centred mask of a volume of ``shape`` whose first ``fraction`` of frames (rocking axis, axis 0) are in."""
    kept = int(round(fraction * shape[0]))
    return np.broadcast_to((np.arange(shape[0]) < kept)[:, None, None], tuple(shape))


def live_previews(predictor, magnitudes, fractions=FRACTIONS):
    """(fraction, answer shown, network answer, preview computed) as the frames come in: ``PREVIEW_PLAN`` on the
    first ``fraction`` of them (those not yet taken left free), each preview warm-started from the one before it;
    shown as live: the network's answer until the frames pass the rocking curve's peak (``plans.preview_shown``),
    then the preview."""
    shape, previous = magnitudes.shape[1:], None
    for fraction in fractions:
        partial = truncate_frames(magnitudes, np.full(len(magnitudes), int(round(fraction * shape[0]))))
        a, p = predictor.predict_magnitudes(partial)
        nn = (a * np.exp(1j * p)).astype(np.complex64)
        taken = frames_taken(shape, fraction)
        previous = converge(partial**2, nn, taken, PREVIEW_PLAN, warm=previous).obj
        shown = [preview_shown(x**2, taken[:, 0, 0]) == "network" for x in partial]
        yield fraction, np.where(np.array(shown)[:, None, None, None], nn, previous), nn, previous


def partial_scans(predictor, magnitudes, truth) -> dict:
    """Plain phase error of the preview (the answer the live view shows), the network and a flat phase when only the
    first frames are in."""
    series = {key: [] for key in PARTIAL_ERRORS}
    better, right = [], []
    for _, preview, nn, _ in tqdm(live_previews(predictor, magnitudes), total=len(FRACTIONS), desc="partial scans"):
        errs = {"preview": all_errors(preview, truth)["phase_unweighted"],
                "3D-CDI-NN": all_errors(nn, truth)["phase_unweighted"],
                "flat phase": all_errors(np.abs(nn).astype(np.complex64), truth)["phase_unweighted"]}
        for key, values in errs.items():
            series[key].append(float(np.median(values)))
        shown = np.array(errs["preview"])
        better.append(float(np.mean(shown < np.array(errs["flat phase"]))))
        right.append(float(np.mean(shown < SUCCESS)))  # issue 33's target: the share right
    return {key: {"median": values} for key, values in series.items()} | {"preview beats flat": {"median": better},
                                                                           "preview right": {"share": right}}


def real_sets(data: Path, real_size: int) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """The real sets as (intensity, the counts it was binned from or None): the paper's 64³ crop, and the APS scan
    DCT-downsampled to ``real_size`` per axis (phase-retrieve on the raw 201×256×256 frames would take about 20
    minutes here), as counted and as the beamline corrects it (its detector's whitefield gain, bad pixels
    inpainted: ``deploy/calibration``, as ``make demo`` plays it); both tools are given the same input, and the
    frames as counted set its noise floor, as the service's."""
    sets = {}
    if realdata.paper_file(root=data).exists():
        sets["paper example (Au, ft_crop_64², 64³)"] = realdata.paper_intensity(root=data), None
    if realdata.scan54_file(root=data).exists():
        from shared.solver.stages import fill_unmeasured, peak_offset, peak_to_centre, to_grid
        from shared.wire import detector

        frames = realdata.scan54_frames(root=data)
        grid = tuple(min(n, real_size) for n in frames.shape)
        binned = f"201×256×256, DCT to {'×'.join(map(str, grid))}"
        sets[f"APS 34-ID-C scan 54 ({binned})"] = to_grid(peak_to_centre(frames, peak_offset(frames)), grid), frames
        calibration = detector.shipped_calibration()
        if calibration is not None:
            flat, pixels = calibration
            measured = np.broadcast_to(pixels, frames.shape)
            fixed = fill_unmeasured(detector.corrected(frames, None, flat)[None], measured[None])[0]
            sets[f"APS 34-ID-C scan 54, whitefield and bad pixels ({binned})"] = to_grid(
                peak_to_centre(fixed, peak_offset(fixed)), grid), frames
    return sets


def evaluate_real(predictor, out: Path, data: Path, real_size: int = REFINE_SIZE) -> dict:
    """Every real set: χ of the written refined result and of `phase-retrieve --starts 4` against the same input."""
    summary = {}
    for k, (name, (intensity, counts)) in enumerate(real_sets(data, real_size).items()):
        result, ours_s = timed(lambda: stages.reconstruct(intensity[None], predictor, refine=True,
                                                          counts=None if counts is None else counts[None]))
        refined, nn = result["refined"], result["nn"]
        ours = refined.amplitude[0] * np.exp(1j * refined.phase[0])
        (objects, _, _), erhio_s = timed(lambda: phasing.phase_retrieve(intensity[None], starts=4, seed=k))
        ea, ep, _ = metrics.canonical(objects[0], phase_outside=True)  # as phase-retrieve writes it
        erhio = ea * np.exp(1j * ep)
        summary[name] = {"shape": list(intensity.shape), "nn_chi": float(nn.chi[0]),
                         "refined_chi": metrics.chi(ours, intensity, blur=refined.info["coherence_blur"][0],
                                                    background=refined.info["background"][0]),
                         "refined_chi_coherent": metrics.chi(ours, intensity),
                         "coherence_blur": refined.info["coherence_blur"][0],
                         "background": refined.info["background"][0],
                         "background_photons": (refined.info["background"][0] / step
                                                if (step := trust.photon_step(intensity)) else None),
                         "refined_chi_reported": float(refined.chi[0]),
                         "refined_seconds": ours_s, "erhio_chi": metrics.chi(erhio, intensity), "erhio_seconds": erhio_s,
                         "start": refined.info["start"][0], "figure": f"real_{k}.png",
                         "verdict": refined.info["verdict"][0], "verdict_reason": refined.info["verdict_reason"][0],
                         "verdict_detail": refined.info["verdict_detail"][0],
                         "chi_free": float(refined.info["chi_free"][0]),
                         "chi_free_floor": float(refined.info["chi_free_floor"][0]),
                         "chi_floor": float(refined.info["chi_floor"][0])}
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
    lines = ["# Evaluation: refined stage, 3D-CDI-NN, ER/HIO and cohere-core, per crystal family", "",
             f"Held-out simulated crystals: {s['count']} per family (seed {s['seed']}), 32³, from three families built "
             "independently (`shared/physics/families.py`): **facets** (ours: faceted Au with inclusions, surface "
             "relaxation and bending), **defects** (atoms of an fcc lattice with a dislocation, a stacking fault or a "
             "twin boundary, each voxel Σ e^{iG·r} of its atoms) and **fill** (spheres, rods and platelets filling "
             "40–75 % of the box, phase up to ±3 rad, wrapped). Every fourth scan noise-free, the others Poisson at "
             "10⁴–10⁸ photons; a third with a flat background, a third with a detector blur. "
             f"The refined stage and the verdict were tuned on **{s['tuning_family']}** only (marked ✱); the other "
             "families are never tuned on. Errors remove the BCDI ambiguities (offset, shift, ramp, twin). "
             f"**Success**: plain RMS phase error inside the true support (amplitude > ½ max) below {SUCCESS} rad. "
             "Times are per scan on this machine's CPU, batched, all in one run. Generated by `cdi-live evaluate`.", "",
             f"Refined stage: {s['plan']}; χ_free on 5 % withheld voxels selects the candidates; a scan left "
             f"uncertain runs again from new starts, converging {s.get('again_converge') or effort.AGAIN_CONVERGE} "
             + (f"(a run stops where an ER-to-ER stretch gains < {100 * s['again_stall']:g} % χ_free) "
                if s.get("again_stall") else "") +
             "instead, each with every partial-coherence blur σ ∈ {"
             f"{', '.join(s.get('again_coherence') or map(coherence.blur_name, effort.AGAIN_COHERENCE))}}} voxels "
             "(one number: the detector axes; three: rocking, rows, columns; the lowest χ_free "
             "wins" + (f"; a run with a blur shrink-wrapped at {s['blur_threshold']:g} of the peak, the others at "
                       f"{s['threshold']:g}" if s.get("blur_threshold") else "") + ")"
             + (f"; a scan still uncertain after it runs the textbook's own search, {len(effort.TEXTBOOK_STARTS)} "
                "starts of random phase in a centred box of half the grid, each converging as long, coherent"
                if effort.MAX_RUNS > 2 else "") +
             f"; {effort.MAX_RUNS} runs at most (adaptive effort, `shared/solver/effort.py`)"
             + (f"; then {s['width_step']}" if s.get("width_step") else "") + ".",
             "", f"Preview: {s['preview_plan']}.", "", f"Verdict rule: {s['rule']}.", ""]
    if s.get("cohere"):
        lines += [f"cohere-core {_version('cohere-core')} (APS), numpy backend, as its users run it: "
                  "3*(20*ER+180*HIO)+20*ER, HIO β 0.9, Gaussian shrink-wrap (σ 1, threshold 0.1) every iteration, "
                  "initial support half the array, twin removal; best of 4 by cohere's own error; its genetic "
                  f"algorithm with {yardstick.GA_POPULATION} members × {yardstick.GA_GENERATIONS} generations, "
                  f"breeding {yardstick.GA_BREED} with the best (`shared/solver/yardstick.py`). Its object is conjugated "
                  "(ifftn convention) before it is compared.", ""]
    else:
        lines += ["cohere-core was left out of this run (`--no-cohere`, or not installed).", ""]
    lines += ["## Summary", "", "| family | refined stage right | ER/HIO ×4 right | cohere best of 4 right | called converged "
              "| right among converged | its time ÷ ER/HIO ×4's (target ≤ 0.1×) | preview right, all frames (target: as "
              "the refined stage) |", "|---|---|---|---|---|---|---|---|"]
    ref, four, cohere4 = REFINED, "ER/HIO, 4 random starts", "cohere-core, best of 4"
    for name, f in s["families"].items():
        v = f["calibration"]["verdicts"]
        called = v["converged"]["right"] + v["converged"]["wrong"]
        t = f["seconds_per_scan"]
        lines.append(f"| {name}{' ✱' if f['tuning'] else ''} | {f['success'][ref]}/{s['count']} "
                     f"| {f['success'][four]}/{s['count']} | {f['success'].get(cohere4, '—')} | {called}/{s['count']} "
                     f"| {v['converged']['right']}/{called} | {t[ref] / t[four]:.1f}× | {f['success'][PREVIEW]}/{s['count']} |")
    for name, f in s["families"].items():
        lines += family_report(name, f, s["count"])
    lines += ["", "## Real data", "",
              "χ = ‖s·M − √I‖ / ‖√I‖ (best scale s) of the written result against the same input for both tools, "
              "M = |fftshift(fftn(amplitude·e^{i·phase}))|; for the refined stage M is its model's: √(M² ⊛ G_σ + b) with "
              "the partial-coherence blur σ it chose (voxels: rocking, detector rows, columns; zeros: coherent) and "
              "the flat background b it fitted (photons per voxel; fitted to counts on their own grid only), as "
              "its file, the API and the page give it; beside it the same answer's χ with the plain model (coherent, "
              "no background), the one ER/HIO's χ uses. Both timed in this run. The paper's example is photon counts "
              "normalised to a maximum of 1: its floor comes from the counts, recovered by its one-photon step. "
              "Scan 54 is DCT-downsampled here (no longer counts: the floor of its frames as counted stands for "
              "its χ floor and its χ_free floor, as in the service).", "",
              "| data | χ refined stage (file) | blur σ | background (photons per voxel) | χ, plain model | χ_free "
              "| χ_free floor | χ floor | verdict | reason | time | χ `phase-retrieve --starts 4` | time | χ 3D-CDI-NN |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in s["real"].items():
        blur = "×".join(f"{b:g}" for b in r.get("coherence_blur") or [0, 0, 0])
        flat = "—" if r.get("background_photons") is None else f"{r['background_photons']:.3g}"
        lines.append(f"| {name} | {r['refined_chi']:.4f} | {blur} | {flat} "
                     f"| {r.get('refined_chi_coherent', r['refined_chi']):.4f} "
                     f"| {r['chi_free']:.4f} | {r['chi_free_floor']:.4f} "
                     f"| {r['chi_floor']:.4f} | {r['verdict']} | {r['verdict_reason'] or '—'} "
                     f"| {r['refined_seconds']:.1f} s | {r['erhio_chi']:.4f} | {r['erhio_seconds']:.1f} s "
                     f"| {r['nn_chi']:.3f} |")
    for name, r in s["real"].items():
        lines += ["", f"![{name}]({r['figure']})"]
    return "\n".join(lines) + "\n"


def family_report(name: str, f: dict, count: int) -> list[str]:
    med, times = f["median"], f["seconds_per_scan"]
    lines = ["", f"## Family {name}{' (tuning family)' if f['tuning'] else ' (never tuned on)'}", "",
             "| method | success | median plain phase error (rad) | median amplitude error | median χ (its model ¹) | time per scan "
             "| median weighted phase error |", "|---|---|---|---|---|---|---|"]
    for method, m in med.items():
        t = times.get(method)
        t = "—" if t is None else (f"{1000 * t:.1f} ms" if t < 1 else f"{t:.2f} s")
        lines.append(f"| {method} | {f['success'][method]}/{count} | {m['phase_unweighted']:.3f} "
                     f"| {m['amplitude']:.3f} | {m['chi']:.3f} | {t} | {m['phase']:.3f} |")
    lines += ["", "¹ χ = ‖s·M − √I‖ / ‖√I‖: for the refined stage M is its model's, with the partial-coherence blur "
              "and the flat background it fitted (its file's χ); for the other methods the plain, coherent model."]
    c = f["calibration"]
    v = c["verdicts"]
    called = v["converged"]["right"] + v["converged"]["wrong"]
    lines += ["", "| verdict | reason | right (< 0.1 rad) | wrong |", "|---|---|---|---|",
              f"| converged | — | {v['converged']['right']} | {v['converged']['wrong']} |"]
    lines += [f"| uncertain | {reason} | {r['right']} | {r['wrong']} |" for reason, r in c["reasons"].items()]
    lines += ["", f"Called converged: {called}/{count}; right among them: {v['converged']['right']}/{called or 1}. "
              f"Mean uncertainty over the crystal: {c['mean_uncertainty_right'] or float('nan'):.3f} rad on right "
              f"answers, {c['mean_uncertainty_wrong'] or float('nan'):.3f} on wrong ones.", "",
              "| measurement | scans | refined stage right |", "|---|---|---|"]
    errors = [r["error"] for r in c["rows"]]
    for label, test in (("noise-free", lambda k: k["photons"] == 0), ("Poisson only", lambda k: k["photons"] > 0
                        and not k["background"] and not k["blur"]), ("with background", lambda k: k["background"] > 0),
                        ("with detector blur", lambda k: k["blur"] > 0)):
        rows = [e for e, k in zip(errors, f["scans"]) if test(k)]
        lines.append(f"| {label} | {len(rows)} | {sum(e < SUCCESS for e in rows)} |")
    lines += ["", f"### Partial scans (the live preview), {name}", "",
              "Median plain phase error of the answer the live view shows: the network's until the frames pass the "
              "rocking curve's peak (`plans.preview_shown`), then the preview.", "",
              "| fraction of frames | preview shown | 3D-CDI-NN | flat phase (NN shape) | scans where preview beats flat "
              "| preview right (target at 0.6: ≥ 70 %) |", "|---|---|---|---|---|---|"]
    p = f["partial"]
    right = p.get("preview right", {}).get("share")  # not in reports written before it was counted
    for i, fraction in enumerate(FRACTIONS):
        lines.append(f"| {fraction:.1f} | {p['preview']['median'][i]:.3f} | {p['3D-CDI-NN']['median'][i]:.3f} "
                     f"| {p['flat phase']['median'][i]:.3f} | {100 * p['preview beats flat']['median'][i]:.0f} % "
                     f"| {'—' if right is None else f'{100 * right[i]:.0f} %'} |")
    lines += ["", f"![error distributions](errors_{name}.png)", "", f"![central slices](slices_{name}.png)", "",
              f"![partial scans](partial_{name}.png)"]
    return lines
