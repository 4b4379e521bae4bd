"""Durable results: every stage's result on disk and served from there, Redis a bounded cache that may be
emptied, the disk watched (free space, retention)."""

import os
import shutil
import subprocess
import threading
import time
import uuid

import h5py
import numpy as np
import pytest
import requests

from services.beamline.sim import Beamline, simulated_volume
from services.gateway.housekeeping import Housekeeping
from shared.state import results, retention
from shared.state.settings import Settings
from shared.state.store import Store
from tests.conftest import free_port, require_redis, wait_for
from tests.test_faults import stack  # noqa: F401  (private Redis, services as processes)


@pytest.fixture
def store(tmp_path):
    require_redis()
    made = Store(Settings(key_prefix=f"dur{uuid.uuid4().hex[:6]}", data_dir=tmp_path, result_cache_mb=3))
    yield made
    for key in made.redis.scan_iter(f"{made.settings.key_prefix}:*"):
        made.redis.delete(key)


def test_results_are_files_first_and_redis_only_caches_them_within_its_bound(store, tmp_path):
    rng = np.random.default_rng(0)
    arrays = {f"s{i}": (rng.random((64, 64, 64), np.float32), rng.random((64, 64, 64), np.float32)) for i in range(6)}
    for scan, (a, p) in arrays.items():  # 2 MB each, a 3 MB cache
        store.put_result(scan, "refined", a, p, {"chi": 0.1, "seq": 1, "frames_used": 64})
        with h5py.File(tmp_path / scan / "refined.h5") as f:  # the reconstruct layout
            assert np.array_equal(f["amplitude"][()], a) and f.attrs["chi"] == 0.1 and "support" in f
    assert int(store.redis.get(store.keys.cache_bytes)) <= 3 * 2**20
    assert store.redis.zcard(store.keys.cache_index) == 1
    for scan, (a, p) in arrays.items():  # evicted ones come back from their files
        amplitude, phase, info = store.result(scan, "refined")
        assert np.array_equal(amplitude, a) and np.array_equal(phase, p) and info["chi"] == 0.1
    counters = store.counters()
    assert counters["cache_misses"] >= 5 and int(store.redis.get(store.keys.cache_bytes)) <= 3 * 2**20
    per_scan = sum(store.redis.memory_usage(k) or 0 for k in (store.keys.scan("s0"), store.keys.result("s0", "refined")))
    assert per_scan < 4096  # metadata only: the arrays are on disk
    store.delete_scan("s5")
    assert store.redis.zcard(store.keys.cache_index) == 0 and int(store.redis.get(store.keys.cache_bytes)) == 0


def test_a_record_field_written_after_redis_was_emptied_does_not_hide_the_scan_from_its_restore(store, tmp_path):
    """A worker's late field (``put_result`` writes the record after the result) lands in an emptied Redis
    as a record hash with no list entry: the restore still rebuilds and lists the scan."""
    from services.ingest.scanfile import ScanFile
    from shared.wire.messages import Start

    start = Start(type="start", scan="late", frames=4, shape=(16, 16), dtype="uint32")
    scan = ScanFile.create(start, tmp_path / "late", {"started": time.time()})
    for index in range(4):
        scan.add(index, np.ones((16, 16), np.uint32))
    scan.close({"state": "complete", "frames_received": 4, "ended": time.time()})
    store.put_result("late", "nn", np.ones((8, 8, 8), np.float32), np.zeros((8, 8, 8), np.float32),
                     {"seq": 1, "final": True, "frames_used": 4})
    for key in store.redis.scan_iter(f"{store.settings.key_prefix}:*"):  # Redis emptied
        store.redis.delete(key)
    store.update_scan("late", result_nn={"frames_used": 4})  # the late field, in the empty Redis
    assert store.restore_from_disk() == {"restored": 1, "queued": 1}
    records, total = store.list_scans(None, 10, 0)
    assert total == 1 and records[0]["scan"] == "late" and records[0]["state"] == "complete"


