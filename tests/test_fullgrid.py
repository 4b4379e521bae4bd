"""The full-grid stage: the signal's region at the detector's resolution, answers placed back exactly, every χ
against the measured frames, in the CLI and through the running service."""

import dataclasses
import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
import requests
import scipy.fft as sfft
from scipy import ndimage

from services.beamline.sim import Beamline
from shared.solver import fullgrid
from shared.physics import crystals, downsample, metrics, phasing
from shared.solver.plans import Checkpoint, Preempted
from shared.solver.stages import embed, full_stage
from tests.conftest import free_port, wait_for
from tests.test_faults import stack  # noqa: F401  (private Redis, services as processes)


def large_scan(seed: int, index: int, photons: float, size: int = 64, crystal: int = 32):
    """A crystal of a 32³ scan in a ``size``³ field of view (oversampling ≈ 4: binning by 2 keeps ≥ 2), as
    counts (``photons`` in all) or noise-free; and its true object."""
    _, amplitude, phase = crystals.simulated_scan(crystal, seed, index, index, True, (0.0, 0.0))[:3]
    truth = embed((amplitude * np.exp(1j * phase)).astype(np.complex64), (size,) * 3)
    ideal = np.abs(sfft.fftshift(sfft.fftn(truth))) ** 2
    if not photons:
        return ideal.astype(np.float32), truth
    rng = np.random.default_rng(seed + index)
    return rng.poisson(ideal / ideal.sum() * photons).astype(np.float32), truth


def test_placing_back_reproduces_the_far_field_in_the_region_and_nothing_outside():
    """Analytic: the far field restricted to the region, carried to an object and placed back on the input's
    grid, is the original far field at every region voxel (a whole, wrapped axis and cut ones) and 0 elsewhere."""
    rng = np.random.default_rng(1)
    shape = (40, 48, 36)
    far = rng.normal(size=shape) + 1j * rng.normal(size=shape)
    for region in (fullgrid.Region(shape, (3, 30, 20), (40, 24, 16)),  # axis 0 whole, the peak near its edge
                   fullgrid.Region(shape, (20, 5, 18), (40, 24, 16))):  # the box runs past axis 1's edge
        small = region.take(far)
        back = fullgrid.place_back(sfft.ifftn(sfft.ifftshift(small)).astype(np.complex64), region)
        placed = sfft.fftshift(sfft.fftn(back))
        expected = region.put(np.where(region.inside(), small, 0))
        assert np.allclose(placed, expected, atol=1e-4 * np.abs(far).max())
        assert np.count_nonzero(np.abs(placed) > 1e-3) == np.count_nonzero(region.inside() & (np.abs(small) > 1e-3))
    assert not fullgrid.Region(shape, (20, 5, 18), (40, 24, 16)).inside().all()  # beyond the detector: unmeasured


def test_the_region_follows_the_signal_not_the_detector():
    """The same frames off-centre on a larger detector (zeros elsewhere): the region holds all their signal
    and little more (its margin, where the signal reached the small detector's edge), never the whole larger
    detector; a region never exceeds the input."""
    counts, _ = large_scan(9950, 1, 1e6)
    big = np.zeros((64, 160, 128), np.float32)
    big[:, 70:134, 10:74] = counts
    here = fullgrid.signal_region(counts, downsample.bragg_peak(counts))
    there = fullgrid.signal_region(big, downsample.bragg_peak(big))
    assert all(r <= n for r, n in zip(here.shape, counts.shape))
    assert all(h <= t <= h + 2 * (fullgrid.MARGIN + 4) for h, t in zip(here.shape, there.shape))
    assert there.take(big).sum() == big.sum()


