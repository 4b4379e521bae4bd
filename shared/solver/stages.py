"""Measured volume → NN stage → refined stage → full-grid stage, each on the input's real-space grid.

The refined stages use all the measured data the user gave, where its signal is:

1. the Bragg peak (centre of mass, whole voxels) and the region around it that holds the signal, at
   the detector's resolution (``shared.solver.fullgrid.signal_region``: never the whole detector binned);
2. refined stage: only a region axis longer than ``refine_size`` is DCT-downsampled (same q-range,
   same real-space voxel, smaller field of view), and the file says so; the network's prediction, put
   on that grid, seeds ``shared.solver.plans.converge`` (seconds);
3. full-grid stage, when the region was downsampled: the refined finalists, zero-padded to the
   region's field of view, fitted to every measured voxel of the region (``shared.solver.fullgrid``);
4. each answer's far field is placed back at the region's voxels of the input's grid (zero elsewhere),
   so |fftshift(fftn(ρe^{iφ}))|² is the model of the input exactly as given, the peak's offset a
   phase ramp (``phase_ramp`` = "kept").
Every χ reported is computed against the input; a χ on another grid says which.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field

import numpy as np

from shared.wire import detector
from shared.solver import effort, fullgrid, resampling, trust
from shared.nn.inference import Predictor
from shared.physics import coherence, downsample, metrics, phasing
from shared.physics.downsample import to_input_grid
from shared.solver.plans import REFINE_PLAN, REFINE_SIZE, Checkpoint, Converged, Plan, Preempted, converge, estimate


@dataclass
class Stage:
    amplitude: np.ndarray  # (B, …input shape) float32
    phase: np.ndarray
    support: np.ndarray
    chi: np.ndarray
    seconds: float
    info: dict = field(default_factory=dict)
    uncertainty: np.ndarray | None = None  # (B, …) per-voxel phase uncertainty, rad (refined, full)
    finalists: np.ndarray | None = None  # (B, F, …) complex: the refined stage's finalists on its grid, best first


def embed(obj: np.ndarray, shape) -> np.ndarray:
    """Centre a smaller complex object in a grid of ``shape`` (same voxel size)."""
    out = np.zeros(shape, np.complex64)
    starts = [(s - o) // 2 for s, o in zip(shape, obj.shape)]
    out[tuple(slice(st, st + o) for st, o in zip(starts, obj.shape))] = obj
    return out


def centre_crop(obj: np.ndarray, shape) -> np.ndarray:
    """The central ``shape`` of a larger array (the inverse of :func:`embed`)."""
    starts = [(o - s) // 2 for s, o in zip(shape, obj.shape)]
    return obj[tuple(slice(st, st + s) for st, s in zip(starts, shape))]


def peak_offset(volume: np.ndarray) -> tuple[int, ...]:
    """Whole-voxel offset of the Bragg peak from the grid centre (index n//2)."""
    return tuple(int(p - n // 2) for p, n in zip(downsample.bragg_peak(volume), volume.shape))


def peak_to_centre(volume: np.ndarray, offset) -> np.ndarray:
    """The volume rolled by −``offset`` (whole voxels), so its Bragg peak sits at the grid centre."""
    return np.roll(volume, [-k for k in offset], axis=tuple(range(volume.ndim)))


def phase_ramp(shape, offset) -> np.ndarray:
    """exp(2πi k·r/n): multiplying an object by it moves its |FFT| by ``offset`` voxels."""
    ramp = np.ones(shape, np.complex64)
    for axis, (n, k) in enumerate(zip(shape, offset)):
        if k:
            along = np.exp(2j * np.pi * k * np.arange(n) / n).astype(np.complex64)
            ramp = ramp * along.reshape([-1 if a == axis else 1 for a in range(len(shape))])
    return ramp


def fill_unmeasured(intensity: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """A batch with its unmeasured voxels inpainted from measured neighbours (``shared.wire.detector``), except the
    frames before its first measured frame and after its last, which stay zero: inpainting reaches across a gap,
    not past a rocking curve's end. A scan that lacks its last frames then reaches the network as a partial scan
    does in the service (frames not taken are zeros, as in its training); inpainted, they were a plateau of the
    frames beside the peak, and its phase error with 60 % of the frames was 2–4× larger (4 facets scans)."""
    filled = []
    for v, m in zip(intensity, measured):
        if m.all():
            filled.append(v)
            continue
        out = np.zeros(v.shape, np.float32)
        frames = np.flatnonzero(m.any(axis=(1, 2)))
        if len(frames):  # inpainted within the measured frames' span alone
            span = slice(frames[0], frames[-1] + 1)
            out[span] = detector.inpaint(v[span], ~m[span])
        filled.append(out)
    return np.stack(filled)


def refinement_grid(shape, refine_size: int = REFINE_SIZE) -> tuple:
    return tuple(min(n, refine_size) for n in shape)


def to_grid(volume: np.ndarray, grid) -> np.ndarray:
    """Intensity DCT-downsampled (as a magnitude) to ``grid``; unchanged when it already fits."""
    if tuple(grid) == volume.shape:
        return np.asarray(volume, np.float32)
    return (np.clip(downsample.dct_downsample(np.sqrt(np.clip(volume, 0, None)), grid), 0, None) ** 2).astype(np.float32)


def mask_to_grid(measured: np.ndarray, grid) -> np.ndarray:
    """A voxel of the coarser grid counts as measured when most of what it averages was."""
    if tuple(grid) == measured.shape:
        return measured.astype(bool)
    return downsample.dct_downsample(measured.astype(np.float32), grid) > 0.5


# the verdict_detail of an answer whose check on resamples is under way or was cut short
UNCHECKED = ("at what a right answer reaches, but not yet checked on Poisson resamples of its model (an answer the "
             "first run found on photon counts is called converged only once its search lands within "
             f"{trust.PROMISE} rad of it there)")


def refined_stage(intensity: np.ndarray, nn_amplitude, nn_phase, crops, measured: np.ndarray | None = None,
                  refine_size: int = REFINE_SIZE, plan: Plan = REFINE_PLAN, on_input_grid: bool = True,
                  yield_now=None, resume=None, inpainted: bool = False, counts: np.ndarray | None = None,
                  on_first=None, requeue_again: bool = False) -> Stage:
    """The refined stage for a batch of scans of one shape; NN results on the network grid.

    It works on the signal's region (``shared.solver.fullgrid.signal_region``: the Bragg peak's neighbourhood at
    the detector's resolution, one box shape for the batch), DCT-downsampled to at most ``refine_size``
    per axis. ``chi`` is always against the frames as given (the answer placed back on the input's grid);
    ``info["chi_refinement_grid"]`` is the χ on the refinement grid, labelled with it.

    ``yield_now`` and ``resume``: preemption between schedule steps (``shared.solver.plans.converge``).
    ``counts``: the frames as measured, for the noise floor, when ``intensity`` was corrected (dark, flat), or the
    frames it was binned from (another shape: their floor is the data's, as for a binned region, and no background
    is fitted).

    ``on_input_grid`` False returns the arrays on the refinement grid, peak centred (``phase_ramp``
    "removed"), as the service keeps them; ``finalists`` holds the seeds of the full-grid stage.

    ``on_first(stage)``, where given, receives the first run's answers before a run again starts
    (``shared.solver.effort``), ``info["searching"]`` true for the scans that run again: the service shows it
    at once, and the run again's answer replaces it (the scan being taken now is not kept waiting for it). It
    receives the answers again before the verdict's check on resamples (``shared.solver.resampling``), those
    checked "uncertain" (reason "search"), searching and ``checking`` until the check lands (~1 s per 32³ scan).
    The check gives way to fresher work as a run again does: with ``requeue_again`` its job goes back (a checkpoint
    of phase ``resampling.CHECK`` holding these answers, whose scans need no run again) and comes back for the check
    alone; otherwise the scans cut short stay "uncertain".
    ``requeue_again``: a run again cut short by ``yield_now`` raises Preempted instead of returning the first
    run's answer, its checkpoint holding that answer (phase ``effort.AGAIN``), so the service puts the job back
    and, resumed from it, only the run again comes later.
    """
    started = time.perf_counter()
    if measured is not None:
        measured = np.broadcast_to(measured, intensity.shape)
    prepared = resume.arrays if resume is not None and "input_data" in resume.arrays else None
    if prepared is not None:  # a resumed run: its inputs were prepared before it yielded (seconds on a big scan)
        regions = [fullgrid.Region.from_dict(r) for r in json.loads(str(prepared["input_regions"]))]
        data, mask, starts = prepared["input_data"], prepared.get("input_mask"), prepared["input_starts"]
        grid = data.shape[1:]
    else:
        def may_yield() -> None:  # preparing a detector-size scan takes seconds: fresher work may not wait
            if yield_now is not None and yield_now():
                raise Preempted(None)

        if measured is not None and not inpainted:  # every step before the refinement reads counts only
            intensity = fill_unmeasured(intensity, measured)
            may_yield()
        regions = signal_regions(intensity, measured)
        grid = refinement_grid(regions[0].shape, refine_size)
        may_yield()
        data = np.stack([to_grid(r.take(v), grid) for v, r in zip(intensity, regions)])
        masks = [r.inside() & (True if measured is None else r.take(m)) for r, m in
                 zip(regions, measured if measured is not None else [None] * len(regions))]
        mask = None if all(np.all(m) for m in masks) else np.stack([mask_to_grid(np.broadcast_to(m, r.shape), grid)
                                                                    for m, r in zip(masks, regions)])
        may_yield()
        starts = []
        for a, p, crop in zip(nn_amplitude, nn_phase, crops):  # the prediction on the region's real-space grid
            a, p, _ = to_input_grid(a, p, crop, regions[0].shape, window=grid) if a.shape != regions[0].shape \
                else (a, p, None)
            starts.append(centre_crop(a * np.exp(1j * p), grid))  # (the window is the grid already)
        starts = np.stack(starts)
    measured_counts = counts if counts is not None else intensity
    binned_from = counts is not None and counts.shape[1:] != intensity.shape[1:]  # only the counts' floor is read
    each_measured = measured if measured is not None else [None] * len(regions)
    # a flat background is fitted to photon counts, on a grid that holds them (a binned one does not: its faint
    # voxels are no longer Poisson draws). APS scan 54 is binned: its full-grid fit with a background (0.018
    # photons per voxel) ended at χ 0.170 against 0.161 without; at a few counts a voxel χ does not reward it
    counting = [not binned_from and tuple(grid) == r.shape
                and trust.photon_step(raw if m is None else raw[m]) is not None
                for raw, r, m in zip(measured_counts, regions, each_measured)]

    if prepared is not None and "input_floors" in prepared:
        floors = [float(f) for f in prepared["input_floors"]]
    else:  # the counts' noise floor, before the search: it is the data's alone (1.1 s on scan 54's 201×256×256)
        floors = [trust.noise_floor(raw, None if binned_from else m) for raw, m in zip(measured_counts, each_measured)]

    def keep_inputs(preempted: Preempted) -> None:  # the prepared inputs go with the checkpoint
        preempted.checkpoint.arrays.update(input_data=data, input_starts=starts, input_floors=np.asarray(floors),
                                           input_regions=np.array(json.dumps([r.as_dict() for r in regions])),
                                           **({} if mask is None else {"input_mask": mask}))

    try:
        if resume is not None and resume.phase in (effort.AGAIN, resampling.CHECK):  # the first run is done:
            result = effort.first_run_of(resume)  # only its run again, or only the check, comes back
        else:
            result = converge(data, starts, mask, plan, yield_now=yield_now, resume=resume, counting=counting)
    except Preempted as preempted:
        keep_inputs(preempted)
        raise
    free_floors = floors if binned_from else [
        free_floor_of(r.take(raw), r.inside() & (True if m is None else r.take(m)), grid, result.free, f)
        for raw, r, m, f in zip(measured_counts, regions, each_measured, floors)]

    def shown_of(result) -> Converged:  # the answers as shown: the Wiener estimate of each fit
        return estimate(result, data, mask, counting, plan)

    def stage_of(shown, runs, searching) -> Stage:
        return _stage(shown, runs, searching, intensity, measured, regions, grid, mask, free_floors, floors, plan,
                      on_input_grid, started)

    before_again = None if on_first is None else \
        lambda first, todo: on_first(stage_of(shown_of(first), [1] * len(first.obj),
                                              [k in todo for k in range(len(first.obj))]))
    try:
        result, runs = effort.refine_with_effort(data, starts, mask, plan, floors, free_floors, result,  # small grids
                                                 counting, yield_now, before_again, requeue_again)
    except Preempted as preempted:  # a run again cut short: the first run's answers wait with the job
        keep_inputs(preempted)
        raise
    shown = shown_of(result)
    stage = stage_of(shown, runs, [False] * len(runs))
    checked = [k for k, verdict in enumerate(stage.info["verdict"])  # the answers about to be called converged
               if verdict == "converged" and counting[k] and floors[k] > 0  # on counts
               and (resampling.EVERY_SEARCH or effort.found_by_first_run(result.start[k]))]  # as the check searches
    if not checked or not resampling.RESAMPLES or np.prod(grid) > effort.SMALL_GRID:
        return stage
    unchecked = {"verdict": ["uncertain" if k in checked else v for k, v in enumerate(stage.info["verdict"])],
                 "verdict_reason": ["search" if k in checked else r for k, r in enumerate(stage.info["verdict_reason"])],
                 "verdict_detail": [UNCHECKED if k in checked else d for k, d in enumerate(stage.info["verdict_detail"])]}
    if on_first is not None:  # the service shows the answer at once, "uncertain" and searching until it is checked
        checking = [k in checked for k in range(len(runs))]
        on_first(dataclasses.replace(stage, info={**stage.info, **unchecked, "searching": checking,
                                                  "checking": checking}))
    began = time.perf_counter()
    try:
        resampled = resampling.resampled_errors(data, starts, mask, plan, result.obj, result.coherence,
                                                result.background, counting, checked, yield_now)
    except Preempted:
        if requeue_again:  # the service puts the job back with these answers; it comes back for the check alone
            preempted = Preempted(effort.first_run_kept(result, resampling.CHECK))
            keep_inputs(preempted)
            raise preempted from None
        stage.info.update(unchecked)  # not checked, so not called converged (resampled_error None)
        return stage
    stage.info["stage_seconds"]["resampled"] = time.perf_counter() - began
    for k, error in resampled.items():  # judged again with it: their other fields stand
        others = result.alternatives is not None and len(result.alternatives[k]) > 0
        fields = _judged(shown, k, stage.uncertainty[k] if others else None, stage.support[k], free_floors, floors,
                         mask, error)
        for key, value in fields.items():  # new lists: the answers shown before the check keep theirs
            stage.info[key] = [value if j == k else v for j, v in enumerate(stage.info[key])]
    stage.seconds = time.perf_counter() - started
    return stage


def _judged(result, k: int, spread, support, free_floors, floors, mask, resampled=None) -> dict:
    """Scan k's trust fields (``trust_fields``) from a run's result: ``spread`` its phase uncertainty on the
    answer's grid as shown (None where it has no other solution), ``support`` the answer's."""
    free = trust.free_fraction(result.support[k], None if mask is None else mask[k])
    wider = floors[k] > 0 and not effort.found_by_first_run(result.start[k])  # a run again's answer, with noise
    return trust_fields(float(result.chi_free[k]), free_floors[k], floors[k], free, spread, support,
                        result.coherence[k], trust.unmeasured_signal(result.obj[k], None if mask is None else mask[k]),
                        resampled, wider)


def _stage(result, runs, searching, intensity, measured, regions, grid, mask, free_floors, floors, plan,
           on_input_grid, started) -> Stage:
    """The refined stage's answers, as every caller sees them, from a run's (or the merged runs') result."""
    shape = intensity.shape[1:]
    amps, phases, supports, chis, spreads, finalists, judged, blurs = [], [], [], [], [], [], [], []
    backgrounds = []
    others = result.alternatives if result.alternatives is not None else [[] for _ in intensity]
    for k, (obj, alternatives, volume, region, m) in enumerate(zip(
            result.obj, others, intensity, regions, measured if measured is not None else [None] * len(regions))):
        finalists.append(np.stack([obj, *alternatives]).astype(np.complex64))
        on_input = fullgrid.place_back(embed(obj, region.shape), region)
        blur = [round(float(b), 4) for b in  # in the input's voxels, as recorded (χ with exactly that blur)
                coherence.on_grid(result.coherence[k], grid, region.shape)]
        blurs.append(blur)
        flat = float(f"{result.background[k]:.4g}")  # per voxel (DCT binning keeps a constant): the input's units
        backgrounds.append(flat)
        chis.append(metrics.chi(on_input, volume, m, blur, flat))  # against the frames as given, on every path
        if on_input_grid:
            obj = on_input
            alternatives = [fullgrid.place_back(embed(alt, region.shape), region) for alt in alternatives]
        a, p, s = metrics.canonical(obj, phase_outside=True)
        amps.append(a), phases.append(p), supports.append(s)
        spreads.append(trust.phase_spread(a * np.exp(1j * p), list(alternatives)) if len(alternatives)
                       else np.zeros(a.shape, np.float32))
        judged.append(_judged(result, k, spreads[-1] if len(alternatives) else None, s, free_floors, floors, mask))
    offsets = [[p - n // 2 for p, n in zip(r.peak, shape)] for r in regions]
    info = {**{key: [j[key] for j in judged] for key in judged[0]}, "grid": list(grid),
            "downsampled": list(grid) != list(regions[0].shape), "phase_ramp": "kept" if on_input_grid else "removed",
            "region": [r.as_dict() for r in regions], "bragg_peak_offset": offsets, "plan": plan.describe(),
            "start": result.start, "runs": runs, "chi_refinement_grid": [float(c) for c in result.chi],
            "coherence_blur": blurs, "background": backgrounds, "searching": searching,
            "stage_seconds": result.seconds}
    return Stage(np.stack(amps), np.stack(phases), np.stack(supports), np.asarray(chis), time.perf_counter() - started,
                 info, np.stack(spreads), np.stack(finalists))


def free_floor_of(counts: np.ndarray, inside: np.ndarray, grid, free: np.ndarray, floor: float) -> float:
    """The Poisson floor of the withheld voxels, from the counts of the region they were withheld from; where
    the region was binned (no longer counts there) the whole data's floor stands for it."""
    if tuple(grid) != counts.shape:
        return floor
    free_floor = trust.noise_floor(counts, inside, over=free)
    return free_floor if free_floor > 0 or floor == 0 else floor


def trust_fields(chi_free: float, free_floor: float, floor: float, free: float, spread, support, blur=None,
                 unmeasured: float = 0.0, resampled: float | None = None, wider_search: bool = False) -> dict:
    """One answer's trust, as the file, the API and the page show it (``shared.solver.trust``); ``blur``: its
    partial-coherence σ per axis (None: coherent); ``unmeasured``: the share of its signal on unmeasured voxels;
    ``resampled``: its search's largest phase error on resamples of its model (``shared.solver.resampling``; None:
    not run); ``wider_search``: a run again found it, on data with a noise floor (``trust.WIDER_SEARCH_PROMISE``)."""
    verdict, reason, detail = trust.judgement(chi_free, free_floor, floor, free, spread, support,
                                              trust.is_blurred(blur), unmeasured, resampled, wider_search)
    return {"verdict": verdict, "verdict_reason": reason, "verdict_detail": detail, "chi_free": chi_free,
            "wider_search": bool(wider_search),
            "unmeasured_signal": round(unmeasured, 4),
            "resampled_error": None if resampled is None else round(float(resampled), 4),
            "chi_free_floor": trust.free_floor(free_floor, free), "chi_floor": floor,
            "chi_floor_fitted": trust.fitted_floor(floor, free)}


def signal_regions(intensity: np.ndarray, measured: np.ndarray | None) -> list:
    """Each scan's signal region (``shared.solver.fullgrid``), all of one shape (the largest per axis): a batch is
    refined on one grid. Its Bragg peak is found on the measured voxels alone: what fills the others is no count
    (inpainted past a scan's last frame, a plateau beside the peak had moved it 6 frames on a 32-frame rocking
    curve with 60 % of its frames)."""
    regions = [fullgrid.signal_region(v, downsample.bragg_peak(v if m is None else v * m), m)
               for v, m in zip(intensity, measured if measured is not None else [None] * len(intensity))]
    common = tuple(max(r.shape[axis] for r in regions) for axis in range(3))
    return [fullgrid.Region(r.input_shape, r.peak, common) for r in regions]


def full_stage(intensity: np.ndarray, refined_info: dict, finalists: np.ndarray, measured: np.ndarray | None = None,
               plan: fullgrid.FullPlan = fullgrid.FULL_PLAN, yield_now=None, resume: Checkpoint | None = None,
               progress=None, keep_ramp: bool = True) -> Stage:
    """The full-grid stage (``shared.solver.fullgrid``) of each scan, seeded by the refined stage's ``finalists``
    (B, F, …) on its grid, in the regions and with the floors of its ``refined_info``; on the input's grid,
    χ against the frames. ``resume``: one scan's checkpoint (the service's). ``keep_ramp`` False: the
    arrays are free of the Bragg peak's phase ramp (as the service keeps them; χ is taken with it)."""
    started = time.perf_counter()
    if measured is not None:
        measured = np.broadcast_to(measured, intensity.shape)
    amps, phases, supports, chis, spreads, details, judged, backgrounds = [], [], [], [], [], [], [], []
    blurs = []
    floors = list(refined_info["chi_floor"])
    for k, volume in enumerate(intensity):
        region = fullgrid.Region.from_dict(refined_info["region"][k])
        m = None if measured is None else measured[k]
        inside = np.broadcast_to(region.inside() & (True if m is None else region.take(m)), region.shape)
        withheld = phasing.free_voxels(region.shape) & inside  # cross-validation, as in the refined stage
        seeds = np.stack([embed(f, region.shape) for f in finalists[k]])
        data = region.take(volume)
        flat = (refined_info.get("background") or [None] * len(intensity))[k] or None  # 0: the refined stage fitted none
        blur, screened, screen_seconds = _full_grid_width(
            data, inside, withheld, seeds, refined_info.get("coherence_blur", [None] * len(intensity))[k], flat, plan,
            yield_now, resume)
        fitted, chi_free = _fit_and_polish(data, inside, withheld, seeds, plan, yield_now, resume, progress, blur,
                                           flat)

        def may_yield(fitted=fitted, chi_free=chi_free, blur=blur) -> None:
            """Between the answer's last steps (on scan 54's full grid, 0.2–1.2 s each): resumed, only they run."""
            if yield_now is not None and yield_now():
                raise Preempted(_after_fit(fitted, chi_free, blur, fitted.iterations, polished=np.bool_(True)))

        placed = []
        for o in fitted.obj:  # each an FFT pair on the input's grid
            may_yield()
            placed.append(fullgrid.place_back(o, region))
        best, *others = placed
        backgrounds.append(flat)
        chis.append(metrics.chi(best, volume, m, blur, flat or 0.0))
        if not keep_ramp:
            best = best * np.conj(phase_ramp(best.shape, refined_info["bragg_peak_offset"][k]))
        may_yield()
        a, p, s = metrics.canonical(best, phase_outside=True)
        amps.append(a), phases.append(p), supports.append(s)
        may_yield()
        spreads.append(trust.phase_spread(a * np.exp(1j * p), others) if others else np.zeros(a.shape, np.float32))
        free = trust.free_fraction(fitted.support, inside)
        judged.append(trust_fields(chi_free, free_floor_of(data, inside, region.shape, withheld, floors[k]), floors[k], free,
                                   spreads[-1] if others else None, s, blur, trust.unmeasured_signal(fitted.obj[0], inside)))
        blurs.append(blur or [0.0] * 3)
        details.append({"iterations": fitted.iterations, "seconds": fitted.seconds + screen_seconds,
                        "device": fitted.device, "width_screen": screened,
                        "support_grown_by": fitted.grown * plan.grow_by,
                        "chi_history": [round(c, 5) for c in fitted.history],
                        "time_history": [round(t, 3) for t in fitted.times]})
    shape = list(intensity.shape[1:])
    info = {**{key: [j[key] for j in judged] for key in judged[0]}, "grid": shape,
            "downsampled": False,
            "phase_ramp": "kept" if keep_ramp else "removed", "region": refined_info["region"],
            "bragg_peak_offset": refined_info["bragg_peak_offset"],
            "coherence_blur": blurs, "background": backgrounds, "plan": plan.describe(),
            "fit": details}
    return Stage(np.stack(amps), np.stack(phases), np.stack(supports), np.asarray(chis), time.perf_counter() - started,
                 info, np.stack(spreads))


def _fit_and_polish(data, inside, withheld, seeds, plan, yield_now, resume, progress, blur, flat):
    """(the polished fit, its χ_free before the polish) of one scan's full grid: the fit on all but the withheld
    voxels, then the polish on every measured one, each yielding. Preempted: a checkpoint of phase "full" with where
    it stopped and the width; in the polish, also the fit it started from (``fitted_…``) and that χ_free; after it
    (``full_stage``'s last steps), the polished fit, marked ``polished``."""
    arrays = {} if resume is None else resume.arrays
    width = {"blur": np.asarray(blur or [], np.float64)}
    if "fitted_obj" in arrays:  # it yielded in the polish or after it: the fit is done
        fitted = fullgrid.FullFit.from_arrays({k[len("fitted_"):]: v for k, v in arrays.items()
                                               if k.startswith("fitted_")})
        if "polished" in arrays:  # and so is the polish
            return fitted, float(arrays["chi_free"])
        chi_free, polishing = float(arrays["chi_free"]), {k[len("polish_"):]: v for k, v in arrays.items()
                                                          if k.startswith("polish_")}
    else:
        fitted = fullgrid.fit(data, inside & ~withheld, seeds, plan, yield_now, arrays or None, progress, blur, flat,
                              withheld)
        if fitted.interrupted:
            raise Preempted(Checkpoint("full", fitted.iterations, [], 0, {**fitted.checkpoint, **width}, {}))
        chi_free, polishing = fullgrid.free_chi(data, withheld, fitted.obj[0], blur, flat), None
    polished = fullgrid.polish(data, None if np.all(inside) else inside, fitted, plan, blur, yield_now, polishing)
    if polished.interrupted:
        raise Preempted(_after_fit(fitted, chi_free, blur, fitted.iterations + polished.iterations,
                                   **{f"polish_{k}": v for k, v in polished.checkpoint.items()}))
    return polished, chi_free


def _after_fit(fitted: fullgrid.FullFit, chi_free: float, blur, done: int, **more) -> Checkpoint:
    """A full-grid stage cut after its fit: the fit (``fitted_…``), the χ_free taken before its polish, the width,
    and ``more`` (where the polish stopped, or ``polished``)."""
    return Checkpoint("full", done, [], 0, {**{f"fitted_{k}": v for k, v in fitted.to_arrays().items()},
                                            "chi_free": np.float64(chi_free),
                                            "blur": np.asarray(blur or [], np.float64), **more}, {})


def _full_grid_width(data, inside, withheld, seeds, refined_blur, flat, plan, yield_now, resume):
    """(σ or None, the screen's χ_free per σ, its seconds) of one scan's full-grid fit: the σ chosen before a yield
    where ``resume`` holds it, else ``fullgrid.choose_blur``'s screen of the refined stage's ``refined_blur``."""
    if resume is not None and "blur" in resume.arrays:
        return [float(b) for b in resume.arrays["blur"]] or None, {}, 0.0
    began = time.perf_counter()
    chosen = fullgrid.choose_blur(data, inside & ~withheld, withheld, seeds, refined_blur, flat, plan, yield_now)
    if chosen is None:  # fresher work came during the screen: nothing worth keeping yet
        raise Preempted(None)
    blur, screened = chosen
    return blur, screened, time.perf_counter() - began if screened else 0.0


def reconstruct(intensity: np.ndarray, predictor: Predictor, refine: bool = False, refine_size: int = REFINE_SIZE,
                on_input_grid: bool = True, progress=None, measured: np.ndarray | None = None,
                plan: Plan = REFINE_PLAN, counts: np.ndarray | None = None, full_grid: bool = True,
                full_plan: fullgrid.FullPlan = fullgrid.FULL_PLAN, full_progress=None):
    """Returns {"nn": Stage, "refined": Stage (when ``refine``), "full": Stage (when ``refine`` and
    ``full_grid`` and the refined stage was downsampled)}.

    ``measured`` False marks voxels that hold no count (detector gaps, flagged, saturated or masked
    pixels, frames not taken): they are inpainted for every step before the refinement (peak search,
    crop, DCT, network input) and left free in it (``shared.wire.detector``). ``counts``: as ``refined_stage``'s."""
    if measured is not None:
        measured = np.broadcast_to(measured, intensity.shape)
        intensity = fill_unmeasured(intensity, measured)
    nn = predictor.reconstruct(intensity, on_input_grid=False, progress=progress)
    shapes = [v.shape for v in intensity]
    out_a, out_p, out_s = [], [], []
    for a, p, crop, shape in zip(nn.amplitude, nn.phase, nn.crops, shapes):
        if on_input_grid and a.shape != shape:
            a, p, s = to_input_grid(a, p, crop, shape)
        else:
            s = a > 0.1
        out_a.append(a), out_p.append(p), out_s.append(s)
    stages = {"nn": Stage(np.stack(out_a), np.stack(out_p), np.stack(out_s), np.asarray(nn.chi), nn.seconds)}
    if refine:
        stages["refined"] = refined_stage(intensity, nn.amplitude, nn.phase, nn.crops, measured, refine_size, plan,
                                          inpainted=True, counts=counts)
        if full_grid and stages["refined"].info["downsampled"]:
            refined = stages["refined"]
            stages["full"] = full_stage(intensity, refined.info, refined.finalists, measured, full_plan,
                                        progress=full_progress)
    return stages
