"""The real data sets (``../shared/data``, its README): where they are and how each is read, one answer for the
demo, the evaluation, the tests and the benchmarks.

Where: ``$CDI_LIVE_DATA`` when set (a clone or a worktree elsewhere), else ``shared/data`` beside this repository.
What: the paper's example (``paper-example/``: its ``ft_*.npy`` hold diffraction magnitudes, so intensities are
their squares) and APS 34-ID-C scan 54 (``aps-34idc-scan54/``: 201 frames of 256×256 photon counts and the SPEC
file of the beamtime).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

PAPER = "paper-example"
SCAN54 = "aps-34idc-scan54"


def folder() -> Path:
    """The folder of the real data sets (read at each call: a test or a benchmark may set the variable)."""
    return Path(os.environ.get("CDI_LIVE_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))


def scan54_file(root: Path | None = None) -> Path:
    """Scan 54's frames as recorded (``frames.npz``, array ``frames``), in ``root`` or ``folder()``."""
    return (root or folder()) / SCAN54 / "frames.npz"


def scan54_spec() -> Path:
    """The SPEC file of scan 54's beamtime (its geometry: ``shared.physics.geometry``)."""
    return folder() / SCAN54 / "scan54.spec"


def scan54_frames(dtype=np.float32, root: Path | None = None) -> np.ndarray:
    """Scan 54's frames, (201, 256, 256) photon counts (as stored, uint32, where ``dtype`` is None)."""
    with np.load(scan54_file(root)) as stored:
        frames = stored["frames"]
    return frames if dtype is None else frames.astype(dtype)


def paper_file(name: str = "ft_crop_64.npy", root: Path | None = None) -> Path:
    return (root or folder()) / PAPER / name


def paper_intensity(name: str = "ft_crop_64.npy", root: Path | None = None) -> np.ndarray:
    """The paper's example as intensity: the square of the magnitude its file holds (float32)."""
    return np.load(paper_file(name, root)).astype(np.float32) ** 2
