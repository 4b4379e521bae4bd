"""Measured volume → NN stage → optional refined stage, each on the input's real-space grid.

The refinement runs on the full-resolution crop (DCT-downsampled only when the
crop exceeds ``refine_size`` per axis) with the 32³ prediction placed at the
centre of that grid: both share the crop's real-space voxel size.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from shared.nn.inference import Predictor, network_crop
from shared.physics.downsample import to_input_grid
from shared.physics import downsample, metrics
from shared.refinement import refine


@dataclass
class Stage:
    amplitude: np.ndarray  # (B, …input shape) float32
    phase: np.ndarray
    support: np.ndarray
    chi: np.ndarray
    seconds: float


def embed(obj: np.ndarray, shape) -> np.ndarray:
    """Centre a smaller complex object in a grid of ``shape`` (same voxel size)."""
    out = np.zeros(shape, np.complex64)
    starts = [(s - o) // 2 for s, o in zip(shape, obj.shape)]
    out[tuple(slice(st, st + o) for st, o in zip(starts, obj.shape))] = obj
    return out


def refinement_data(volume: np.ndarray, refine_size: int):
    """(intensity on the refinement grid, crop shape) for one measured volume."""
    crop = network_crop(volume)
    cropped = downsample.crop_around(volume, downsample.bragg_peak(volume), crop)
    grid = tuple(min(c, refine_size) for c in crop)
    if grid == tuple(crop):
        return cropped.astype(np.float32), crop
    magnitude = np.clip(downsample.dct_downsample(np.sqrt(cropped), grid), 0, None)
    return (magnitude**2).astype(np.float32), crop


def reconstruct(intensity: np.ndarray, predictor: Predictor, refine_steps: int = 0, time_budget=None,
                refine_size: int = 64, loss: str = "gaussian", on_input_grid: bool = True, progress=None):
    """Returns {"nn": Stage, "refined": Stage (when refine_steps > 0)}."""
    nn = predictor.reconstruct(intensity, on_input_grid=False, progress=progress)
    stages = {}
    shapes = [v.shape for v in intensity]

    def place(amps, phases, crops, chis, seconds):
        out_a, out_p, out_s = [], [], []
        for a, p, crop, shape in zip(amps, phases, crops, shapes):
            if on_input_grid and a.shape != shape:
                a, p, s = to_input_grid(a, p, crop, shape)
            else:
                s = a > 0.1
            out_a.append(a), out_p.append(p), out_s.append(s)
        return Stage(np.stack(out_a), np.stack(out_p), np.stack(out_s), np.asarray(chis), seconds)

    stages["nn"] = place(nn.amplitude, nn.phase, nn.crops, nn.chi, nn.seconds)
    if refine_steps:
        started = time.perf_counter()
        amps, phases, chis = [], [], []
        for volume, a, p in zip(intensity, nn.amplitude, nn.phase):  # grids may differ per scan
            measured, _ = refinement_data(volume, refine_size)
            start = embed(a * np.exp(1j * p), measured.shape)
            result = refine(measured[None], start[None], refine_steps, loss=loss, time_budget=time_budget)
            ra, rp, _ = metrics.canonical(result.obj[0])
            amps.append(ra), phases.append(rp), chis.append(float(result.chi[0]))
        stages["refined"] = place(amps, phases, nn.crops, chis, time.perf_counter() - started)
    return stages
