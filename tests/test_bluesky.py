"""Bluesky into a running stack: a real RunEngine with ophyd.sim devices, the callback, the convergence
signal and the adaptive rocking scan (shared.wire.bluesky)."""

import uuid

import numpy as np
import pytest

from shared.physics import crystals
from tests.conftest import scan_state, wait_for

pytest.importorskip("bluesky")
from bluesky import RunEngine  # noqa: E402
from bluesky import plans as bp  # noqa: E402
from bluesky import plan_stubs as bps  # noqa: E402
from bluesky import preprocessors as bpp  # noqa: E402
from ophyd.sim import SynAxis, SynSignal  # noqa: E402

from services.beamline.sim import GEOMETRY_34IDC  # noqa: E402
from shared.wire.bluesky import CdiLiveCallback, adaptive_rocking_scan  # noqa: E402

START, STOP, POINTS = -0.08, 0.08, 32


def rocking_devices(volume: np.ndarray):
    """A rocking motor and an area detector showing the simulated crystal's frame at the motor's angle."""
    motor = SynAxis(name="th")

    def frame():
        k = int(round((motor.readback.get() - START) / (STOP - START) * (POINTS - 1)))
        return volume[int(np.clip(k, 0, POINTS - 1))]

    return motor, SynSignal(func=frame, name="image")


def counts(seed: int, index: int, roll: int = 0) -> np.ndarray:
    """An easy crystal as detector counts (noise-free, peak 10⁶); ``roll`` moves the Bragg peak along the frames."""
    intensity = crystals.simulated_scan(32, seed, index, index, True, (0.0, 0.0))[0]
    return np.roll(np.round(intensity / intensity.max() * 1e6), roll, axis=0).astype(np.uint32)


@pytest.fixture
def engine(service):
    RE = RunEngine({})
    callback = CdiLiveCallback(service["zmq"], "image", geometry=GEOMETRY_34IDC)
    RE.subscribe(callback)
    yield RE
    callback.close()


def test_run_engine_rocking_scan_comes_back_refined_with_its_convergence(service, engine):
    motor, image = rocking_devices(counts(7100, 0))
    scan = f"bs-{uuid.uuid4().hex[:6]}"
    engine(bp.scan([image], motor, START, STOP, POINTS, md={"cdi_live_scan": scan, "proposal_id": "2026-3-BCDI"},
                   per_step=paced_step))
    state = wait_for(lambda: (s := scan_state(service, scan)) and "refined" in s["results"] and s, timeout=240)
    assert state["state"] == "complete" and state["frames_received"] == POINTS and state["missing"] == 0
    assert state["proposal"] == "2026-3-BCDI"  # the start document's proposal_id
    assert state["geometry"]["delta_deg"] == GEOMETRY_34IDC["delta_deg"]
    assert state["converged_at_frames"] is not None and state["converged_at_frames"] < POINTS, state["convergence"]


def paced_step(detectors, step, pos_cache):
    """bluesky's own step, then a pause: frames arrive at a detector's pace, so previews keep up."""
    yield from bps.one_nd_step(detectors, step, pos_cache)
    yield from bps.sleep(0.2)


def test_an_aborted_run_ends_its_scan_as_failed(service, engine):
    motor, image = rocking_devices(counts(7100, 1))
    scan = f"bs-abort-{uuid.uuid4().hex[:6]}"

    def failing():
        def inner():
            for k in range(6):
                yield from bps.mv(motor, START + k * (STOP - START) / (POINTS - 1))
                yield from bps.trigger_and_read([image, motor])
            raise RuntimeError("the motor stalled")
        yield from bpp.run_wrapper(inner(), md={"cdi_live_scan": scan, "num_points": POINTS})

    with pytest.raises(RuntimeError, match="motor stalled"):
        engine(failing())
    state = wait_for(lambda: (s := scan_state(service, scan)) and s["state"] != "acquiring" and s, timeout=30)
    assert state["state"] == "failed" and "aborted" in state["reason"] and state["frames_received"] == 6


def test_adaptive_scan_stops_early_on_an_easy_crystal_but_not_when_the_last_frames_carry_signal(service, engine):
    easy, late = f"ad-easy-{uuid.uuid4().hex[:6]}", f"ad-late-{uuid.uuid4().hex[:6]}"
    for scan, roll in ((easy, 0), (late, 8)):  # late: the Bragg peak at frame 24 of 32, its tail still to come
        motor, image = rocking_devices(counts(7100, 0, roll=roll))
        # a dwell at which a loaded 2-core machine's previews keep up (at 0.2 s the verdict once came after frame 31)
        engine(adaptive_rocking_scan(image, motor, START, STOP, POINTS, gateway=service["base"], scan=scan, dwell=0.5))
    done = {scan: wait_for(lambda scan=scan: (s := scan_state(service, scan)) and s["state"] != "acquiring" and s,
                           timeout=60) for scan in (easy, late)}
    assert done[easy]["converged_at_frames"] is not None
    assert done[easy]["state"] == "complete" and done[easy]["frames_received"] < POINTS  # stopped before the end
    assert done[late]["frames_received"] == POINTS and done[late]["converged_at_frames"] is None
    refined = wait_for(lambda: (s := scan_state(service, easy)) and "refined" in s["results"] and s, timeout=240)
    assert refined["missing"] == POINTS - refined["frames_received"]
