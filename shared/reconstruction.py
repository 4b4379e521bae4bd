"""Measured volume → NN stage → optional refined stage, each on the input's real-space grid.

The refined stage uses all the measured data the user gave, on its own grid:

1. the Bragg peak (centre of mass, whole voxels) is rolled to the grid centre;
2. only an axis longer than ``refine_size`` is DCT-downsampled (same q-range,
   same real-space voxel, smaller field of view), and the file says so;
3. the network's prediction, put on that grid, seeds ``shared.pipeline.converge``;
4. the result is zero-padded back to the input's field of view and the peak
   offset is restored as a phase ramp, so |fftshift(fftn(ρe^{iφ}))|² is the
   model of the input exactly as given (``phase_ramp`` = "kept").
The χ reported is computed from the written arrays against the input.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from shared import detector, trust
from shared.nn.inference import Predictor
from shared.physics import downsample, metrics
from shared.physics.downsample import to_input_grid
from shared.pipeline import REFINE_PLAN, REFINE_SIZE, Plan, Preempted, converge


@dataclass
class Stage:
    amplitude: np.ndarray  # (B, …input shape) float32
    phase: np.ndarray
    support: np.ndarray
    chi: np.ndarray
    seconds: float
    info: dict = field(default_factory=dict)
    uncertainty: np.ndarray | None = None  # (B, …) per-voxel phase uncertainty, rad (the refined stage)


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
    """A batch with its unmeasured voxels inpainted from measured neighbours (``shared.detector``)."""
    return np.stack([detector.inpaint(v, ~m) if not m.all() else v for v, m in zip(intensity, measured)])


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


def refined_stage(intensity: np.ndarray, nn_amplitude, nn_phase, crops, measured: np.ndarray | None = None,
                  refine_size: int = REFINE_SIZE, plan: Plan = REFINE_PLAN, on_input_grid: bool = True,
                  yield_now=None, resume=None, inpainted: bool = False, counts: np.ndarray | None = None) -> Stage:
    """The refined stage for a batch of scans of one shape; NN results on the network grid.

    ``yield_now`` and ``resume``: preemption between schedule steps (``shared.pipeline.converge``).
    ``counts``: the frames as measured, for the noise floor, when ``intensity`` was corrected (dark, flat).

    ``on_input_grid`` False returns the result on the refinement grid, peak
    centred (``phase_ramp`` "removed"; χ against the data on that grid).
    """
    started = time.perf_counter()
    shape = intensity.shape[1:]
    grid = refinement_grid(shape, refine_size)
    if measured is not None:
        measured = np.broadcast_to(measured, intensity.shape)
    prepared = resume.arrays if resume is not None and "input_data" in resume.arrays else None
    if prepared is not None:  # a resumed run: its inputs were prepared before it yielded (seconds on a big scan)
        offsets = [tuple(int(x) for x in k) for k in prepared["input_offsets"]]
        data, mask, starts = prepared["input_data"], prepared.get("input_mask"), prepared["input_starts"]
    else:
        def may_yield() -> None:  # preparing a detector-size scan takes seconds: fresher work may not wait
            if yield_now is not None and yield_now():
                raise Preempted(None)

        if measured is not None and not inpainted:  # every step before the refinement reads counts only
            intensity = fill_unmeasured(intensity, measured)
            may_yield()
        offsets = [peak_offset(v) for v in intensity]
        may_yield()
        data = np.stack([to_grid(peak_to_centre(v, k), grid) for v, k in zip(intensity, offsets)])
        mask = None
        if measured is not None:
            mask = np.stack([mask_to_grid(peak_to_centre(m, k), grid) for m, k in zip(measured, offsets)])
        may_yield()
        starts = []
        for a, p, crop in zip(nn_amplitude, nn_phase, crops):  # the prediction on the input's real-space grid
            a, p, _ = to_input_grid(a, p, crop, shape, window=grid) if a.shape != shape else (a, p, None)
            starts.append(centre_crop(a * np.exp(1j * p), grid))  # (the window is the grid already)
        starts = np.stack(starts)
    try:
        result = converge(data, starts, mask, plan, yield_now=yield_now, resume=resume)
    except Preempted as preempted:  # the prepared inputs go with the checkpoint
        preempted.checkpoint.arrays.update(input_data=data, input_offsets=np.asarray(offsets), input_starts=starts,
                                           **({} if mask is None else {"input_mask": mask}))
        raise
    amps, phases, supports, chis, spreads, floors, verdicts = [], [], [], [], [], [], []
    masks = mask if mask is not None else [None] * len(intensity)
    others = result.alternatives if result.alternatives is not None else [[] for _ in intensity]
    measured_counts = counts if counts is not None else intensity
    for obj, alternatives, volume, grid_data, k, m, m_grid, raw in zip(
            result.obj, others, intensity, data, offsets, measured if measured is not None else masks, masks,
            measured_counts):
        floors.append(trust.noise_floor(raw, m))  # the counts as measured (on the input's grid)
        if on_input_grid:
            obj, grid_data, m_grid = embed(obj, shape) * phase_ramp(shape, k), volume, m
            alternatives = [embed(alt, shape) * phase_ramp(shape, k) for alt in alternatives]
        a, p, s = metrics.canonical(obj, phase_outside=True)
        amps.append(a), phases.append(p), supports.append(s)
        chis.append(metrics.chi(a * np.exp(1j * p), grid_data, m_grid))
        spreads.append(trust.phase_spread(a * np.exp(1j * p), list(alternatives)) if len(alternatives)
                       else np.zeros(a.shape, np.float32))
        verdicts.append(trust.verdict(chis[-1], floors[-1], spreads[-1] if len(alternatives) else None, s))
    info = {"verdict": verdicts, "chi_floor": floors, "grid": list(grid), "downsampled": list(grid) != list(shape),
            "phase_ramp": "kept" if on_input_grid else "removed",
            "bragg_peak_offset": [list(k) for k in offsets], "plan": plan.describe(), "start": result.start,
            "chi_refinement_grid": [float(c) for c in result.chi], "stage_seconds": result.seconds}
    return Stage(np.stack(amps), np.stack(phases), np.stack(supports), np.asarray(chis), time.perf_counter() - started,
                 info, np.stack(spreads))


def reconstruct(intensity: np.ndarray, predictor: Predictor, refine: bool = False, refine_size: int = REFINE_SIZE,
                on_input_grid: bool = True, progress=None, measured: np.ndarray | None = None,
                plan: Plan = REFINE_PLAN, counts: np.ndarray | None = None):
    """Returns {"nn": Stage, "refined": Stage (when ``refine``)}.

    ``measured`` False marks voxels that hold no count (detector gaps, flagged, saturated or masked
    pixels, frames not taken): they are inpainted for every step before the refinement (peak search,
    crop, DCT, network input) and left free in it (``shared.detector``)."""
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
    return stages
