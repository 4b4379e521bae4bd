"""Detector frames: flagged (dtype maximum), saturated and masked pixels are never read as photons."""

import uuid

import h5py
import numpy as np
import pytest

from services.beamline.sim import Beamline, DectrisDetector, detector_flaws, simulated_volume
from shared.wire import realdata
from shared.wire import detector
from shared.nn.inference import Predictor
from shared.physics import crystals, fourier, metrics
from shared.solver.stages import reconstruct
from shared.state.settings import Settings
from shared.state.store import Store
from tests.conftest import free_port, ingest_running, require_redis, wait_for


def test_flags_saturation_and_masks_are_invalid_and_holes_are_filled_from_neighbours():
    frames = np.full((3, 8, 8), 5, np.uint32)
    frames[:, :, 3] = np.iinfo(np.uint32).max  # a module gap
    frames[1, 2, 2] = 900  # saturated
    mask = np.zeros((8, 8), np.uint8)
    mask[6, 6] = 1  # a dead pixel from the mask
    bad = detector.invalid(frames, saturation=800, pixel_mask=mask)
    assert bad[:, :, 3].all() and bad[1, 2, 2] and bad[:, 6, 6].all() and bad.sum() == 3 * 8 + 1 + 3
    assert detector.flag_value(np.uint16) == 65535 and detector.flag_value(np.float32) is None
    ramp = np.broadcast_to(np.arange(16, dtype=np.float32), (4, 16, 16)).copy()  # linear along the gap's normal
    holes = np.zeros(ramp.shape, bool)
    holes[:, :, 7:9] = True
    filled = detector.inpaint(ramp, holes)
    assert np.allclose(filled[:, 4:12, 7:9], ramp[:, 4:12, 7:9], atol=1.0) and np.array_equal(filled[~holes], ramp[~holes])
    on_gap = np.zeros((5, 9, 9), bool)
    on_gap[:, :, 3:6] = True
    assert detector.peak_flags(on_gap, None, (2, 4, 4)) == ["peak on a gap"]
    assert detector.peak_flags(np.zeros_like(on_gap), on_gap, (2, 4, 4)) == ["saturated peak"]
    assert detector.peak_flags(on_gap, None, (2, 4, 8)) == []


@pytest.fixture(scope="module")
def predictor():
    return Predictor()


def test_flagged_gap_and_dead_pixels_are_left_free_and_not_trusted(predictor):
    """Unseen crystals (seed 4243) with a two-column module gap beside the peak and dead pixels at 2³²−1, the flags
    found from the dtype alone and left free: per crystal the flags cost less than half of what taking those
    pixels as zero counts costs, and the answer is never called converged, since a quarter of its signal falls
    where nothing was counted (``trust.unmeasured_signal``). Left free, the flags cost a median 0.021 rad over 48
    crystals (``benchmarks/detector_flags.py``, seeds 4243–4248; quartiles 0.006–0.047): too spread to bound on
    four, where a median below 0.03 held on one machine's rounding and not on another's. As zeros: 0.20–0.55 rad
    on 8 crystals (seeds 4243 and 4249)."""
    for index in range(4):
        intensity, amplitude, phase, _, _ = crystals.simulated_scan(32, 4243, index, index, True, (1e6, 1e6))
        truth = fourier.make_object(amplitude, phase)
        counts = np.round(intensity).astype(np.uint32)
        peak = int(np.unravel_index(counts.argmax(), counts.shape)[2])
        flagged, _ = detector_flaws(counts, [peak + 1, peak + 2], [(3, 4), (20, 9), (28, 30), (9, 17), (15, 2)])
        bad = detector.invalid(flagged)
        as_sent = np.where(bad, 0, flagged).astype(np.float32)[None]
        answers = {name: reconstruct(frames, predictor, refine=True, measured=measured)["refined"]
                   for name, (frames, measured) in {"clean": (counts.astype(np.float32)[None], None),
                                                    "left free": (as_sent, ~bad[None]),
                                                    "as zeros": (as_sent, None)}.items()}
        error = {name: metrics.errors(stage.amplitude[0] * np.exp(1j * stage.phase[0]), truth)["phase_unweighted"]
                 for name, stage in answers.items()}
        assert error["left free"] - error["clean"] < 0.5 * (error["as zeros"] - error["clean"]), error
        free = answers["left free"].info
        assert free["unmeasured_signal"][0] > 0.1 and free["verdict"][0] == "uncertain", free["unmeasured_signal"]
        assert free["verdict_reason"][0] == "photons" and answers["clean"].info["unmeasured_signal"][0] == 0


