"""areaDetector frames over EPICS pvAccess, against a real pvapy server on loopback (never a mock)."""

import argparse
import json
import threading
import time
import uuid
from pathlib import Path

import h5py
import numpy as np
import pytest
import redis

pytest.importorskip("pvaccess", reason="pvapy is installed by `make install`")

from services.beamline.sim import Beamline, PvaDetector, simulated_volume  # noqa: E402
from services.ingest.pva import PvaTranslator, Rejected, attributes_of, parse_attribute_map  # noqa: E402
from services.ingest.service import serve  # noqa: E402
from shared.wire import realdata  # noqa: E402
from shared.state.settings import Settings  # noqa: E402
from shared.state.store import Store  # noqa: E402
from tests.conftest import free_port, require_redis, scan_state, wait_for  # noqa: E402


class PvaIngest:
    """An ingest subscribed to ``channel`` (and bound on a free native port), in a thread."""

    def __init__(self, prefix, data_dir, channel, **pva):
        self.settings = Settings(key_prefix=prefix, data_dir=data_dir, ingest_bind=f"tcp://127.0.0.1:{free_port()}")
        self.store = Store(self.settings)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=serve, args=(self.settings, self.stop),
                                       kwargs={"pva": {"channel": channel, **pva}})
        self.thread.start()

    def scan(self, name, state="complete", timeout=60):
        return wait_for(lambda: (s := self.store.scan(name)) and s.get("state") == state and s, timeout=timeout,
                        every=0.05)

    def close(self):
        self.stop.set()
        self.thread.join()


@pytest.fixture
def private(tmp_path):
    require_redis()
    prefix = f"pva{uuid.uuid4().hex[:6]}"
    yield prefix, tmp_path
    for key in redis.Redis().scan_iter(f"{prefix}:*"):
        redis.Redis().delete(key)


def channel() -> str:
    return f"cdi:test:{uuid.uuid4().hex[:8]}:image"


def test_translator_reads_attributes_and_cuts_unattributed_frames_by_count():
    assert parse_attribute_map("scan=SCAN,index=NPT")["index"] == "NPT"
    with pytest.raises(ValueError):
        parse_attribute_map("scan")
    update = {"attribute": [{"name": "scan", "value": ({"value": "s1"}, {})}]}
    assert attributes_of(update) == {"scan": "s1"}
    cut = PvaTranslator(frames_per_scan=3)
    frame = {"dimension": [{"size": 4}, {"size": 2}], "value": ({"ushortValue": np.zeros(8, np.uint16)},),
             "codec": {"name": ""}}
    scans = []
    for unique in (10, 11, 12, 14, 15, 16):  # 13 lost on the way
        for message in cut.translate({**frame, "uniqueId": unique}):
            scans.append(message[0])
    text = b" ".join(scans)
    assert text.count(b'"type": "start"') == 3 and text.count(b'"type": "end"') == 2  # 16 opens pva-2
    assert b'"scan": "pva-0", "index": 2' in text and b'"scan": "pva-1", "index": 1' in text and cut.dropped == 1
    assert b'"scan": "pva-1", "index": 0' not in text  # uniqueId 13: missing, not shifted
    with pytest.raises(Rejected, match="scan attributes"):
        PvaTranslator().translate({**frame, "uniqueId": 1})


def test_a_scan_over_pva_is_bit_identical_to_native_and_comes_back_refined(service):
    """Through the running stack's workers: the PVA scan (bslz4, kept compressed) and the same scan sent
    natively (bslz4) give the same HDF5 chunks; the PVA one is refined."""
    name = channel()
    volume = simulated_volume(32, 21, 0, 1e8)
    detector = PvaDetector(name)
    ingest = PvaIngest(service["prefix"], service["data_dir"], name)
    try:
        time.sleep(2)  # the monitor finds the server
        scan = f"pva-{uuid.uuid4().hex[:6]}"
        detector.play(scan, volume, encoding="bslz4", rate_hz=200)
        over_pva = ingest.scan(scan)
        native = f"native-{uuid.uuid4().hex[:6]}"
        beamline = Beamline(service["zmq"])
        beamline.play(native, volume, encoding="bslz4")
        beamline.close()
        native_state = wait_for(lambda: (s := scan_state(service, native)) and s["state"] == "complete" and s)
        with h5py.File(over_pva["raw_file"]) as a, h5py.File(service["data_dir"] + f"/{native}/frames.h5") as b:
            for k in range(32):
                assert a["frames"].id.read_direct_chunk((k, 0, 0)) == b["frames"].id.read_direct_chunk((k, 0, 0))
            assert np.array_equal(a["frames"][()], volume) and a["received"][()].all()
        assert native_state["frames_received"] == 32
        wait_for(lambda: "refined" in scan_state(service, scan)["results"], timeout=180)
    finally:
        ingest.close()
        detector.close(0)


