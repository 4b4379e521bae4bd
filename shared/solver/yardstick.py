"""The field's own tool as a yardstick: cohere-core (APS) ER/HIO with shrink-wrap, numpy backend.

Installed by ``make install`` (the project's ``[yardstick]`` extra, cohere-core 4.5.4). Three ways a careful
cohere user runs it, each from random starts:

    one start     3*(20*ER+180*HIO)+20*ER, HIO β 0.9, Gaussian shrink-wrap σ 1, threshold 0.1 every
                  iteration, initial support half the array, twin removal at iteration 2 (cohere's
                  34-ID-C example)
    best of N     N starts, the lowest cohere error kept
    GA            cohere's genetic algorithm: a population reconstructed, ranked by cohere's error,
                  every member bred with the best (``sqrt_ab``: geometric mean of the amplitudes, mean
                  of the aligned phases), its support shrink-wrapped again, for GA_GENERATIONS
                  generations; the best of the last generation kept

cohere works in the ifftn convention, so its object is conjugated before it is compared with ours
(|fftshift(fftn(ρ))|² = I).
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np

SETTINGS = {"algorithm_sequence": "3*(20*ER+180*HIO)+20*ER", "hio_beta": 0.9, "shrink_wrap_trigger": [1, 1],
            "shrink_wrap_type": "GAUSS", "shrink_wrap_threshold": 0.1, "shrink_wrap_gauss_sigma": 1.0,
            "initial_support_area": [0.5, 0.5, 0.5], "twin_trigger": [2]}
GA_POPULATION, GA_GENERATIONS = 4, 3
GA_BREED, GA_SUPPORT_THRESHOLD, GA_SUPPORT_SIGMA = "sqrt_ab", 0.1, 1.0


def available() -> bool:
    try:
        import cohere_core  # noqa: F401
    except ImportError:
        return False
    return True


def _reconstruct(data_file: Path, start: Path | None = None) -> tuple[np.ndarray, float]:
    """One cohere reconstruction (from random, or continuing from ``start``'s image.npy and support.npy)
    → (object in cohere's convention, cohere's final error)."""
    from cohere_core.controller import phasing as cohere

    settings = dict(SETTINGS) | ({"continue_dir": str(start)} if start is not None else {})
    with contextlib.redirect_stdout(io.StringIO()):
        rec = cohere.create_rec(settings, str(data_file), "np", -1, debug=True)
        rec.iterate()
    error = float(rec.errs[-1]) if rec.errs else float("inf")
    return np.asarray(rec.ds_image), error


def _data_file(folder: str, intensity: np.ndarray) -> Path:
    path = Path(folder) / "data.npy"
    np.save(path, np.sqrt(np.clip(intensity, 0, None)).astype(np.float32))
    return path


def ours(image: np.ndarray) -> np.ndarray:
    return np.conj(image).astype(np.complex64)


def cohere_phase(intensity: np.ndarray, seed: int = 0) -> tuple[np.ndarray, float]:
    """One cohere reconstruction of a centred intensity → (object in our convention, cohere's final error)."""
    np.random.seed(seed)  # cohere's random start draws from numpy's global generator
    with tempfile.TemporaryDirectory() as folder:
        image, error = _reconstruct(_data_file(folder, intensity))
    return ours(image), error


def lowest_error(runs: list[tuple[np.ndarray, float]]) -> np.ndarray:
    """Of several (object, cohere error) runs, the object a careful cohere user keeps."""
    return min(runs, key=lambda run: run[1])[0]


def cohere_best_of(intensity: np.ndarray, starts: int, seed: int = 0) -> np.ndarray:
    """cohere from ``starts`` random starts, the lowest cohere error kept."""
    return lowest_error([cohere_phase(intensity, seed=seed + k) for k in range(starts)])


def cohere_ga(intensity: np.ndarray, seed: int = 0, population: int = GA_POPULATION,
              generations: int = GA_GENERATIONS) -> np.ndarray:
    """cohere's genetic algorithm (its own breeding and shrink-wrap functions) → the best of the last
    generation, in our convention."""
    from cohere_core.utilities import dvc_utils

    dvc_utils.set_lib_from_pkg("np")
    np.random.seed(seed)
    with tempfile.TemporaryDirectory() as folder:
        data = _data_file(folder, intensity)
        members: list[Path | None] = [None] * population
        for generation in range(generations):
            results = sorted((_reconstruct(data, start) for start in members), key=lambda r: r[1])
            if generation == generations - 1:
                return ours(results[0][0])
            alpha = results[0][0]
            members = []
            for k, (image, _) in enumerate(results):
                child = dvc_utils.breed(GA_BREED, alpha, image)
                home = Path(folder) / f"member{k}"
                home.mkdir(exist_ok=True)
                np.save(home / "image.npy", child)
                np.save(home / "support.npy", dvc_utils.shrink_wrap(child, GA_SUPPORT_THRESHOLD, GA_SUPPORT_SIGMA))
                members.append(home)
    raise ValueError("generations must be ≥ 1")
