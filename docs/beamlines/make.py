"""One scan per beamline in the lab frame: APS 34-ID-C, ESRF ID01, PETRA III P10, APS 28-ID-B.

Each beamline's geometry (a typical Au 111 Bragg condition there) turns a strained, cut sphere into
the 64³ rocking scan its detector would record (``crystals.sphere_in_geometry``); `cdi-live reconstruct
--refine --geometry` retrieves it and maps it onto the beamline's orthonormal lab grid. The figure shows
the lab-frame amplitude and strain along Ĝ; numbers.json the recovered size, strain gradient and Ĝ.

    .venv/bin/python docs/beamlines/make.py      # writes docs/beamlines/beamlines.png and numbers.json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

import h5py  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import scipy.ndimage as ndi  # noqa: E402

from shared.physics import geometry as geo  # noqa: E402
from shared.physics.crystals import sphere_in_geometry  # noqa: E402

GEOMETRIES = geo.EXAMPLES


def measure(amplitude, strain, spacing, truth):
    shape = amplitude > 0.5
    points = (np.argwhere(shape) - np.argwhere(shape).mean(axis=0)) * spacing
    across = [axis for axis in range(3) if truth["vertical"][axis] == 0]
    size = np.sqrt(5 * np.mean(points[:, across] ** 2, axis=0))
    inner = ndi.binary_erosion(amplitude > 0.3, iterations=2)
    where = (np.argwhere(inner) - np.argwhere(inner).mean(axis=0)) * spacing
    fit, *_ = np.linalg.lstsq(np.column_stack([np.ones(len(where)), where]), strain[inner], rcond=None)
    return size, fit[1:]


def main():
    numbers, rows = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, geometry in GEOMETRIES.items():
            geometry = {**geometry, "detector_shape": [256, 256], "detector_roi": [96, 96]}
            intensity, truth = sphere_in_geometry(geometry)
            np.save(tmp / f"{name}.npy", intensity)
            (tmp / f"{name}.json").write_text(json.dumps(geometry))
            subprocess.run([str(ROOT / ".venv/bin/cdi-live"), "reconstruct", str(tmp / f"{name}.npy"), "--refine",
                            "--geometry", str(tmp / f"{name}.json"), "--out", str(tmp / f"{name}.h5")], check=True,
                           capture_output=True)
            with h5py.File(tmp / f"{name}.h5") as f:
                amplitude, strain = f["lab/amplitude"][()], f["lab/strain"][()]
                spacing, g_hat = float(f["lab"].attrs["voxel_nm"][0]), f["lab"].attrs["bragg_direction"]
                chi = float(f.attrs["chi"][0])
            size, gradient = measure(amplitude, strain, spacing, truth)
            voxels = geo.voxel_matrix(geo.reciprocal_steps(geometry, (64, 64, 64))[0], (64, 64, 64))
            numbers[name] = {
                "geometry": GEOMETRIES[name], "chi": chi, "voxel_lengths_nm": np.linalg.norm(voxels, axis=0).round(2).tolist(),
                "bragg_direction": np.round(g_hat, 4).tolist(), "radius_nm": truth["radius_nm"],
                "size_across_nm": size.round(1).tolist(), "size_error": float(np.abs(size / truth["radius_nm"] - 1).max()),
                "strain_gradient": float(np.linalg.norm(gradient)), "strain_gradient_truth": 2 * truth["strain_coefficient"],
                "gradient_error": float(abs(np.linalg.norm(gradient) / (2 * truth["strain_coefficient"]) - 1)),
                "gradient_to_g_deg": float(np.degrees(np.arccos(abs(gradient @ g_hat) / np.linalg.norm(gradient))))}
            rows.append((name, amplitude, strain, spacing, truth))
            print(name, json.dumps({k: v for k, v in numbers[name].items() if k != "geometry"}), flush=True)
    fig, axes = plt.subplots(len(rows), 4, figsize=(12, 3 * len(rows)), squeeze=False)
    for row, (name, amplitude, strain, spacing, truth) in zip(axes, rows):
        centre = [int(round(c)) for c in np.argwhere(amplitude > 0.3).mean(axis=0)]
        vertical = int(np.argmax(truth["vertical"]))
        beam = int(np.argmax(np.abs(geo.DIFFRACTOMETERS[name].beam)))
        horizontal = ({0, 1, 2} - {vertical, beam}).pop()
        # a plane holding the vertical axis and the beam, and the horizontal plane
        for k, (fixed, labels) in enumerate(((horizontal, (beam, vertical)), (vertical, (beam, horizontal)))):
            cut = [slice(None)] * 3
            cut[fixed] = centre[fixed]
            a, e = amplitude[tuple(cut)], strain[tuple(cut)] * 1e4
            if labels[0] < labels[1]:  # imshow: rows are the second label
                a, e = a.T, e.T
            extent = [0, a.shape[1] * spacing, 0, a.shape[0] * spacing]
            row[2 * k].imshow(a, cmap="gray", origin="lower", extent=extent)
            span = float(np.percentile(np.abs(strain[amplitude > 0.3]), 99) * 1e4)
            shown = row[2 * k + 1].imshow(np.where(a > 0.3, e, np.nan), cmap="RdBu_r", vmin=-span, vmax=span,
                                         origin="lower", extent=extent)
            for ax, what in ((row[2 * k], "amplitude"), (row[2 * k + 1], "strain along Ĝ (10⁻⁴)")):
                ax.set_title(f"{name}: {what}", fontsize=8)
                ax.set_xlabel(f"{'xyz'[labels[0]]} (nm)", fontsize=7), ax.set_ylabel(f"{'xyz'[labels[1]]} (nm)", fontsize=7)
                ax.tick_params(labelsize=6)
        fig.colorbar(shown, ax=row[-1], shrink=0.8)
    fig.tight_layout()
    fig.savefig(HERE / "beamlines.png", dpi=80)
    (HERE / "numbers.json").write_text(json.dumps(numbers, indent=1) + "\n")


if __name__ == "__main__":
    main()