def test_dropped_frames_compressed_frames_restarts_and_bad_frames(private):
    prefix, folder = private
    name = channel()
    volume = simulated_volume(32, 22, 0, 1e8)
    detector = PvaDetector(name)
    ingest = PvaIngest(prefix, folder, name)
    try:
        time.sleep(2)
        detector.play("dropped", volume, skip={5, 6})  # never published: their uniqueIds are used up
        state = ingest.scan("dropped")
        assert state["missing"] == 2 and state["frames_received"] == 30
        with h5py.File(state["raw_file"]) as f:
            received = f["received"][()]
            assert not received[5] and not received[6] and np.array_equal(f["frames"][7], volume[7])  # not shifted
        for encoding in ("lz4", "bslz4"):
            detector.play(encoding, volume, encoding=encoding)
            with h5py.File(ingest.scan(encoding)["raw_file"]) as f:
                assert np.array_equal(f["frames"][()], volume)
        detector.play("no-attributes", volume[:2], attributes=False)
        wait_for(lambda: any("scan attributes" in k for k in ingest.store.counters()), timeout=30)
        # the server goes away mid-scan and comes back: the monitor reconnects, the scan completes
        for k in range(16):
            detector.server.update(name, detector.ntndarray(volume[k], attributes={"scan": "restart", "frames": 32,
                                                                                    "index": k}))
        wait_for(lambda: (ingest.store.scan("restart") or {}).get("frames_received") == 16, timeout=30)
        detector.server.stop()  # the server goes down (its clients are disconnected) and comes back
        time.sleep(1)
        detector.server.start()
        time.sleep(3)  # pvAccess finds it again
        for k in range(16, 32):
            detector.server.update(name, detector.ntndarray(volume[k], attributes={"scan": "restart", "frames": 32,
                                                                                    "index": k}))
        state = ingest.scan("restart")
        assert state["frames_received"] == 32
        wait_for(lambda: ingest.store.counters().get("pva_disconnects", 0) >= 1, timeout=10)
        with h5py.File(state["raw_file"]) as f:
            assert np.array_equal(f["frames"][()], volume)
    finally:
        ingest.close()
        detector.close(0)


def test_pvapy_own_area_detector_simulator_with_spec_geometry(private, tmp_path):
    """pvapy's `pvapy-ad-sim-server` streams frames from a .npy as an areaDetector would; the ingest cuts them
    into scans of N and takes their geometry from the recorded scan's SPEC file (`--spec`): every scan is
    accepted (the SPEC geometry fits the start message) and carries that geometry."""
    import os
    import shutil
    import subprocess

    from services.cli.options import read_geometry
    from tests.conftest import real_file

    spec = real_file(realdata.scan54_spec())
    server = shutil.which("pvapy-ad-sim-server") or str(Path(__file__).parents[1] / ".venv/bin/pvapy-ad-sim-server")
    prefix, folder = private
    name = channel()
    np.save(tmp_path / "frames.npy", simulated_volume(32, 23, 0, 1e7).astype(np.uint16))
    geometry = read_geometry(argparse.Namespace(geometry=None, spec=spec, scan=54))
    env = {**os.environ, "EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1", "EPICS_PVA_ADDR_LIST": "127.0.0.1",
           "EPICS_PVA_AUTO_ADDR_LIST": "NO"}
    ingest = PvaIngest(prefix, folder, name, frames_per_scan=32, geometry=geometry)
    simulator = subprocess.Popen([server, "-if", str(tmp_path / "frames.npy"), "-cn", name, "-fps", "100",
                                  "-rt", "8", "-std", "1", "-shd", "0", "-rp", "0", "-dc"], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        state = wait_for(lambda: next((s for s in map(ingest.store.scan, ("pva-1", "pva-2", "pva-3"))
                                       if s and s.get("state") == "complete"), None), timeout=60, every=0.1)
        assert state["geometry"]["delta_deg"] == pytest.approx(32.174) and state["frames_received"] == 32
        assert state["geometry"]["rocking_motor"] == "th"
        assert not any(k.startswith("rejected:malformed") for k in ingest.store.counters())
    finally:
        simulator.terminate()
        simulator.wait(10)
        ingest.close()


def test_the_proposal_rides_in_an_nd_attribute():
    """The proposal NDAttribute (renamed with --pva-attributes proposal=NAME) goes into the scan's start."""
    names = parse_attribute_map("proposal=EXPERIMENT")
    translator = PvaTranslator(attributes=names, frames_per_scan=2)
    frame = {"dimension": [{"size": 4}, {"size": 2}], "value": ({"ushortValue": np.zeros(8, np.uint16)},),
             "codec": {"name": ""}, "uniqueId": 1,
             "attribute": [{"name": "EXPERIMENT", "value": ({"value": "GUP-81234"}, {})}]}
    start = json.loads(translator.translate(frame)[0][0])
    assert start["type"] == "start" and start["proposal"] == "GUP-81234"
    plain = json.loads(PvaTranslator(frames_per_scan=2).translate({**frame, "attribute": []})[0][0])
    assert "proposal" not in plain  # the ingest gives it DEFAULT_PROPOSAL
