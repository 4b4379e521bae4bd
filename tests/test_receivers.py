"""Several receivers on one stream (issue 32): two `cdi-live ingest` processes share a native stream and a
DECTRIS stream; each writes its own file, frames.h5 joins them (HDF5 virtual dataset), the scan's record
is assembled from both parts, and frames, masks, missing frames and the download are what one receiver
gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import h5py
import numpy as np
import pytest
import redis
import requests

from services.beamline.sim import Beamline, DectrisDetector
from shared.wire import framefiles
from shared.physics import crystals
from shared.state.settings import Settings
from shared.state.store import Store
from tests.conftest import REPO, free_port, ingest_running, require_redis, scan_state, wait_for

FRAMES = 40


def scan_volume(seed: int) -> np.ndarray:
    """A crystal's rocking curve on a 64×80 detector, as uint32 counts."""
    intensity = crystals.simulated_scan(32, seed, 0, 0, True, (0.0, 0.0))[0]
    counts = np.round(intensity / intensity.max() * 5e4).astype(np.uint32)
    return np.pad(counts, ((4, 4), (16, 16), (24, 24)))


MASK = np.zeros((64, 80), np.uint32)
MASK[10, 11] = MASK[40:42, 60] = 1


def start_receivers(tmp_path, prefix: str, *args: str, n: int = 2) -> list[subprocess.Popen]:
    env = {**os.environ, "REDIS_URL": "redis://127.0.0.1:6379/0", "DATA_DIR": str(tmp_path), "KEY_PREFIX": prefix}
    return [subprocess.Popen([sys.executable, "-m", "services.cli.main", "ingest", *args, "--receivers", str(n),
                              "--receiver", str(k)], cwd=REPO, env=env) for k in range(n)]


def wait_for_receivers(store: Store, processes, n: int = 2) -> None:
    deadline = time.time() + 60
    while len(store.live_workers("ingest")) < n:
        assert all(p.poll() is None for p in processes), "a receiver exited while starting"
        assert time.time() < deadline, "the receivers did not start"
        time.sleep(0.1)


def stop(processes) -> None:
    for p in processes:
        p.terminate()
    for p in processes:
        p.wait(30)


def finished(store: Store, scans, timeout: float = 60) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        records = {scan: store.scan(scan) for scan in scans}
        if all(r and r["state"] != "acquiring" for r in records.values()):
            return records
        time.sleep(0.1)
    raise AssertionError(f"scans still acquiring: {records}")


def send_scans(endpoint: str, scans: dict) -> None:
    beamline = Beamline(endpoint)
    for scan, (volume, order) in scans.items():
        beamline.play(scan, volume, order=order, pixel_mask=MASK)
    beamline.close()


def comparable(record: dict) -> dict:
    keys = ("state", "frames_expected", "frames_received", "missing", "duplicates", "shape", "dtype", "proposal")
    return {**{k: record.get(k) for k in keys}, "detector": {k: v for k, v in record["detector"].items()
                                                             if k != "source"}}


@pytest.fixture
def two_receivers(tmp_path):
    require_redis()
    prefix = f"recv{uuid.uuid4().hex[:6]}"
    port = free_port()
    while True:  # receiver 1 binds the next port
        try:
            import socket
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
            break
        except OSError:
            port = free_port()
    bind = f"tcp://127.0.0.1:{port}"
    processes = start_receivers(tmp_path / "two", prefix, "--bind", bind)
    store = Store(Settings(key_prefix=prefix, data_dir=tmp_path / "two"))
    wait_for_receivers(store, processes)
    yield {"store": store, "endpoint": f"{bind},tcp://127.0.0.1:{port + 1}", "data": tmp_path / "two",
           "processes": processes}
    stop(processes)
    client = redis.Redis()
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)


def test_two_receivers_keep_every_frame_and_give_what_one_receiver_gives(two_receivers, tmp_path):
    full, gappy = (f"{name}-{uuid.uuid4().hex[:6]}" for name in ("full", "gappy"))
    volumes = {full: (scan_volume(7100), None),
               gappy: (scan_volume(7101), [k for k in range(FRAMES) if k not in (3, 17)])}
    store = two_receivers["store"]
    send_scans(two_receivers["endpoint"], volumes)
    two = finished(store, volumes)

    one_settings = Settings(ingest_bind=f"tcp://127.0.0.1:{free_port()}", data_dir=tmp_path / "one",
                            key_prefix=f"one{uuid.uuid4().hex[:6]}")
    one_store = Store(one_settings)
    one = ingest_running(one_settings, lambda: (send_scans(one_settings.ingest_bind, volumes),
                                                finished(one_store, volumes))[1])

    for scan, (volume, order) in volumes.items():
        assert comparable(two[scan]) == comparable(one[scan])
        sent = np.zeros(FRAMES, bool)
        sent[order if order is not None else slice(None)] = True
        assert two[scan]["frames_received"] == sent.sum() and two[scan]["missing"] == FRAMES - sent.sum()
        folder = two_receivers["data"] / scan
        assert sorted(p.name for p in folder.glob("frames-*.h5")) == ["frames-0.h5", "frames-1.h5"]
        with h5py.File(folder / "frames.h5") as f, h5py.File(one[scan]["raw_file"]) as g:
            assert f["frames"].is_virtual and two[scan]["raw_file"] == str(folder / "frames.h5")
            assert np.array_equal(f["frames"][()], np.where(sent[:, None, None], volume, 0))  # bit-identical
            assert np.array_equal(f["received"][()], sent)
            for name in ("frames", "received", "pixel_mask"):
                assert np.array_equal(f[name][()], g[name][()]), name
            assert f.attrs["start"] == g.attrs["start"]
        with h5py.File(folder / "frames-0.h5") as a, h5py.File(folder / "frames-1.h5") as b:
            split = a["received"][()].sum(), b["received"][()].sum()
            assert min(split) > 0 and sum(split) == sent.sum()  # ZeroMQ dealt the frames between the two
        whole = framefiles.self_contained(folder / "frames.h5")  # the download
        with h5py.File(whole) as f:
            assert not f["frames"].is_virtual and np.array_equal(f["frames"][()], np.where(sent[:, None, None],
                                                                                           volume, 0))
    finals = {f[b"scan"].decode(): int(f[b"frames_used"]) for _, f in store.redis.xrange(store.keys.infer_jobs)
              if f[b"final"] == b"1"}
    assert finals == {scan: two[scan]["frames_received"] for scan in volumes}  # one final input each, from all


