"""ER/HIO: schedule notation, recovery of a known crystal, parity with plain NumPy."""

import sys
from pathlib import Path

import numpy as np
import pytest

from shared.physics.errors import InputError
from shared.physics import crystals, fourier, metrics, phasing

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.naive_erhio import naive_phase_retrieve  # noqa: E402


def test_paper_schedule_is_620_iterations():
    steps = phasing.parse_schedule(phasing.PAPER_SCHEDULE)
    assert sum(n for _, n in steps) == 620
    assert steps[:2] == [("ER", 20), ("HIO", 180)] and steps[-1] == ("ER", 20)
    assert phasing.parse_schedule("HIO**5 + 2*ER") == [("HIO", 5), ("ER", 2)]


@pytest.mark.parametrize("bad", ["", "ER+", "3*FOO", "1.5*ER", "0*ER", "__import__('os')"])
def test_bad_schedules_are_rejected(bad):
    with pytest.raises(InputError):
        phasing.parse_schedule(bad)


def simulated(count, seed):
    rng = np.random.default_rng(seed)
    objs = [fourier.make_object(*crystals.random_crystal(32, rng, max_strain=2e-3)[:2]) for _ in range(count)]
    return objs, np.stack([fourier.intensity(o) for o in objs])


def test_recovers_crystals_at_least_as_well_as_plain_numpy():
    objs, intensity = simulated(3, 11)
    ours, _, chi = phasing.phase_retrieve(intensity, starts=2, seed=1)
    our_err = [metrics.errors(metrics.centre_object(o), t) for o, t in zip(ours, objs)]
    naive_err = [metrics.errors(metrics.centre_object(naive_phase_retrieve(i, seed=1)), t)
                 for i, t in zip(intensity, objs)]
    ours_median = np.median([e["amplitude"] + e["phase"] for e in our_err])
    naive_median = np.median([e["amplitude"] + e["phase"] for e in naive_err])
    assert np.median(chi) < 0.05
    assert min(e["amplitude"] for e in our_err) < 0.1 and min(e["phase"] for e in our_err) < 0.1
    assert ours_median <= naive_median * 1.05 + 0.01


def test_starting_from_the_truth_stays_there():
    objs, intensity = simulated(1, 5)
    result, _, chi = phasing.phase_retrieve(intensity, "20*ER", start=np.stack(objs))
    assert chi[0] < 0.02
    assert metrics.errors(result[0], objs[0])["phase"] < 0.05


def test_uniform_density_keeps_the_phase_and_the_support_and_flattens_the_amplitude():
    """A textured crystal restarts as a crystal of one density: its mean amplitude above the threshold, zero
    below, the phase untouched where it is kept."""
    rng = np.random.default_rng(3)
    amplitude, phase, _ = crystals.random_crystal(32, rng, max_strain=5e-3)
    textured = (amplitude * rng.uniform(0.6, 1.0, amplitude.shape) * np.exp(1j * phase)).astype(np.complex64)
    restart, support = phasing.uniform_density(textured[None], 0.3)
    inside = np.abs(textured) > 0.3 * np.abs(textured).max()
    assert np.array_equal(support[0], inside)
    assert np.allclose(np.abs(restart[0][inside]), np.abs(textured)[inside].mean(), rtol=1e-5)
    assert not np.abs(restart[0][~inside]).any()
    assert np.allclose(np.angle(restart[0][inside] * np.conj(textured[inside])), 0, atol=1e-5)


def test_the_refined_plan_keeps_uniform_density_restarts_where_the_withheld_voxels_prefer_them():
    """On photon-limited scans (10⁶ photons) the flatten step's restarts predict the withheld voxels better
    than the searched answers on most crystals (docs/BENCHMARKS.md, "Twenty-fifth session"), and the record
    says which start each answer came from."""
    from shared.solver.plans import REFINE_PLAN, converge

    scans = [crystals.simulated_scan(32, 4243, i, i, True, (1e6, 1e6)) for i in range(4)]
    intensity = np.stack([np.round(s[0]) for s in scans]).astype(np.float32)
    start = np.stack([np.abs(fourier.make_object(s[1], s[2])) for s in scans]).astype(np.complex64)
    assert REFINE_PLAN.flatten and "uniform-density restarts" in REFINE_PLAN.describe()
    result = converge(intensity, start, plan=REFINE_PLAN, counting=[True] * 4)
    assert any("flattened at" in name for name in result.start), result.start


def test_the_flatten_step_is_left_out_on_grids_longer_than_its_limit():
    """At 128³ the step cost more than it gained (docs/BENCHMARKS.md, "Twenty-sixth session"): on a grid longer
    than ``flatten_max_grid`` per axis no run is restarted, and the plan says where the step runs."""
    import dataclasses

    from shared.solver.plans import REFINE_PLAN, converge

    scans = [crystals.simulated_scan(32, 4243, i, i, True, (1e6, 1e6)) for i in range(2)]
    intensity = np.stack([np.round(s[0]) for s in scans]).astype(np.float32)
    start = np.stack([np.abs(fourier.make_object(s[1], s[2])) for s in scans]).astype(np.complex64)
    assert REFINE_PLAN.flatten_max_grid >= 32 and f"grids ≤ {REFINE_PLAN.flatten_max_grid}³" in REFINE_PLAN.describe()
    short = dataclasses.replace(REFINE_PLAN, flatten_max_grid=16)
    result = converge(intensity, start, plan=short, counting=[True] * 2)
    assert not any("flattened" in name for name in result.start), result.start
    assert "flatten" not in result.seconds


