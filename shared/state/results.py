"""Each stage's result of each scan as an HDF5 file beside its raw frames: written once, served from there.

    DATA_DIR/<scan>/frames.h5        raw frames (the ingest)
    DATA_DIR/<scan>/<stage>.h5       nn, refined, full: root datasets amplitude, phase, support (as
                                     `cdi-live reconstruct` writes them), attributes chi, frames_used,
                                     seconds, stage, scan and ``info`` (the whole result record, JSON)

Files are written atomically (temporary file, then rename) before any record says the stage exists,
so Redis holds state and a bounded cache, never the only copy. The files on a shared filesystem
(a ReadWriteMany volume in Kubernetes) serve every gateway and worker.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from shared.wire.files import write_result

STAGES = ("nn", "refined", "full")
TRUST = ("verdict", "verdict_reason", "verdict_detail", "chi_free", "chi_free_floor", "chi_floor", "wider_search",
         "chi_floor_fitted", "unmeasured_signal", "resampled_error",  # the refined and full stages' trust fields
         # (``shared.solver.stages.trust_fields``)
         "coherence_blur", "background")  # and the blur and flat background their χ's model was fitted with
# (``shared.physics.coherence``)
SUMMARY = ("frames_used", "chi", "chi_on", "seconds", *TRUST, "grid",
           "chi_refinement_grid", "partial", "frames_expected", "searching", "checking", "shown",
           "start")  # a result's fields on its scan's record


def summary_of(info: dict) -> dict:
    return {k: info[k] for k in SUMMARY if k in info}


def stage_path(data_dir: Path, scan: str, stage: str) -> Path:
    return Path(data_dir) / scan / f"{stage}.h5"


def write_stage(path: Path, scan: str, stage: str, amplitude: np.ndarray, phase: np.ndarray, info: dict,
                extra: dict[str, np.ndarray] | None = None, proposal: str | None = None) -> None:
    """``extra``: further root datasets (``phase_uncertainty``; the refined stage's ``finalists_real`` and
    ``finalists_imag``, the full-grid stage's seeds). ``proposal``: whose data it is (an attribute)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    attrs = {"scan": scan, "stage": stage, "info": json.dumps(info), **({"proposal": proposal} if proposal else {}),
             **{k: v for k, v in summary_of(info).items() if isinstance(v, (int, float, str))},
             **({"verdict_reason": info.get("verdict_reason") or ""} if "verdict" in info else {})}  # "": converged
    write_result(path, amplitude, phase, np.asarray(amplitude) > 0.1 * max(float(np.max(amplitude)), 1e-30), attrs,
                 extra={k: np.asarray(v, np.float32) for k, v in (extra or {}).items()})


def read_dataset(path: Path, name: str) -> np.ndarray | None:
    """One further dataset of a result file (e.g. ``phase_uncertainty``); None if it has none."""
    try:
        with h5py.File(path, "r") as f:
            return f[name][()] if name in f else None
    except (FileNotFoundError, OSError):
        return None


def complex_datasets(name: str, values: np.ndarray) -> dict[str, np.ndarray]:
    """A complex array as the two real datasets a result file keeps it in (``name``_real, ``name``_imag: plain
    float32 that every HDF5 reader opens, where a compound complex type is h5py's own)."""
    return {f"{name}_real": values.real, f"{name}_imag": values.imag}


def read_complex(path: Path, name: str) -> np.ndarray | None:
    """A complex array kept by ``complex_datasets``, both halves read in one opening of the file; None if the
    file or either half is missing."""
    try:
        with h5py.File(path, "r") as f:
            if f"{name}_real" not in f or f"{name}_imag" not in f:
                return None
            return (f[f"{name}_real"][()] + 1j * f[f"{name}_imag"][()]).astype(np.complex64)
    except (FileNotFoundError, OSError):
        return None


def read_stage(path: Path) -> tuple[np.ndarray, np.ndarray, dict] | None:
    """(amplitude, phase, info) of a result file; None if there is none."""
    try:
        with h5py.File(path, "r") as f:
            return f["amplitude"][()], f["phase"][()], json.loads(f.attrs["info"])
    except (FileNotFoundError, OSError, KeyError):
        return None


def read_info(path: Path) -> dict | None:
    try:
        with h5py.File(path, "r") as f:
            return json.loads(f.attrs["info"])
    except (FileNotFoundError, OSError, KeyError):
        return None


def record_from_files(folder: Path) -> tuple[dict, dict[str, dict]] | None:
    """A scan's record rebuilt from DATA_DIR/<scan>/ alone (its raw file and result files), and each
    stage's result info: what a Redis that restarted empty lost. A scan whose file has no end was
    acquiring: it is failed with that reason unless its ingest, still running, writes its record again."""
    from shared.wire import detector
    from shared.wire.messages import Start

    try:
        with h5py.File(folder / "frames.h5", "r") as f:
            start = Start.model_validate_json(f.attrs["start"])
            received = f["received"][()] if "received" in f else np.zeros(start.frames, bool)
            ending = json.loads(f.attrs["end"]) if "end" in f.attrs else None
            started = float(f.attrs.get("started", (folder / "frames.h5").stat().st_mtime))
            mask = f["pixel_mask"][()] if "pixel_mask" in f else None
            source = str(f["pixel_mask"].attrs.get("source", "")) if mask is not None else "dtype maximum only"
    except (OSError, KeyError, ValueError):
        return None
    record = {"scan": start.scan, "state": "failed", "frames_expected": start.frames,
              "frames_received": int(received.sum()), "missing": int(start.frames - received.sum()),
              "duplicates": 0, "out_of_order": 0, "shape": list(start.shape), "dtype": start.dtype,
              "geometry": start.geometry.model_dump() if start.geometry else None, "started": started,
              "raw_file": str(folder / "frames.h5"), "restored_from_disk": True, "proposal": start.proposal,
              "detector": {**detector.summary(mask, source), "saturation_value": start.saturation_value},
              "reason": "acquisition interrupted: its state was lost with Redis's (frames kept on disk)"}
    if ending:
        record.update({k: v for k, v in ending.items() if k in ("state", "reason", "ended", "frames_received")})
        if record["state"] == "complete":
            record.pop("reason")
    infos = {stage: info for stage in STAGES
             if (info := read_info(stage_path(folder.parent, folder.name, stage))) is not None}
    record.update({f"result_{stage}": summary_of(info) for stage, info in infos.items()})
    return record, infos