def test_two_receivers_share_a_dectris_stream(tmp_path):
    require_redis()
    prefix = f"recvd{uuid.uuid4().hex[:6]}"
    address = f"tcp://127.0.0.1:{free_port()}"
    detector = DectrisDetector(address, version=2)
    processes = start_receivers(tmp_path, prefix, "--dectris", address)
    store = Store(Settings(key_prefix=prefix, data_dir=tmp_path))
    try:
        wait_for_receivers(store, processes)
        volume = scan_volume(7102).astype(np.uint16)
        detector.play(7, volume, encoding="bslz4")
        record = finished(store, ["series-7"])["series-7"]
        assert record["state"] == "complete" and record["frames_received"] == FRAMES
        with h5py.File(record["raw_file"]) as f:
            assert f["frames"].is_virtual and np.array_equal(f["frames"][()], volume)
    finally:
        stop(processes)
        detector.socket.close(linger=0)
        detector.context.term()
        for key in store.redis.scan_iter(f"{prefix}:*"):
            store.redis.delete(key)


@pytest.mark.parametrize("args", [["ingest", "--receivers", "2", "--receiver", "2"], ["ingest", "--receivers", "0"],
                                  ["up", "--receivers", "0"]])
def test_receiver_options_out_of_range_are_one_line_and_exit_2(args):
    done = subprocess.run([sys.executable, "-m", "services.cli.main", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_large_detector_scan_is_refined_from_its_signal_window_like_the_same_frames_on_a_small_one(service):
    """Eiger-2M-size frames (bslz4, as DECTRIS sends them) with the crystal's signal off-centre: the refinement
    reads a window around the region the ingest placed, and answers as for the same frames on 256²."""
    from services.beamline.sim import simulated_volume

    small = simulated_volume(32, 12, 0, 1e8)  # 32 frames of 32×32 around the peak
    small = np.pad(small, ((0, 0), (112, 112), (112, 112)))  # a 256² detector, peak at its centre
    large = np.zeros((32, 1100, 1300), np.uint32)
    corner = (700 - 128, 300 - 128)
    large[:, corner[0]:corner[0] + 256, corner[1]:corner[1] + 256] = small
    names = {f"small-{uuid.uuid4().hex[:6]}": small, f"large-{uuid.uuid4().hex[:6]}": large}
    beamline = Beamline(service["zmq"])
    done = {}
    for scan, volume in names.items():  # one after the other: a fresher scan would preempt the first's refinement
        beamline.play(scan, volume, encoding="bslz4")
        done[scan] = wait_for(lambda scan=scan: (s := scan_state(service, scan)) and "refined" in s["results"] and s,
                              timeout=300)
    beamline.close()
    refined = {scan: json.loads(service["redis"].hget(f"{service['prefix']}:result:{scan}:refined", "info"))
               for scan in names}
    small_id, large_id = names
    assert done[large_id]["roi"]["shape"] == [128, 128]  # the ingest's region of interest, around the peak
    shift = [0, 700 - 550, 300 - 650]  # the peak's place on the large detector, from its centre
    assert refined[large_id]["bragg_peak_offset"] == [a + b for a, b in
                                                       zip(refined[small_id]["bragg_peak_offset"], shift)]
    # the same signal reached the refinement: its region and the data's noise floor there are the small scan's
    # (χ itself is not compared: the final network answer is warm-started from the last live preview, and
    # which previews ran depends on timing, so two scans of the same frames may refine to different answers)
    assert refined[large_id]["region"]["shape"] == refined[small_id]["region"]["shape"]
    assert refined[large_id]["chi_floor"] == pytest.approx(refined[small_id]["chi_floor"], rel=1e-6)
    assert "window" in refined[large_id]["chi_on"] and refined[small_id]["chi_on"] == "measured frames"
    view = wait_for(lambda: (r := requests.get(f"{service['base']}/api/scans/{large_id}/detector", timeout=30)).ok
                    and r.json())  # the page's detector view: the signal's window, not 14 Mpixel a frame
    assert view["shape"] == [512, 512] and view["window"]["detector_shape"] == [1100, 1300]
    assert np.allclose(view["window"]["corner"], [700 - 256, 300 - 256], atol=2)  # centred on the signal
