"""Simulate gold nanocrystals and their Bragg diffraction (HDF5 training/test data).

Writes datasets intensity, amplitude, phase of shape (N, n, n, n) and the
generation parameters as attributes (per-crystal values under params/).
"""

from __future__ import annotations

import json
import time
from multiprocessing import Pool
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from services.cli.options import fraction, photon_range, positive_int
from shared import __version__
from shared.physics.errors import InputError
from shared.physics import crystals, families


def add_arguments(p):
    p.add_argument("--count", type=positive_int, default=16, help="number of crystals")
    p.add_argument("--size", type=positive_int, default=32, help="grid size n (n³ voxels)")
    p.add_argument("--seed", type=int, default=0, help="random seed (crystal i uses seed, i)")
    p.add_argument("--photons", type=photon_range, default=(0.0, 0.0),
                   help="total counts per pattern: 0 = noiseless, 1e6, or a log-uniform range 1e5:1e8")
    p.add_argument("--unstrained-fraction", type=fraction, default=0.0,
                   help="fraction of crystals that are unstrained copies of strained ones (control set)")
    p.add_argument("--max-strain", type=float, default=1e-2, help="cap on the peak strain along G")
    p.add_argument("--phase-range", type=float, nargs=2, default=(0.3, 2.5), metavar=("LOW", "HIGH"),
                   help="largest |phase| per crystal, uniform in [LOW, HIGH] rad")
    p.add_argument("--hkl", type=int, nargs=3, default=(1, 1, 1), help="Bragg reflection")
    p.add_argument("--family", choices=families.NAMES, default=None,
                   help="draw crystals and their measurement (noise, background, blur) from one crystal family of "
                        "the evaluation (shared.physics.families) instead; --photons, --unstrained-fraction, "
                        "--max-strain, --phase-range and --hkl do not apply")
    p.add_argument("--workers", type=positive_int, default=1, help="processes")
    p.add_argument("--out", type=Path, required=True, help="output .h5")


def one_crystal(job):
    index, shape_index, strained, cfg = job
    if cfg.get("family"):
        return (index, *family_scan(cfg["family"], cfg["size"], cfg["seed"], index))
    return (index, *crystals.simulated_scan(cfg["size"], cfg["seed"], index, shape_index, strained,
                                            cfg["photons"], cfg["max_strain"], cfg["hkl"], cfg["phase_range"]))


def family_scan(family: str, size: int, seed: int, index: int):
    """A family's scan as training data: the global phase taken out (no measurement fixes it), the
    measurement's photons, background and blur kept per crystal."""
    scan = families.simulated(family, size, seed, index)
    mean = np.vdot(np.abs(scan.truth), scan.truth)  # Σ ρ·ρe^{iφ}: the crystal's mean phase
    obj = scan.truth * np.exp(-1j * np.angle(mean))
    amplitude = np.abs(obj).astype(np.float32)
    phase = np.where(amplitude > 0, np.angle(obj), 0).astype(np.float32)
    params = {"family": family, "kind": scan.kind, "background": scan.background, "blur": scan.blur}
    return scan.intensity, amplitude, phase, params, scan.photons


def run(args):
    n, count = args.size, args.count
    controls = 0 if args.family else int(round(count * args.unstrained_fraction))  # a family has no controls
    if not 0 < args.phase_range[0] <= args.phase_range[1] or not args.max_strain > 0:
        raise InputError("--phase-range needs 0 < LOW <= HIGH and --max-strain must be positive")
    cfg = {"seed": args.seed, "size": n, "photons": args.photons, "max_strain": args.max_strain,
           "hkl": tuple(args.hkl), "phase_range": tuple(args.phase_range), "family": args.family}
    # Strained crystals get shapes 0..S-1; controls reuse shapes 0..C-1 without strain.
    strained_count = count - controls
    jobs = [(i, i, True, cfg) for i in range(strained_count)]
    jobs += [(strained_count + j, j % max(strained_count, 1) if strained_count else j, False, cfg) for j in range(controls)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".partial")
    started = time.perf_counter()
    params, photons = [None] * count, np.zeros(count)
    with h5py.File(tmp, "w") as f:
        chunk = (1, n, n, n)
        data = {k: f.create_dataset(k, (count, n, n, n), np.float32, chunks=chunk) for k in ("intensity", "amplitude", "phase")}
        with Pool(args.workers) if args.workers > 1 else _Serial() as pool:
            for index, inten, amp, phase, par, ph in tqdm(pool.imap_unordered(one_crystal, jobs), total=count,
                                                          desc="simulate", unit="crystal"):
                data["intensity"][index], data["amplitude"][index], data["phase"][index] = inten, amp, phase
                params[index], photons[index] = par, ph
        group = f.create_group("params")
        table = _family_table(params) if args.family else crystals.params_table(params)
        for key, column in table.items():
            group.create_dataset(key, data=column)
        group.create_dataset("photons", data=photons)
        f.attrs.update({"count": count, "size": n, "seed": args.seed, "photons": json.dumps(list(args.photons)),
                        "unstrained_fraction": args.unstrained_fraction, "max_strain": args.max_strain,
                        "phase_range": list(args.phase_range), "hkl": list(args.hkl), "family": args.family or "",
                        "generator": f"cdi-live {__version__}",
                        "convention": "intensity = |fftshift(fftn(amplitude*exp(1j*phase)))|^2 (before noise)",
                        "seconds": time.perf_counter() - started})
    tmp.replace(args.out)
    print(f"wrote {count} crystals ({controls} unstrained controls) of {n}³ to {args.out}")


def _family_table(params: list[dict]) -> dict[str, np.ndarray]:
    """Column arrays of a family's per-crystal measurement (text as bytes, as HDF5 stores it)."""
    return {key: np.array([p[key] for p in params], dtype="S" if isinstance(params[0][key], str) else None)
            for key in params[0]}


class _Serial:
    """Stand-in for a process pool when --workers is 1 (no fork overhead)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def imap_unordered(func, jobs):
        return map(func, jobs)