def test_retention_never_deletes_what_is_still_needed():
    now, old = 1e9, 1e9 - 30 * retention.DAY
    records = [{"scan": "acquiring", "state": "acquiring", "started": old},
               {"scan": "unrefined", "state": "complete", "started": old, "result_nn": {}},
               {"scan": "queued", "state": "complete", "started": old, "result_nn": {}, "result_refined": {},
                "queue": {"position": 1}},
               {"scan": "refined", "state": "complete", "started": old, "result_refined": {}},
               {"scan": "failed", "state": "failed", "started": old},
               {"scan": "recent", "state": "complete", "started": now - 60, "result_refined": {}}]
    busy = {r["scan"] for r in records if r.get("queue")}
    chosen = retention.choose(records, {}, busy, now, retention_days=7, max_bytes=0, used_bytes=0)
    assert sorted(s for s, _ in chosen) == ["failed", "refined"]
    sizes = {r["scan"]: 10 for r in records}  # over the size bound: the oldest finished first, never the others
    chosen = retention.choose(records, sizes, busy, now, retention_days=0, max_bytes=25, used_bytes=60)
    assert [s for s, _ in chosen] == ["refined", "failed", "recent"][:len(chosen)] and "unrefined" not in dict(chosen)
    assert retention.low_on_space(2**30, 2) and retention.low_on_space(3 * 2**30, 2) is None