def test_a_yielding_full_grid_fit_resumes_with_the_same_answer():
    counts, truth = large_scan(9951, 2, 1e8, size=48, crystal=24)
    far = sfft.fftn(truth) * np.exp(1j * np.random.default_rng(3).normal(0, 0.4, truth.shape))
    seeds = sfft.ifftn(far).astype(np.complex64)[None]  # the truth with its phases disturbed
    plan = dataclasses.replace(fullgrid.FULL_PLAN, schedule="12*ER", patience=100)
    whole = fullgrid.fit(counts, None, seeds, plan)
    asked, state = [0], None
    while True:
        def yield_now():
            asked[0] += 1
            return asked[0] % 5 == 0

        part = fullgrid.fit(counts, None, seeds, plan, yield_now, state)
        if not part.interrupted:
            break
        state = part.checkpoint
    assert asked[0] >= 10 and np.array_equal(part.obj, whole.obj) and part.iterations == whole.iterations == 12
    assert whole.history[-1] < whole.history[0]  # it fits


def rim_cut(truth: np.ndarray) -> np.ndarray:
    """The truth with its edge eroded by 2 voxels, as a seed (1, …): a support that misses the crystal's rim."""
    return (truth * ndimage.binary_erosion(np.abs(truth) > 0.1 * np.abs(truth).max(), iterations=2))[None]


def test_the_support_grows_only_while_the_withheld_voxels_gain():
    """Cross-validated growth (χ_free): from a seed whose support misses the crystal's rim (the truth, its edge
    eroded), the support grows and χ_free falls below the fixed support's; from the truth it does not grow."""
    counts, truth = large_scan(9954, 3, 1e8, size=48, crystal=24)
    withheld, tight = phasing.free_voxels(counts.shape), rim_cut(truth)
    plan = dataclasses.replace(fullgrid.FULL_PLAN, schedule="60*ER", support_dilation=0, grow_by=2)
    grown = fullgrid.fit(counts, ~withheld, tight, plan, withheld=withheld)
    fixed = fullgrid.fit(counts, ~withheld, tight, dataclasses.replace(plan, grow_steps=0), withheld=withheld)
    assert fixed.grown == 0 and grown.grown >= 1 and grown.support.sum() > fixed.support.sum()
    assert fullgrid.free_chi(counts, withheld, grown.obj[0]) < 0.9 * fullgrid.free_chi(counts, withheld, fixed.obj[0])
    exact = fullgrid.fit(counts, ~withheld, truth[None], plan, withheld=withheld)
    assert exact.grown == 0 and np.array_equal(exact.support, fullgrid.support_of(truth, plan))


def test_a_growing_fit_that_yields_resumes_with_the_same_answer():
    counts, truth = large_scan(9954, 3, 1e8, size=48, crystal=24)
    withheld, tight = phasing.free_voxels(counts.shape), rim_cut(truth)
    plan = dataclasses.replace(fullgrid.FULL_PLAN, schedule="20*ER", support_dilation=0, grow_by=2,
                               grow_iterations=10, patience=100)
    whole = fullgrid.fit(counts, ~withheld, tight, plan, withheld=withheld)
    asked, state = [0], None
    while True:
        def yield_now():
            asked[0] += 1
            return asked[0] % 7 == 0

        part = fullgrid.fit(counts, ~withheld, tight, plan, yield_now, state, withheld=withheld)
        if not part.interrupted:
            break
        state = part.checkpoint
    assert whole.grown >= 1 and asked[0] >= 4
    assert np.array_equal(part.obj, whole.obj) and part.iterations == whole.iterations and part.grown == whole.grown


def test_a_blur_carried_from_a_binned_grid_is_screened_on_the_full_grid():
    """A σ chosen on a binned grid partly models the binning (it smooths the pattern as a blur does): on the full
    grid, frames without a blur are fitted coherent, and frames blurred by that σ keep it (noise-free, from the
    truth: the withheld voxels tell the models apart)."""
    ideal, truth = large_scan(9957, 2, 0, size=48, crystal=24)
    withheld = phasing.free_voxels(ideal.shape)
    carried = [0.0, 1.0, 1.0]
    sharp, _ = fullgrid.choose_blur(ideal, ~withheld, withheld, truth[None], carried)
    blurred = ndimage.gaussian_filter(ideal, carried, mode="wrap")
    kept, screened = fullgrid.choose_blur(blurred, ~withheld, withheld, truth[None], carried)
    assert sharp is None and kept == carried
    assert len(screened) == len(fullgrid.FULL_PLAN.width_factors) and min(screened.values()) == screened[str(carried)]
    assert fullgrid.choose_blur(ideal, ~withheld, withheld, truth[None], [0.0, 0.0, 0.0]) == (None, {})  # coherent