def finished(store, scan, key="state", value="complete"):
    return wait_for(lambda: (s := store.scan(scan)) and s.get(key) == value and s, timeout=60, every=0.05)


def final_job_queued(store, scan) -> bool:
    return any(f[b"scan"] == scan.encode() and f[b"final"] == b"1" for _, f in store.redis.xrange(store.keys.infer_jobs))


def test_pixel_masks_over_zeromq_native_and_dectris_v2(tmp_path):
    """Real ZeroMQ and CBOR: a gap through the Bragg peak is flagged on the record; the mask from the
    start message (native part, DECTRIS v2 tag-40 bslz4 array) is stored beside frames kept as sent,
    bit-identical between the two protocols; flags without any mask still give a final input."""
    require_redis()
    prefix = f"det{uuid.uuid4().hex[:6]}"
    store = Store(Settings(key_prefix=prefix))
    clean = simulated_volume(32, 3, 0, 1e7)
    peak = int(clean.sum(axis=(0, 1)).argmax())
    through, mask = detector_flaws(clean, [peak - 1, peak, peak + 1], [(2, 2)])
    beside, _ = detector_flaws(clean, [peak + 3, peak + 4], [])
    try:
        native_at = f"tcp://127.0.0.1:{free_port()}"
        settings = Settings(key_prefix=prefix, data_dir=tmp_path / "native", ingest_bind=native_at)

        def send_native():
            beamline = Beamline(native_at)
            beamline.play("through", through, encoding="bslz4", pixel_mask=mask)
            beamline.play("beside", beside)  # flags, no mask: found from the dtype's maximum
            beamline.send({"type": "start", "scan": "badmask", "frames": 2, "shape": [32, 32], "dtype": "uint32",
                           "pixel_mask": {"encoding": "lz4"}}, b"not lz4")
            beamline.close()
            wait_for(lambda: final_job_queued(store, "beside"), timeout=60, every=0.05)
            return finished(store, "through", "flags", ["peak on a gap"]), store.scan("beside")

        through_state, beside_state = ingest_running(settings, send_native)
        assert through_state["detector"]["masked_pixels"] == int(mask.astype(bool).sum())
        assert through_state["detector"]["source"] == "beamline-sim"
        assert not beside_state.get("flags") and beside_state["detector"]["source"] == "dtype maximum only"
        assert sum(v for k, v in store.counters().items() if k.startswith("rejected:pixel mask does not decode")) == 1
        detector_at = f"tcp://127.0.0.1:{free_port()}"
        source = DectrisDetector(detector_at, version=2)
        v2_settings = Settings(key_prefix=prefix, data_dir=tmp_path / "v2")

        def send_v2():
            source.play(7, through, encoding="bslz4", pixel_mask=mask, saturation=5e6)
            return finished(store, "series-7", "flags", ["peak on a gap"])

        v2 = ingest_running(v2_settings, send_v2, dectris=detector_at)
        source.close(linger_ms=0)
        assert v2["detector"]["source"].startswith("DECTRIS stream v2 start") and v2["detector"]["saturation_value"] == 5e6
        with h5py.File(v2["raw_file"]) as a, h5py.File(through_state["raw_file"]) as b:
            for k in range(32):
                assert a["frames"].id.read_direct_chunk((k, 0, 0)) == b["frames"].id.read_direct_chunk((k, 0, 0))
            assert np.array_equal(a["frames"][()], through)  # as sent, flags included
            assert np.array_equal(a["pixel_mask"][()], mask) and np.array_equal(b["pixel_mask"][()], mask)
    finally:
        for key in store.redis.scan_iter(f"{prefix}:*"):
            store.redis.delete(key)