def test_oss_filter_narrows_from_almost_none_to_almost_flat():
    """OSS's Fourier filter: its first stage keeps nearly every frequency, its last keeps the mean alone."""
    first, last = phasing.oss_filter((32, 32, 32), 0), phasing.oss_filter((32, 32, 32), phasing.OSS_STAGES - 1)
    assert first[0, 0, 0] == last[0, 0, 0] == 1
    assert first[16, 0, 0] > 0.85 and last[1, 0, 0] < 1e-6
    assert np.allclose(first, first[::-1, ::-1, ::-1][np.ix_(*[np.roll(np.arange(32), 1)] * 3)])  # k ↔ −k


def test_oss_keeps_the_projection_inside_the_support_and_smooths_outside():
    objs, intensity = simulated(1, 7)
    magnitude = np.fft.ifftshift(np.sqrt(intensity), axes=(1, 2, 3)).astype(np.float32)
    rng = np.random.default_rng(0)
    support = phasing.box_support(magnitude.shape)
    obj = (support * np.exp(1j * rng.uniform(-np.pi, np.pi, support.shape))).astype(np.complex64)
    hio = phasing.PhasingState(magnitude, obj.copy(), support)
    oss = phasing.PhasingState(magnitude, obj.copy(), support, smoothing=phasing.oss_filter((32, 32, 32), 8))
    phasing.hybrid_input_output(hio)
    phasing.oversampling_smoothness(oss)
    assert np.allclose(oss.obj[support], hio.obj[support], atol=1e-5)
    outside = lambda o: np.abs(np.diff(o * ~support, axis=1)).mean()  # noqa: E731
    assert outside(oss.obj) < 0.5 * outside(hio.obj)


def test_a_schedule_runs_oss_through_every_stage_of_its_filter():
    objs, intensity = simulated(1, 7)
    result, _, chi = phasing.phase_retrieve(intensity, "20*ER+40*OSS+20*ER", start=np.stack(objs))
    assert chi[0] < 0.05 and metrics.errors(result[0], objs[0])["phase"] < 0.1
    run, state = phasing.ScheduleRun("5*OSS+5*ER"), phasing.PhasingState(
        np.ones((1, 8, 8, 8), np.float32), np.ones((1, 8, 8, 8), np.complex64), np.ones((1, 8, 8, 8), bool))
    stages = []
    for _ in range(5):
        run.advance(state, 1)
        stages.append(run.oss_stage)
    assert stages == [0, 2, 4, 6, 8]


@pytest.mark.parametrize("measured", [False, True])
@pytest.mark.parametrize("blur", [False, True])
@pytest.mark.parametrize("background", [None, "all", "faint"])
def test_fused_iterations_agree_with_numpy(monkeypatch, measured, blur, background):
    """The fused loops (``kernels``, numba) are the NumPy iteration in one pass: the same estimate, χ and background
    to float32 rounding, with every part of the model (frames left free, a blur, a flat background)."""
    from shared.physics import coherence, kernels

    if kernels.numba is None:
        pytest.skip("numba is not installed: NumPy runs every iteration")
    rng = np.random.default_rng(3)
    shape = (2, 16, 16, 16)
    magnitude = rng.random(shape, dtype=np.float32)
    obj = (rng.random(shape) * np.exp(2j * np.pi * rng.random(shape))).astype(np.complex64)
    obj *= np.sqrt((magnitude**2).sum() / ((np.abs(obj) ** 2).sum() * 16**3))  # |F| on the data's scale
    support, free, faint = rng.random(shape) < 0.3, rng.random(shape) < 0.9, rng.random(shape) < 0.5
    runs = {}
    for fused in ("0", "1"):
        monkeypatch.setenv("CDI_LIVE_KERNELS", fused)
        state = phasing.PhasingState(
            magnitude, obj.copy(), support, free if measured else None,
            coherence=coherence.of(shape[1:], [[0.5, 0.8, 1.0], [1.0, 0.6, 0.4]]) if blur else None,
            background=np.array([0.05, 0.2], np.float32) if background else None,
            faint=faint if background == "faint" else None)
        for step in (phasing.hybrid_input_output, phasing.hybrid_input_output, phasing.error_reduction):
            step(state)
        runs[fused] = state
    plain, fused = runs["0"], runs["1"]
    assert np.allclose(fused.obj, plain.obj, rtol=0, atol=1e-5 * np.abs(plain.obj).max())
    assert np.allclose(fused.chi, plain.chi, rtol=1e-5)
    if background:
        assert np.allclose(fused.background, plain.background, rtol=1e-4)


def test_kernels_are_on_by_default_and_off_by_their_setting(monkeypatch):
    from shared.physics import kernels

    monkeypatch.delenv("CDI_LIVE_KERNELS", raising=False)
    assert kernels.available() == (kernels.numba is not None)
    monkeypatch.setenv("CDI_LIVE_KERNELS", "0")
    assert not kernels.available()