def test_redis_emptied_every_finished_scan_is_served_again_from_disk(stack):  # noqa: F811
    """Two scans refined, a third waiting for refinement; Redis emptied (FLUSHALL); the gateway rebuilds
    every record from DATA_DIR, serves the same arrays, recomputes nothing and queues the third again."""
    port = free_port()
    gateway = {"GATEWAY_PORT": str(port)}
    stack.start("ingest")
    stack.wait_worker("infer", stack.start("worker", "infer"))
    refine = stack.start("worker", "refine")
    stack.wait_worker("refine", refine)
    stack.start("gateway", **gateway)
    base = f"http://127.0.0.1:{port}"
    beamline = Beamline(stack.endpoint)
    for i in range(2):
        beamline.play(f"kept{i}", simulated_volume(32, 4, i, 1e8))
    beamline.close()
    for i in range(2):
        wait_for(lambda i=i: stack.result(f"kept{i}", "refined"), timeout=180)
    wait_for(lambda: requests.get(f"{base}/health", timeout=2).ok, timeout=60)
    before = {(s, st): requests.get(f"{base}/api/scans/{s}/reconstruction", params={"stage": st}, timeout=30).content
              for s in ("kept0", "kept1") for st in ("nn", "refined")}
    refine.kill()
    refine.wait()
    beamline = Beamline(stack.endpoint)
    beamline.play("waiting", simulated_volume(32, 4, 5, 1e8))
    beamline.close()
    wait_for(lambda: stack.result("waiting", "nn") and stack.result("waiting", "nn")["final"], timeout=120)
    stack.redis.client.flushall()
    for (scan, stage), content in before.items():
        response = wait_for(lambda scan=scan, stage=stage: (r := requests.get(
            f"{base}/api/scans/{scan}/reconstruction", params={"stage": stage}, timeout=30)).ok and r, timeout=30)
        with np.load(__import__("io").BytesIO(response.content)) as new, \
                np.load(__import__("io").BytesIO(content)) as old:
            assert np.array_equal(new["amplitude"], old["amplitude"]) and np.array_equal(new["phase"], old["phase"])
    listed = requests.get(f"{base}/api/scans", timeout=5).json()
    assert {"kept0", "kept1", "waiting"} <= {s["scan"] for s in listed["scans"]}
    assert requests.get(f"{base}/api/scans/kept0", timeout=5).json()["results"]["refined"]["chi"] > 0
    counters = {k.decode(): float(v) for k, v in stack.redis.client.hgetall(f"{stack.prefix}:metrics").items()}
    assert counters.get("scans_restored") == 3 and not counters.get("results_refined")  # nothing recomputed
    stack.start("worker", "refine")  # the queued one is refined after the restore
    wait_for(lambda: "refined" in requests.get(f"{base}/api/scans/waiting", timeout=5).json()["results"], timeout=180)


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MB tmpfs as DATA_DIR (root only; skipped elsewhere)."""
    folder = tmp_path / "small"
    folder.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(folder)],
                                           capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_disk_nearly_full_refuses_new_scans_at_their_start_and_loses_nothing_accepted(small_disk, tmp_path):
    from services.ingest.service import serve

    require_redis()
    settings = Settings(key_prefix=f"disk{uuid.uuid4().hex[:6]}", data_dir=small_disk, min_free_gb=0.01,
                        ingest_bind=f"tcp://127.0.0.1:{free_port()}")
    store = Store(settings)
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(settings, stop))
    thread.start()
    volume = simulated_volume(32, 5, 0, 1e8)
    try:
        beamline = Beamline(settings.ingest_bind)
        beamline.play("accepted", volume, end=False, order=range(16))
        wait_for(lambda: (store.scan("accepted") or {}).get("frames_received") == 16, timeout=30, every=0.05)
        (small_disk / "ballast").write_bytes(b"\0" * (17 * 2**20))  # 24 MB volume, under 10 MB free now
        Housekeeping(store).watch_disk()
        assert "disk nearly full" in store.disk_alarm({k.decode(): float(v) for k, v in
                                                        store.redis.hgetall(store.keys.disk).items()})
        beamline.play("refused", volume)
        for k in range(16, 32):
            beamline.send({"type": "frame", "scan": "accepted", "index": k}, volume[k].tobytes())
        beamline.send({"type": "end", "scan": "accepted"})
        beamline.close()
        state = wait_for(lambda: (s := store.scan("accepted")) and s["state"] == "complete" and s, timeout=30)
        assert state["frames_received"] == 32 and state["missing"] == 0
        assert store.scan("refused") is None
        assert store.counters()["rejected:disk nearly full (MIN_FREE_GB)"] == 1
        with h5py.File(state["raw_file"]) as f:
            assert np.array_equal(f["frames"][()], volume)
    finally:
        stop.set()
        thread.join()
        for key in store.redis.scan_iter(f"{settings.key_prefix}:*"):
            store.redis.delete(key)
        shutil.rmtree(small_disk / "accepted", ignore_errors=True)


def test_housekeeping_retention_deletes_old_refined_scans_and_says_so(store, tmp_path):
    old = time.time() - 10 * retention.DAY
    for scan, state, refined in (("old-refined", "complete", True), ("old-unrefined", "complete", False)):
        (tmp_path / scan).mkdir()
        (tmp_path / scan / "frames.h5").write_bytes(b"\0" * 1000)
        store.create_scan(scan, {"scan": scan, "state": state, "started": old, "frames_expected": 32,
                                 "frames_received": 32, "duplicates": 0, "shape": [32, 32]})
        if refined:
            store.put_result(scan, "refined", np.ones((32, 32, 32), np.float32), np.zeros((32, 32, 32), np.float32),
                             {"chi": 0.1, "seq": 1})
    store.settings.retention_days = 7
    events = store.redis.pubsub()
    events.subscribe(store.keys.updates)
    Housekeeping(store).watch_disk()
    assert store.scan("old-refined") is None and not (tmp_path / "old-refined").exists()
    assert store.scan("old-unrefined") is not None and (tmp_path / "old-unrefined").exists()
    said = [m for m in iter(lambda: events.get_message(timeout=0.5), None) if m["type"] == "message"]
    assert any(b"retention" in m["data"] and b"old-refined" in m["data"] for m in said)
    assert store.counters()["scans_deleted_by_retention"] == 1
    assert results.read_stage(tmp_path / "old-refined" / "refined.h5") is None