def test_dark_and_flat_field_are_applied_before_the_network_and_refinement(tmp_path):
    """Frames as a detector with a dark current and an uneven gain records them: with --dark and --flat the
    refined phase error is within 0.03 rad of the true counts' (seed 4244); the floor comes from the frames."""
    intensity, amplitude, phase, _, _ = crystals.simulated_scan(32, 4244, 0, 0, True, (1e7, 1e7))
    truth = fourier.make_object(amplitude, phase)
    counts = np.round(intensity)
    rng = np.random.default_rng(1)
    gain = rng.uniform(0.8, 1.25, counts.shape[1:]).astype(np.float32)  # the flat field multiplies it back
    dark = np.full(counts.shape[1:], 3.0, np.float32)
    recorded = np.round(counts / gain + dark).astype(np.uint32)
    np.save(tmp_path / "clean.npy", counts.astype(np.uint32))
    np.save(tmp_path / "recorded.npy", recorded)
    np.save(tmp_path / "dark.npy", dark)
    np.save(tmp_path / "flat.npy", gain)
    from tests.test_cli import cli

    errors = {}
    for name, extra in (("clean", []), ("recorded", ["--dark", tmp_path / "dark.npy", "--flat", tmp_path / "flat.npy"])):
        done = cli("reconstruct", tmp_path / f"{name}.npy", "--refine", "--out", tmp_path / f"{name}.h5", *extra)
        assert done.returncode == 0, done.stderr
        with h5py.File(tmp_path / f"{name}.h5") as f:
            obj = f["amplitude"][()] * np.exp(1j * f["phase"][()])
            errors[name] = metrics.errors(obj, truth)["phase_unweighted"]
            assert f.attrs["chi_floor"] > 0  # from the frames as measured, not the corrected floats
            assert f.attrs["verdict_detail"] in done.stdout  # the line says why, as the file does
    assert errors["recorded"] < errors["clean"] + 0.03, errors
    result = cli("reconstruct", tmp_path / "clean.npy", "--out", tmp_path / "x.h5", "--flat", tmp_path / "dark.npy",
                 "--dark", tmp_path / "missing.npy")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    both = cli("reconstruct", tmp_path / "clean.npy", "--out", tmp_path / "x.h5", "--flat", tmp_path / "flat.npy",
               "--whitefield", tmp_path / "flat.npy")
    assert both.returncode == 2 and "not both" in both.stderr and len(both.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("calibration", ["flat", "whitefield"])
def test_the_ingest_keeps_the_configured_dark_and_flat_beside_frames_as_sent(tmp_path, calibration):
    """DARK_FILE and FLAT_FIELD_FILE are stored beside the frames as sent; a WHITEFIELD_FILE instead is stored as
    the flat field it gives (``detector.flat_from_whitefield``), its file named in the record."""
    require_redis()
    dark, flat = np.full((32, 32), 2.0, np.float32), np.ones((32, 32), np.float32)
    flat[0, :] = 0  # a row of zero gain: masked
    np.save(tmp_path / "dark.npy", dark)
    np.save(tmp_path / "flat.npy", flat)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    white = np.random.default_rng(2).uniform(9000, 20000, (32, 32)).astype(np.float32)
    np.save(tmp_path / "white.npy", white)
    given = {"flat_field_file": tmp_path / "flat.npy"} if calibration == "flat" else {"whitefield_file": tmp_path / "white.npy"}
    settings = Settings(key_prefix=f"df{uuid.uuid4().hex[:6]}", data_dir=tmp_path / "live", ingest_bind=endpoint,
                        dark_file=tmp_path / "dark.npy", **given)
    store = Store(settings)
    volume = simulated_volume(32, 6, 0, 1e7)

    def send():
        beamline = Beamline(endpoint)
        beamline.play("corrected", volume)
        beamline.close()
        return finished(store, "corrected")

    try:
        state = ingest_running(settings, send)
        expected = flat if calibration == "flat" else detector.flat_from_whitefield(white)
        assert state["detector"]["dark"].endswith("dark.npy")
        assert state["detector"]["flat_field"].endswith("flat.npy" if calibration == "flat" else "white.npy (whitefield)")
        with h5py.File(state["raw_file"]) as f:
            assert np.array_equal(f["frames"][()], volume)  # as sent
            assert np.array_equal(f["dark"][()], dark) and np.array_equal(f["flat_field"][()], expected)
    finally:
        for key in store.redis.scan_iter(f"{settings.key_prefix}:*"):
            store.redis.delete(key)


def test_a_whitefield_becomes_the_flat_field_that_evens_its_own_image():
    """A whitefield (counts under uniform light) gives the gain mean/whitefield: corrected, the whitefield itself is
    flat at its mean; a pixel far below the mean (dead, on a seam) is masked (gain 0)."""
    from shared.wire.detector import corrected, flat_from_whitefield

    rng = np.random.default_rng(4)
    white = rng.uniform(8000, 20000, (16, 16))
    white[3, 5] = 10  # dead
    flat = flat_from_whitefield(white)
    assert flat[3, 5] == 0 and np.count_nonzero(flat == 0) == 1
    evened = corrected(white[None], None, flat)[0]
    good = flat > 0
    assert np.allclose(evened[good], white[good].mean(), rtol=1e-5)


def test_the_shipped_34idc_calibration_fits_scan_54s_frames():
    """The beamline's whitefield, cut to where scan 54's frames sit on its 512² detector (rows and columns
    0–255), evens their pixels: divided by it the summed detector image is smoother around the Bragg peak, and
    it is not with the cut transposed. The bad-pixel map holds the 13 pixels the beamline marked."""
    from scipy import ndimage

    from tests.conftest import REPO, real_file

    real_file(realdata.scan54_file())
    frames = realdata.scan54_frames(np.float64)
    calibration = REPO / "deploy" / "calibration" / "aps-34idc-tim2"
    flat = detector.flat_from_whitefield(np.load(calibration / "whitefield.npy"))
    bad = np.load(calibration / "bad_pixels.npy")
    assert flat.shape == bad.shape == frames.shape[1:] and int(bad.sum()) == 13
    shipped_flat, pixels = detector.shipped_calibration()  # as the evaluation, the demo and benchmarks read it
    assert np.array_equal(shipped_flat, flat) and np.array_equal(pixels, (flat > 0) & (bad == 0))
    assert detector.shipped_calibration("no-such-detector") is None
    summed = frames.sum(axis=0)
    judged = (summed > 500) & (flat > 0) & (flat.T > 0) & (bad == 0)

    def roughness(image):
        return float(np.std(image[judged] / ndimage.median_filter(image, 5)[judged]))

    raw, evened, transposed = roughness(summed), roughness(summed * flat), roughness(summed * flat.T)
    assert evened < 0.9 * raw and transposed > raw, (raw, evened, transposed)


def test_frames_past_the_last_measured_one_stay_zero_and_the_peak_is_found_on_the_measured_frames():
    """A scan that lacks its last frames (aborted, or lost at its end): frames past the last measured one are not
    inpainted (a plateau of the frames beside the peak, which the network never saw and which moved the region's
    Bragg peak 6 frames on); a gap within the measured frames still is."""
    from shared.solver.stages import fill_unmeasured, signal_regions

    rng = np.random.default_rng(2)
    intensity = fourier.intensity(fourier.make_object(*crystals.random_crystal(32, rng, max_strain=2e-3)[:2]))
    measured = np.ones(intensity.shape, bool)
    measured[19:] = False  # 60 % of the frames
    measured[:, 15, :] = False  # a detector gap through the peak
    filled = fill_unmeasured(intensity[None] * measured, measured[None])[0]
    assert not filled[19:].any()
    gap = filled[:19, 15, :]
    assert (gap > 0).all() and np.corrcoef(gap.ravel(), intensity[:19, 15, :].ravel())[0, 1] > 0.9
    peak = signal_regions(filled[None], measured[None])[0].peak
    assert abs(peak[0] - 16) <= 1, peak
