"""The field's own tool as a yardstick: cohere-core (APS) ER/HIO with shrink-wrap, numpy backend.

``pip install cohere-core`` (or the project's ``[yardstick]`` extra). Settings follow cohere's
34-ID-C example: 3*(20*ER+180*HIO)+20*ER, HIO β 0.9, Gaussian shrink-wrap σ 1, threshold 0.1
every iteration, initial support half the array. cohere works in the ifftn convention, so its
object is conjugated before it is compared with ours (|fftshift(fftn(ρ))|² = I).
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


def available() -> bool:
    try:
        import cohere_core  # noqa: F401
    except ImportError:
        return False
    return True


def cohere_phase(intensity: np.ndarray, seed: int = 0, ga_generations: int = 0) -> tuple[np.ndarray, float]:
    """One cohere reconstruction of a centred intensity → (object in our convention, cohere's final error)."""
    from cohere_core.controller import phasing as cohere

    np.random.seed(seed)  # cohere's random start draws from numpy's global generator
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "data.npy"
        np.save(path, np.sqrt(np.clip(intensity, 0, None)).astype(np.float32))
        with contextlib.redirect_stdout(io.StringIO()):
            rec = cohere.create_rec(dict(SETTINGS), str(path), "np", -1, debug=True)
            rec.iterate()
        image = np.asarray(rec.ds_image)
        error = float(rec.errs[-1]) if rec.errs else float("nan")
    return np.conj(image).astype(np.complex64), error