def test_a_blurred_model_starts_from_a_tighter_support_only_where_the_plan_sets_one():
    _, truth = large_scan(9957, 2, 0, size=48, crystal=24)
    tight = dataclasses.replace(fullgrid.FULL_PLAN, blurred_dilation=2)
    loose, blurred = fullgrid.support_of(truth, tight), fullgrid.support_of(truth, tight, blurred_model=True)
    assert blurred.sum() < loose.sum() and not (blurred & ~loose).any()
    assert np.array_equal(fullgrid.support_of(truth, blurred_model=True), fullgrid.support_of(truth))  # as shipped


def test_a_full_grid_stage_that_yields_after_its_width_screen_resumes_at_that_width():
    """The width chosen before a yield goes with the checkpoint: the stage resumed does not screen again, and ends
    where one run ends."""
    ideal, truth = large_scan(9957, 2, 0, size=48, crystal=24)
    blurred = ndimage.gaussian_filter(ideal, (0, 1, 1), mode="wrap")
    shape = blurred.shape
    info = {"region": [fullgrid.Region(shape, tuple(n // 2 for n in shape), shape).as_dict()], "chi_floor": [0.0],
            "coherence_blur": [[0.0, 1.0, 1.0]], "background": [None], "bragg_peak_offset": [[0, 0, 0]]}
    plan = dataclasses.replace(fullgrid.FULL_PLAN, schedule="40*ER", patience=100, grow_steps=0)
    whole = full_stage(blurred[None], info, truth[None, None], plan=plan)
    asked = [0]

    def yield_now():  # once, inside the fit that follows the screen (3 × 20 iterations)
        asked[0] += 1
        return asked[0] == 75

    with pytest.raises(Preempted) as preempted:
        full_stage(blurred[None], info, truth[None, None], plan=plan, yield_now=yield_now)
    checkpoint, asked[0] = preempted.value.checkpoint, 100
    resumed = full_stage(blurred[None], info, truth[None, None], plan=plan, yield_now=yield_now, resume=checkpoint)
    assert list(checkpoint.arrays["blur"]) == [0.0, 1.0, 1.0] and resumed.info["fit"][0]["width_screen"] == {}
    assert resumed.info["coherence_blur"] == whole.info["coherence_blur"] == [[0.0, 1.0, 1.0]]
    assert np.allclose(resumed.phase, whole.phase, atol=1e-4) and resumed.chi == pytest.approx(whole.chi, rel=1e-5)


def test_a_full_grid_stage_that_yields_in_its_polish_resumes_with_the_same_answer(tmp_path):
    """The polish on every measured voxel yields too (on scan 54 it ran ~15 s with no chance to): cut anywhere, the
    fit and its polish, each resumed from a saved checkpoint, end where one run ends."""
    counts, truth = large_scan(9951, 2, 1e8, size=48, crystal=24)
    shape = counts.shape
    info = {"region": [fullgrid.Region(shape, tuple(n // 2 for n in shape), shape).as_dict()], "chi_floor": [0.0],
            "coherence_blur": [None], "background": [None], "bragg_peak_offset": [[0, 0, 0]]}
    plan = dataclasses.replace(fullgrid.FULL_PLAN, schedule="12*ER", patience=100, grow_steps=0)
    whole = full_stage(counts[None], info, truth[None, None], plan=plan)
    asked, checkpoint, in_polish = [0], None, 0

    def yield_now():
        asked[0] += 1
        return asked[0] % 7 == 0

    while True:
        try:
            resumed = full_stage(counts[None], info, truth[None, None], plan=plan, yield_now=yield_now, resume=checkpoint)
            break
        except Preempted as preempted:
            preempted.checkpoint.save(tmp_path / "c.npz")
            checkpoint = Checkpoint.load(tmp_path / "c.npz")
            in_polish += "fitted_obj" in checkpoint.arrays
    assert in_polish >= 2  # the polish (20 iterations) was cut more than once
    assert np.array_equal(resumed.phase, whole.phase) and np.array_equal(resumed.chi, whole.chi)
    assert resumed.info["chi_free"] == whole.info["chi_free"]
    assert resumed.info["fit"][0]["iterations"] == whole.info["fit"][0]["iterations"]
    # cut at the last ask, in the stage's last steps after the polish: resumed, only those run
    asks, seen = [0], [0]

    def counting():
        asks[0] += 1
        return False

    def at_the_last():
        seen[0] += 1
        return seen[0] == asks[0]

    full_stage(counts[None], info, truth[None, None], plan=plan, yield_now=counting)

    with pytest.raises(Preempted) as cut:
        full_stage(counts[None], info, truth[None, None], plan=plan, yield_now=at_the_last)
    assert "polished" in cut.value.checkpoint.arrays
    late = full_stage(counts[None], info, truth[None, None], plan=plan, resume=cut.value.checkpoint)
    assert np.array_equal(late.phase, whole.phase) and np.array_equal(late.chi, whole.chi)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "services.cli.main", *map(str, args)], capture_output=True,
                          text=True, timeout=900)


def test_reconstruct_writes_the_full_grid_answer_and_its_chi_is_the_files(tmp_path):
    """An input larger than --refine-size: the refined stage works binned, the full-grid stage on the
    detector's grid; the root datasets are the full-grid answer and their χ against the input is the χ
    written (and printed); --no-full-grid writes the binned answer."""
    counts, _ = large_scan(9952, 4, 1e8)
    np.save(tmp_path / "in.npy", counts)
    result = cli("reconstruct", tmp_path / "in.npy", "--out", tmp_path / "out.h5", "--refine", "--refine-size", 32)
    assert result.returncode == 0, result.stderr
    with h5py.File(tmp_path / "out.h5") as f:
        obj = f["amplitude"][()] * np.exp(1j * f["phase"][()])
        stage, chi, chi_refined = f.attrs["stage"], float(np.ravel(f.attrs["chi"])[0]), float(np.ravel(f.attrs["chi_refined"])[0])
        assert f["phase_uncertainty"].shape == obj.shape and f.attrs["verdict"] in ("converged", "uncertain")
        assert list(f.attrs["refinement_grid"]) == [32, 32, 32] and "full_grid_plan" in f.attrs
        assert np.ravel(f.attrs["full_grid_support_grown_by"])[0] % fullgrid.FULL_PLAN.grow_by == 0
        blur, background = np.ravel(f.attrs["coherence_blur"]), float(np.ravel(f.attrs["background"])[0])
        screened = json.loads(f.attrs["full_grid_width_screen"])  # χ_free per σ tried, where the refined one blurred
        refined_blur = f.attrs["coherence_blur_refined"]
        assert len(refined_blur) == 3 and bool(screened) == bool(np.any(refined_blur))
        assert not screened or min(screened.values()) == screened[str([float(b) for b in blur])]  # the width fitted
    assert stage == "full" and obj.shape == counts.shape
    # through the model the file names (a partial-coherence blur and a flat background where it has them)
    assert metrics.chi(obj, counts, blur=blur if np.any(blur) else None, background=background) == pytest.approx(
        chi, rel=1e-3)
    assert chi < chi_refined and f"full: median χ {chi:.4f}" in result.stdout
    skipped = cli("reconstruct", tmp_path / "in.npy", "--out", tmp_path / "binned.h5", "--refine", "--refine-size", 32,
                  "--no-full-grid")
    assert skipped.returncode == 0, skipped.stderr
    with h5py.File(tmp_path / "binned.h5") as f:
        assert f.attrs["stage"] == "refined" and float(np.ravel(f.attrs["chi"])[0]) == pytest.approx(chi_refined, rel=1e-3)


def test_the_service_upgrades_a_binned_scan_to_the_full_grid_and_every_chi_is_against_the_frames(stack):  # noqa: F811
    """REFINE_SIZE 32 and a 64³ scan: the refined result (binned) lands, then the full-grid one on the
    input's grid; the API's χ of both is against the frames (the binned grid's χ labelled), the page's view
    and the downloads serve the full grid."""
    port = free_port()
    stack.start("ingest")
    stack.wait_worker("infer", stack.start("worker", "infer"))
    stack.wait_worker("refine", stack.start("worker", "refine", REFINE_SIZE="32"))
    stack.start("gateway", GATEWAY_PORT=str(port), REFINE_SIZE="32")
    base = f"http://127.0.0.1:{port}"
    counts, _ = large_scan(9953, 5, 1e8)
    beamline = Beamline(stack.endpoint)
    beamline.play("big", np.round(counts).astype(np.uint32))
    beamline.close()
    full = wait_for(lambda: stack.result("big", "full"), timeout=400)
    refined = stack.result("big", "refined")
    assert full["grid"] == [64, 64, 64] and refined["grid"] == [32, 32, 32] and refined["downsampled"]
    assert full["support_grown_by"] in range(0, 5 * fullgrid.FULL_PLAN.grow_by, fullgrid.FULL_PLAN.grow_by)
    wait_for(lambda: requests.get(f"{base}/health", timeout=2).ok, timeout=60)
    view = requests.get(f"{base}/api/scans/big", timeout=10).json()["results"]
    assert view["full"]["chi_on"] == view["refined"]["chi_on"] == "measured frames"
    assert view["full"]["chi"] < view["refined"]["chi"] and view["refined"]["chi_refinement_grid"] is not None
    assert view["nn"]["chi_on"] == "32×32×32 network grid"
    drawn = requests.get(f"{base}/api/scans/big/view", params={"stage": "full"}, timeout=60)
    assert drawn.ok and drawn.json()["chi"] == pytest.approx(view["full"]["chi"])
    download = requests.get(f"{base}/api/scans/big/reconstruction", params={"stage": "full", "format": "npz"},
                            timeout=60)
    with np.load(__import__("io").BytesIO(download.content)) as f:
        assert f["amplitude"].shape == (64, 64, 64) and f["phase_uncertainty"].shape == (64, 64, 64)


def test_a_running_full_grid_fit_yields_to_a_fresh_scan_and_resumes(stack):  # noqa: F811
    """The full-grid fit is the lowest-priority work: a scan that ends while it runs is refined first; the
    fit checkpoints, resumes and lands after it; its checkpoint is removed."""
    from services.beamline.sim import simulated_volume

    stack.start("ingest")
    stack.wait_worker("infer", stack.start("worker", "infer"))
    stack.wait_worker("refine", stack.start("worker", "refine", REFINE_SIZE="32", CDI_LIVE_TEST_STEP_DELAY_S="0.05"))
    counts, _ = large_scan(9954, 6, 1e8, size=96)
    beamline = Beamline(stack.endpoint)
    beamline.play("big", np.round(counts).astype(np.uint32))
    wait_for(lambda: (stack.scan("big").get("refining") or {}).get("stage") == "full", timeout=300, every=0.05)
    beamline.play("live", simulated_volume(32, 1, 13, 1e8))
    beamline.close()
    wait_for(lambda: stack.result("live", "refined"), timeout=300)
    assert stack.result("big", "full") is None  # it waited behind the fresh scan
    full = wait_for(lambda: stack.result("big", "full"), timeout=300)
    assert full["grid"] == [96, 96, 96]
    counters = {k.decode(): float(v) for k, v in stack.redis.client.hgetall(f"{stack.prefix}:metrics").items()}
    assert counters.get("jobs_preempted", 0) >= 1
    # removed once the result is stored (just after it lands: the worker may not have got there yet)
    wait_for(lambda: not any(stack.raw_folder("big").glob("*-checkpoint.npz")), timeout=30)
