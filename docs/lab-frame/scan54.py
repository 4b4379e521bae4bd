"""APS 34-ID-C scan 54 end to end in the lab frame: geometry from its SPEC file, the refined stage
and ER/HIO (4 random starts, on the same DCT-downsampled grid), shape and strain along G.

    .venv/bin/python docs/lab-frame/scan54.py      # writes docs/lab-frame/scan54.png and numbers.json
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from shared.wire import realdata  # noqa: E402
from shared.wire.files import geometry_from_spec  # noqa: E402
from shared.nn.inference import Predictor  # noqa: E402
from shared.physics import downsample, metrics, phasing  # noqa: E402
from shared.physics.strain import lab_maps  # noqa: E402
from shared.solver.stages import embed, peak_offset, peak_to_centre, phase_ramp, reconstruct, to_grid  # noqa: E402



def slices(ax_row, maps, title, span):
    amplitude, strain, voxel = maps["amplitude"], maps["strain"], maps["voxel_nm"][0]
    centre = [int(round(c)) for c in np.argwhere(amplitude > 0.3).mean(axis=0)]
    inside = amplitude > 0.3
    cuts = [("y–z plane (x = centre)", np.s_[centre[0], :, :], ("z", "y")),
            ("x–z plane (y = centre)", np.s_[:, centre[1], :], ("z", "x")),
            ("x–y plane (z = centre)", np.s_[:, :, centre[2]], ("y", "x"))]
    for k, (name, cut, (horizontal, vertical)) in enumerate(cuts):
        a, e, m = amplitude[cut], strain[cut] * 1e4, inside[cut]
        extent = [0, a.shape[1] * voxel, 0, a.shape[0] * voxel]
        ax_row[k].imshow(a, cmap="gray", origin="lower", extent=extent)
        ax_row[k].set_title(f"{title}: amplitude\n{name}", fontsize=8)
        image = ax_row[3 + k].imshow(np.where(m, e, np.nan), cmap="RdBu_r", vmin=-span, vmax=span, origin="lower",
                                     extent=extent)
        ax_row[3 + k].set_title(f"strain along G (10⁻⁴)\n{name}", fontsize=8)
        for ax in (ax_row[k], ax_row[3 + k]):
            ax.set_xlabel(f"{horizontal} (nm)", fontsize=7), ax.set_ylabel(f"{vertical} (nm)", fontsize=7)
            ax.tick_params(labelsize=6)
    return image


def main():
    geometry = geometry_from_spec(realdata.scan54_spec(), 54)
    frames = realdata.scan54_frames()
    predictor = Predictor()
    began = time.perf_counter()
    refined = reconstruct(frames[None], predictor, refine=True)["refined"]
    ours_s = time.perf_counter() - began
    offset = tuple(refined.info["bragg_peak_offset"][0])
    ours = refined.amplitude[0] * np.exp(1j * refined.phase[0]) * np.conj(phase_ramp(frames.shape, offset))
    peak = downsample.bragg_peak(frames)
    ours_lab = lab_maps(ours, geometry, peak)

    centred = peak_to_centre(frames, peak_offset(frames))
    grid = tuple(refined.info["grid"])
    began = time.perf_counter()
    objects, _, _ = phasing.phase_retrieve(to_grid(centred, grid)[None], starts=4, seed=0)
    erhio_s = time.perf_counter() - began
    erhio = metrics.canonical(objects[0])
    erhio_lab = lab_maps(embed(erhio[0] * np.exp(1j * erhio[1]), frames.shape), geometry, peak)

    span = float(np.percentile(np.abs(ours_lab["strain"][ours_lab["amplitude"] > 0.3]), 99) * 1e4)
    fig, axes = plt.subplots(2, 6, figsize=(17, 6.4))
    slices(axes[0], ours_lab, "refined stage", span)
    image = slices(axes[1], erhio_lab, "ER/HIO ×4", span)
    fig.colorbar(image, ax=axes[:, 3:], shrink=0.6, label="strain along G (10⁻⁴)")
    fig.suptitle(f"APS 34-ID-C scan 54 in the lab frame (x, y up, z along the beam), {ours_lab['voxel_nm'][0]:.1f} nm "
                 f"voxels; geometry from scan54.spec", fontsize=10)
    fig.savefig(HERE / "scan54.png", dpi=110)

    def size(maps):
        points = np.argwhere(maps["amplitude"] > 0.5) * maps["voxel_nm"][0]
        return (points.max(axis=0) - points.min(axis=0)).round(0).tolist()

    numbers = {"geometry": geometry, "voxel_vectors_nm": ours_lab["voxel_vectors_nm"].round(2).tolist(),
               "voxel_lengths_nm": np.linalg.norm(ours_lab["voxel_vectors_nm"], axis=0).round(2).tolist(),
               "bragg_direction": ours_lab["bragg_direction"].round(4).tolist(),
               "d_spacing_nm": round(2 * np.pi / ours_lab["g_norm"], 4), "refinement_grid": list(grid),
               "refined": {"chi_vs_frames": float(refined.chi[0]), "seconds": round(ours_s, 1),
                           "extent_xyz_nm": size(ours_lab), "strain_p99_1e4": round(span, 2)},
               "erhio_4_starts": {"chi_vs_frames": metrics.chi(embed(erhio[0] * np.exp(1j * erhio[1]), frames.shape)
                                                               * phase_ramp(frames.shape, offset), frames),
                                  "seconds": round(erhio_s, 1), "extent_xyz_nm": size(erhio_lab)}}
    (HERE / "numbers.json").write_text(json.dumps(numbers, indent=1))
    print(json.dumps(numbers, indent=1))


if __name__ == "__main__":
    main()
