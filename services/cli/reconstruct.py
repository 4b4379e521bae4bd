"""Reconstruct shape and strain with 3D-CDI-NN (milliseconds per scan), optionally refined.

INPUT is a measured intensity (3D) or a batch (4D), any size ≥ 32 per axis;
the network sees a crop around the Bragg peak DCT-downsampled to 32³. With
``--refine`` the prediction seeds the refined stage (``shared.solver.plans``) on
all of the input's data, so the file written reproduces the input: χ of
|fftshift(fftn(amplitude·e^{i·phase}))| against √INPUT is the χ reported.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from services.cli.options import add_geometry_arguments, positive_float, positive_int, read_geometry
from shared import __version__
from shared.wire import detector
from shared.solver import trust
from shared.physics.errors import InputError
from shared.wire.files import read_array, read_measurement, write_result, write_vti
from shared.solver.plans import REFINE_PLAN, REFINE_SIZE


def add_arguments(p):
    p.add_argument("input", type=Path, help="intensity: .npy/.npz/.h5/.cxi/.tif or a TIFF folder; 4D = batch")
    p.add_argument("--out", type=Path, required=True, help="output .h5")
    p.add_argument("--dataset", help="dataset name inside .h5/.npz")
    p.add_argument("--weights", type=Path, help="network weights (default: the shipped ones)")
    p.add_argument("--batch", type=positive_int, default=64, help="scans per network call")
    p.add_argument("--network-grid", action="store_true", help="keep the 32³ network grid (no resampling)")
    p.add_argument("--format", choices=["h5", "cxi"], default="h5")
    p.add_argument("--vti", type=Path, help="also write the first scan as VTK .vti")
    p.add_argument("--refine", action="store_true",
                   help="refined stage: network-seeded starts → ER/HIO → AD polish, on the input's grid")
    p.add_argument("--refine-steps", type=positive_int, default=REFINE_PLAN.polish_steps, help="AD polish steps")
    p.add_argument("--time-budget", type=positive_float, help="seconds of AD polish at most")
    p.add_argument("--refine-loss", choices=["gaussian", "poisson"], default=REFINE_PLAN.polish_loss,
                   help="likelihood of the AD polish")
    p.add_argument("--refine-size", type=positive_int, default=REFINE_SIZE,
                   help="largest refinement grid per axis; longer axes of the signal's region are DCT-downsampled "
                        "for the refined stage, then fitted at full resolution (said in the file)")
    p.add_argument("--no-full-grid", dest="full_grid", action="store_false",
                   help="skip the full-grid stage (on by default when the signal's region is larger than "
                        "--refine-size: the binned answer fitted to every measured frame at the detector's resolution)")
    add_geometry_arguments(p, "the scan's (then the file also holds the group 'lab', maps on an orthonormal lab "
                              "grid with strain along G):")
    p.add_argument("--mask", type=Path, help="non-zero where a voxel was NOT measured (detector gaps, bad pixels, "
                   "missing frames): INPUT's shape, or one detector frame's (a pixel mask, as DECTRIS sends it); "
                   "those voxels are left free. Pixels at the integer dtype's maximum (DECTRIS' flag) are always")
    p.add_argument("--dark", type=Path, help="the detector's dark image (one frame's shape), subtracted")
    p.add_argument("--flat", type=Path, help="the detector's flat field (one frame's shape, per-pixel gain), "
                   "multiplied after the dark; a pixel of zero gain is left free")
    p.add_argument("--whitefield", type=Path, help="the detector's whitefield instead of --flat (one frame's shape, "
                   "flood-field counts, as APS 34-ID-C keeps one): the flat field is mean/whitefield, pixels more "
                   "than 3σ below the mean are left free")
    p.add_argument("--saturation", type=positive_float, help="counts at or above which a pixel is saturated "
                   "(the detector's saturation_value): left free like masked ones")


def run(args):
    intensity, was_batch, flagged = read_measurement(args.input, args.dataset, min_size=32, saturation=args.saturation)
    if args.refine_size < 32:
        raise InputError("--refine-size must be at least 32")
    geometry = read_geometry(args)
    if geometry is not None and (len(intensity) > 1 or args.network_grid):
        raise InputError("--geometry/--metadata take one scan on its own grid (no batch, no --network-grid)")
    unmeasured = flagged
    if args.mask is not None:
        mask = read_array(args.mask)
        if mask.shape not in (intensity.shape, intensity.shape[1:], intensity.shape[-2:]):
            raise InputError(f"{args.mask}: mask shape {mask.shape} is neither the input's {intensity.shape[1:]} "
                             f"nor one frame's {intensity.shape[-2:]}")
        unmeasured = unmeasured | (mask != 0)  # a frame's pixel mask applies to every frame
    counts = None
    if args.flat is not None and args.whitefield is not None:
        raise InputError("give --flat or --whitefield, not both")
    if args.dark is not None or args.flat is not None or args.whitefield is not None:  # (N − dark)·flat
        dark, flat, white = (read_frame_array(path, intensity, option) for path, option in (
            (args.dark, "--dark"), (args.flat, "--flat"), (args.whitefield, "--whitefield")))
        if white is not None:
            flat = detector.flat_from_whitefield(white)
        if flat is not None:
            unmeasured = unmeasured | (flat == 0)
        counts, intensity = intensity, detector.corrected(intensity, dark, flat)
    measured = ~unmeasured if unmeasured.any() else None
    from shared.nn.inference import Predictor  # TensorFlow loads only when needed
    from shared.solver.stages import reconstruct

    started = time.perf_counter()
    predictor = Predictor(args.weights, args.batch)
    load_seconds = time.perf_counter() - started
    with tqdm(total=len(intensity), desc="3D-CDI-NN", unit="scan", disable=None if len(intensity) > 8 else True) as bar:
        plan = dataclasses.replace(REFINE_PLAN, polish_steps=args.refine_steps, polish_loss=args.refine_loss,
                                   polish_time_budget=args.time_budget)
        with tqdm(desc="full grid", unit="it", disable=None if args.refine else True) as full_bar:
            stages = reconstruct(intensity, predictor, args.refine, args.refine_size, not args.network_grid,
                                 bar.update, measured, plan, counts, args.full_grid and not args.network_grid,
                                 full_progress=full_bar.update)
    final_name = "full" if "full" in stages else "refined" if args.refine else "nn"
    final = stages[final_name]
    pick = slice(None) if was_batch else 0
    extra = {}
    for name, stage in stages.items():
        if name != "full":  # the root datasets are the full-grid answer
            extra.update({f"{name}/amplitude": stage.amplitude[pick], f"{name}/phase": stage.phase[pick]})
        extra.update({f"{name}/chi": stage.chi, f"{name}/seconds": np.float64(stage.seconds)})
    refined = stages.get("refined")
    trusted = stages.get("full", refined)
    grid_note = {}
    if refined is not None:
        info = refined.info
        resampled = [np.nan if e is None else e for e in trusted.info["resampled_error"]]  # NaN: not run
        grid_note = {"refinement_grid": np.array(info["grid"]), "downsampled": int(info["downsampled"]),
                     "phase_ramp": info["phase_ramp"], "plan": info["plan"],
                     "bragg_peak_offset": np.array(info["bragg_peak_offset"][0] if not was_batch
                                                   else info["bragg_peak_offset"]),
                     "chi_definition": "||s·M − sqrt(input)|| / ||sqrt(input)||, best scale s, over measured voxels, "
                                       "M = |fftshift(fftn(amplitude·exp(i·phase)))|, or where coherence_blur is "
                                       "not zero sqrt(M² convolved with a Gaussian of those σ); where background "
                                       "is not zero, sqrt(s²·M² + background) instead of s·M",
                     "start_kept": info["start"] if was_batch else info["start"][0],
                     # trust (shared.solver.trust): one verdict and one noise floor per scan, of the final stage
                     "verdict": np.array(trusted.info["verdict"], dtype=h5py.string_dtype()) if was_batch
                     else trusted.info["verdict"][0],
                     "chi_floor": np.array(info["chi_floor"]) if was_batch else float(info["chi_floor"][0]),
                     # the χ a right answer reaches once its support's voxels have fitted part of the noise
                     "chi_floor_fitted": np.array(trusted.info["chi_floor_fitted"]) if was_batch
                     else float(trusted.info["chi_floor_fitted"][0]),
                     # cross-validation: χ on the withheld voxels, what a right answer reaches there, and why not
                     "chi_free": np.array(trusted.info["chi_free"]) if was_batch else float(trusted.info["chi_free"][0]),
                     "chi_free_floor": np.array(trusted.info["chi_free_floor"]) if was_batch
                     else float(trusted.info["chi_free_floor"][0]),
                     # the share of the answer's signal on unmeasured voxels (gaps, masks), which χ_free cannot judge
                     "unmeasured_signal": np.array(trusted.info["unmeasured_signal"]) if was_batch
                     else float(trusted.info["unmeasured_signal"][0]),
                     # the search's own error on Poisson resamples of the answer's model (NaN: not run)
                     "resampled_error": np.array(resampled) if was_batch else float(resampled[0]),
                     # a run again's answer on counts: not promised where blurred (trust.WIDER_COHERENT_PROMISE)
                     "wider_search": np.array(trusted.info["wider_search"], bool) if was_batch
                     else bool(trusted.info["wider_search"][0]),
                     "verdict_reason": np.array([r or "" for r in trusted.info["verdict_reason"]],
                                                dtype=h5py.string_dtype()) if was_batch
                     else trusted.info["verdict_reason"][0] or "",
                     # the part of the rule that decided, in words (trust.judgement)
                     "verdict_detail": np.array(trusted.info["verdict_detail"], dtype=h5py.string_dtype())
                     if was_batch else trusted.info["verdict_detail"][0],
                     "chi_refined": refined.chi, "chi_refinement_grid": np.array(info["chi_refinement_grid"]),
                     "region": np.array([r["shape"] for r in info["region"]] if was_batch else info["region"][0]["shape"]),
                     "verdict_rule": trust.RULE,
                     # the partial-coherence blur the χ's model was fitted with (σ, voxels; zeros: coherent)
                     "coherence_blur": np.array(trusted.info["coherence_blur"] if was_batch
                                                else trusted.info["coherence_blur"][0]),
                     # and the flat background it adds (per voxel, the input's units; 0: none)
                     "background": np.array([b or 0.0 for b in trusted.info["background"]]) if was_batch
                     else float(trusted.info["background"][0] or 0.0)}
        extra["/phase_uncertainty"] = trusted.uncertainty[pick]
        region = tuple(info["region"][0]["shape"])
        if "full" in stages:
            fits = stages["full"].info["fit"]
            grid_note.update(full_grid_plan=stages["full"].info["plan"],
                             full_grid_iterations=np.array([f["iterations"] for f in fits]),
                             full_grid_support_grown_by=np.array([f["support_grown_by"] for f in fits]),
                             # the refined stage's blur (chi_refined's model), and its width screened on the full
                             # grid: χ_free per σ tried ({} where the refined answer was coherent)
                             coherence_blur_refined=np.array(info["coherence_blur"] if was_batch
                                                             else info["coherence_blur"][0]),
                             full_grid_width_screen=json.dumps([f["width_screen"] for f in fits] if was_batch
                                                               else fits[0]["width_screen"]),
                             note=f"refined stage on the signal's region {region} of the input "
                                  f"{tuple(intensity.shape[1:])}, DCT-downsampled to {tuple(info['grid'])} (chi_refined, "
                                  f"chi_refinement_grid); then fitted on the region at the detector's resolution (the "
                                  f"root datasets, chi); answers placed back on the input's grid, zero outside the region")
        elif info["downsampled"]:
            grid_note["note"] = (f"the signal's region {region} of the input {tuple(intensity.shape[1:])} was "
                                 f"DCT-downsampled to {tuple(info['grid'])} for refinement (same q-range and voxel "
                                 f"size, smaller field of view); the full-grid stage was skipped (--no-full-grid); the "
                                 f"result is placed back on the input's grid")
    method = "3D-CDI-NN" + (" + refined stage (ER/HIO + AD)" if args.refine else "") + (
        " + full-grid stage (ER)" if "full" in stages else "")
    attrs = {"method": method, "stage": final_name,
             "model_version": predictor.card.get("version", "unknown"), "chi": final.chi,
             "chi_nn": stages["nn"].chi, "seconds_nn": stages["nn"].seconds,
             "seconds": sum(s.seconds for s in stages.values()), "load_seconds": load_seconds,
             "version": __version__, **grid_note}
    lab = lab_group(intensity[0], final, geometry, refined) if geometry is not None else None  # input's voxel
    write_result(args.out, final.amplitude[pick], final.phase[pick], final.support[pick],
                 attrs, args.format, extra={**(extra if args.format == "h5" else
                                               {k: v for k, v in extra.items() if k == "/phase_uncertainty"}),
                                            **(lab or {}).get("data", {})},
                 group_attrs={"lab": lab["attrs"]} if lab else None)
    if args.vti:
        arrays = ({"amplitude": lab["data"]["lab/amplitude"], "phase": lab["data"]["lab/phase"],
                   "strain": lab["data"]["lab/strain"]} if lab else {"amplitude": final.amplitude[0], "phase": final.phase[0]})
        if refined is not None and not lab:
            arrays["phase_uncertainty"] = trusted.uncertainty[0]
        write_vti(args.vti, arrays, lab["attrs"]["voxel_nm"] if lab else (1.0, 1.0, 1.0))
    summary = ", ".join(f"{name}: median χ {np.median(s.chi):.4f} in {1000 * s.seconds / len(intensity):.0f} ms/scan"
                        for name, s in stages.items())
    if refined is not None:
        verdicts = trusted.info["verdict"]
        summary += (f"; {verdicts.count('converged')} of {len(verdicts)} converged" if was_batch else
                    f"; verdict {verdicts[0]}"
                    + (f" · {trusted.info['verdict_reason'][0]}" if trusted.info['verdict_reason'][0] else "")
                    + f" ({trusted.info['verdict_detail'][0]}; chi_free {trusted.info['chi_free'][0]:.4f} against "
                      f"{trusted.info['chi_free_floor'][0]:.4f}, χ floor {refined.info['chi_floor'][0]:.4f})")
        summary += "; every χ against the input"
    print(f"{len(intensity)} scan(s) — {summary} → {args.out}")


def read_frame_array(path, intensity, option: str):
    """A per-detector array (one frame's shape) for --dark / --flat / --whitefield; None without the option."""
    if path is None:
        return None
    values = read_array(path).astype(np.float32)
    if values.shape != intensity.shape[-2:]:
        raise InputError(f"{path}: {option} must be one frame's shape {intensity.shape[-2:]}, got {values.shape}")
    return values


def lab_group(volume, final, geometry: dict, refined) -> dict:
    """The final stage's maps on the orthonormal lab grid, datasets and attributes of the group 'lab'."""
    import h5py

    from shared.physics import downsample
    from shared.physics.strain import lab_maps
    from shared.solver.stages import phase_ramp

    obj = final.amplitude[0] * np.exp(1j * final.phase[0])
    offset = tuple(refined.info["bragg_peak_offset"][0]) if refined is not None else (0, 0, 0)
    obj = obj * np.conj(phase_ramp(obj.shape, offset))  # the peak's ramp is a reference, not strain
    maps = lab_maps(obj, geometry, downsample.bragg_peak(volume))
    data = {f"lab/{name}": maps[name] for name in ("amplitude", "phase", "displacement", "strain")}
    attrs = {"voxel_nm": np.asarray(maps["voxel_nm"], float), "axes": np.array(maps["axes"], dtype=h5py.string_dtype()),
             "bragg_direction": np.asarray(maps["bragg_direction"], float),
             "voxel_vectors_nm": np.asarray(maps["voxel_vectors_nm"], float),
             "units": "displacement nm, strain dimensionless (along G), phase rad",
             "frame": "lab: z along the beam, y up, x = y × z (APS 34-ID-C convention)"}
    return {"data": data, "attrs": attrs}
