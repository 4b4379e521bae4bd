"""Reconstructions and strain maps as downloadable files (npz, HDF5, CXI, VTK .vti), written to a
temporary file that the response streams (no whole file is held in memory as a response body)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from shared.wire.files import write_result, write_vti

MEDIA = {"npz": "application/octet-stream", "h5": "application/x-hdf5", "cxi": "application/x-hdf5",
         "vti": "application/xml"}


def support_of(amplitude: np.ndarray, threshold: float) -> np.ndarray:
    peak = float(amplitude.max()) or 1.0
    return amplitude > threshold * peak


def write(path: Path, arrays: dict[str, np.ndarray], fmt: str, attrs: dict, spacing=(1.0, 1.0, 1.0)) -> Path:
    """One file at ``path`` holding ``arrays`` (float32; 'amplitude' and 'phase' for h5/cxi)."""
    arrays = {k: np.asarray(v, np.float32) for k, v in arrays.items()}
    if fmt == "npz":
        with open(path, "wb") as f:
            np.savez(f, **arrays, voxel_nm=np.asarray(spacing, np.float32))
    elif fmt == "vti":
        write_vti(path, arrays, spacing)
    else:
        amplitude, phase = arrays.pop("amplitude"), arrays.pop("phase")
        write_result(path, amplitude, phase, support_of(amplitude, 0.1), {**attrs, "voxel_nm": np.asarray(spacing, float)},
                     fmt=fmt, extra=arrays)
    return path


def encode(arrays: dict[str, np.ndarray], fmt: str, attrs: dict, spacing=(1.0, 1.0, 1.0)) -> bytes:
    """Bytes of such a file (small ones, in tests and scripts)."""
    with tempfile.TemporaryDirectory() as folder:
        return write(Path(folder) / f"out.{fmt}", arrays, fmt, attrs, spacing).read_bytes()
