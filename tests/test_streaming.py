"""End to end with real Redis, real ZeroMQ sockets and real uvicorn: push scans, watch results arrive."""

import io
import json
import time
import uuid

import numpy as np
import redis
import requests

from services.beamline.sim import Beamline
from services.worker.queue import JobQueue
from shared.physics import crystals, metrics
from tests.conftest import REDIS_URL, scan_state, wait_for


def simulated(index, photons=1e8):
    intensity, amp, phase, _, _ = crystals.simulated_scan(32, 31337, index, index, True, (photons, photons))
    return np.round(intensity).astype(np.uint32), (amp * np.exp(1j * phase)).astype(np.complex64)


def test_scan_streams_to_refined_result(service):
    volume, truth = simulated(0)
    pubsub = service["redis"].pubsub()
    pubsub.subscribe(f"{service['prefix']}:updates")
    beamline = Beamline(service["zmq"])
    scan = f"e2e-{uuid.uuid4().hex[:6]}"
    beamline.play(scan, volume, rate_hz=8)
    beamline.close()
    state = wait_for(lambda: (s := scan_state(service, scan)) and "refined" in s["results"]  # the settled answer
                     and s["results"]["refined"]["searching"] is False and s)
    assert state["state"] == "complete" and state["frames_received"] == 32 and state["duplicates"] == 0
    for stage in ("nn", "refined"):
        assert set(state["results"][stage]) >= {"frames_used", "chi", "seconds"}
    assert state["results"]["refined"]["chi"] < 0.5
    blur = state["results"]["refined"]["coherence_blur"]  # the blur χ's model was fitted with, beside χ
    assert len(blur) == 3 and blur[1] == blur[2] >= 0 and blur[0] in (0, blur[1])  # detector axes, or every axis
    assert state["results"]["refined"]["background"] >= 0  # and the flat background it added (photons per voxel)
    events = []
    while (message := pubsub.get_message(timeout=1.0)) is not None:
        if message["type"] == "message":
            events.append(json.loads(message["data"]))
    mine = [e for e in events if e.get("scan") == scan]
    complete_at = next(i for i, e in enumerate(mine) if e["event"] == "complete")
    previews = [e for e in mine[:complete_at] if e["event"] == "result" and e["frames_used"] < 32]
    assert previews, "a preview from a partial scan should arrive before the end"
    for preview in previews:  # the network's own answer while the frames have not passed the rocking curve's peak
        assert preview["shown"] == "network" or preview["frames_used"] > 16, preview
    response = requests.get(f"{service['base']}/api/scans/{scan}/reconstruction",
                            params={"stage": "refined", "format": "npz"}, timeout=10)
    assert response.ok
    arrays = np.load(io.BytesIO(response.content))
    assert arrays["amplitude"].dtype == np.float32 and arrays["amplitude"].ndim == 3
    estimate = arrays["amplitude"] * np.exp(1j * arrays["phase"])
    ours = metrics.errors(estimate, truth)
    zero_phase = metrics.errors(np.abs(truth).astype(np.complex64), truth)
    assert ours["phase"] < zero_phase["phase"]  # the refined strain is real information, not a flat guess
    assert ours["amplitude"] < 0.3


def test_duplicates_out_of_order_missing_and_garbage(service):
    volume, _ = simulated(1)
    beamline = Beamline(service["zmq"])
    scan = f"messy-{uuid.uuid4().hex[:6]}"
    order = list(np.random.default_rng(0).permutation(32))
    order.remove(7)  # missing
    order += [3, 12]  # duplicates
    before = int(service["redis"].hget(f"{service['prefix']}:metrics", "rejected") or 0)
    beamline.play(scan, volume, order=order, end=False)
    for garbage in ([b"{not json"], [b'{"type":"frame","scan":"nobody","index":0}', b"xx"],
                    [json.dumps({"type": "frame", "scan": scan, "index": 5}).encode(), b"short"],
                    [json.dumps({"type": "frame", "scan": scan, "index": 99}).encode(), b"\0" * 4096],
                    [json.dumps({"type": "start", "scan": "../etc", "frames": 3, "shape": [2, 2],
                                 "dtype": "uint32"}).encode()],
                    [json.dumps({"type": "start", "scan": "x", "frames": 10**9, "shape": [2, 2],
                                 "dtype": "uint32"}).encode()]):
        beamline.socket.send_multipart(garbage)
    beamline.send({"type": "end", "scan": scan})
    beamline.close()
    state = wait_for(lambda: (s := scan_state(service, scan)) and s["state"] == "complete"
                     and s["results"].get("nn", {}).get("frames_used") == 31 and s)  # the final NN, not a preview
    assert state["frames_received"] == 31 and state["duplicates"] == 2 and state["missing"] == 1
    assert state["out_of_order"] > 0
    rejected = wait_for(lambda: int(service["redis"].hget(f"{service['prefix']}:metrics", "rejected") or 0) - before >= 6)
    assert rejected
    frames = __import__("h5py").File(state_file(service, scan))["frames"][()]
    expected = volume.copy()
    expected[7] = 0
    assert np.array_equal(frames, expected)  # accepted data is on disk, bit for bit


def state_file(service, scan):
    raw = service["redis"].hget(f"{service['prefix']}:scan:{scan}", "raw_file")
    return json.loads(raw)


def test_unknown_scan_and_missing_stage(service):
    assert requests.get(f"{service['base']}/api/scans/nope", timeout=5).status_code == 404
    assert requests.get(f"{service['base']}/api/scans/nope/reconstruction", timeout=5).status_code == 404
    assert requests.get(f"{service['base']}/api/scans/..%2Fetc", timeout=5).status_code in (404, 422)
    beamline = Beamline(service["zmq"])
    scan = f"open-{uuid.uuid4().hex[:6]}"
    beamline.send({"type": "start", "scan": scan, "frames": 32, "shape": [32, 32], "dtype": "uint32"})
    beamline.close()
    wait_for(lambda: scan_state(service, scan))
    state = scan_state(service, scan)
    assert state["state"] == "acquiring" and state["results"] == {}
    response = requests.get(f"{service['base']}/api/scans/{scan}/reconstruction", params={"stage": "refined"})
    assert response.status_code == 404


def test_two_consumers_share_a_stream_once_each():
    client = redis.Redis.from_url(REDIS_URL)
    stream = f"test:{uuid.uuid4().hex}:jobs"
    try:
        a = JobQueue(client, stream, "g", claim_idle_ms=200, consumer="a")
        b = JobQueue(client, stream, "g", claim_idle_ms=200, consumer="b")
        ids = [client.xadd(stream, {"n": i}) for i in range(20)]
        done = {"a": [], "b": []}
        while sum(len(v) for v in done.values()) < 20:
            for name, queue in (("a", a), ("b", b)):
                jobs = queue.take(3, block_ms=50)
                queue.done(*[j for j, _ in jobs])
                done[name] += [j for j, _ in jobs]
        assert sorted(done["a"] + done["b"]) == sorted(ids) and done["a"] and done["b"]
        # A consumer that dies holding a job: another claims it after the idle time.
        client.xadd(stream, {"n": "orphan"})
        orphan = a.take(1, block_ms=50)
        assert orphan
        a.stop()  # what its death does to its keep-alive
        time.sleep(0.3)
        claimed = b.take(1, block_ms=50)
        assert [j for j, _ in claimed] == [j for j, _ in orphan]
        b.done(*[j for j, _ in claimed])
        assert client.xpending(stream, "g")["pending"] == 0
    finally:
        client.delete(stream)


def test_a_preview_gives_way_when_its_scan_ends():
    """The inference worker's running preview asks whether its scan's final job was queued after it: another scan's
    final or a newer preview does not cut it, its own final does."""
    from types import SimpleNamespace

    from services.worker import infer

    client = redis.Redis.from_url(REDIS_URL)
    stream = f"test:{uuid.uuid4().hex}:jobs"
    try:
        queue = JobQueue(client, stream, "infer", consumer="a")
        client.xadd(stream, {"scan": "s1", "final": "0", "seq": 4})
        (job_id, fields), = queue.take(1, block_ms=50)
        preview = {"id": job_id, "job": {k.decode(): v for k, v in fields.items()}}
        ask = infer.InferenceWorker.final_arrived(SimpleNamespace(queue=queue), [preview])
        time.sleep(infer.FINAL_CHECK_S)
        assert not ask()
        client.xadd(stream, {"scan": "s2", "final": "1", "seq": 9})  # another scan ended
        client.xadd(stream, {"scan": "s1", "final": "0", "seq": 8})  # a newer preview of this one
        time.sleep(infer.FINAL_CHECK_S)
        assert not ask()
        client.xadd(stream, {"scan": "s1", "final": "1", "seq": 12})
        assert not ask()  # asked again too soon: no Redis call
        time.sleep(infer.FINAL_CHECK_S)
        assert ask()
        queue.stop()
    finally:
        client.delete(stream)


def test_a_live_worker_keeps_a_long_job_and_gives_up_a_failed_one():
    """A job that runs past the claim time is not taken by another worker while its worker lives (it would be
    done twice); one whose step failed (the worker took again without marking it done) is retried elsewhere."""
    client = redis.Redis.from_url(REDIS_URL)
    stream = f"test:{uuid.uuid4().hex}:jobs"
    try:
        a = JobQueue(client, stream, "g", claim_idle_ms=200, consumer="a")
        b = JobQueue(client, stream, "g", claim_idle_ms=200, consumer="b")
        job = client.xadd(stream, {"n": "long"})
        assert [j for j, _ in a.take(1, block_ms=50)] == [job]
        deadline = time.monotonic() + 1.0  # five claim times
        while time.monotonic() < deadline:
            assert b.take(1, block_ms=50) == []
        assert a.deliveries(job) == 1  # kept alive without counting deliveries
        assert a.take(1, block_ms=50) == []  # a's step failed: it takes again, the job is no longer in hand
        time.sleep(0.3)
        assert [j for j, _ in b.take(1, block_ms=50)] == [job]
        assert b.deliveries(job) == 2
        b.done(job)
        a.stop()
        b.stop()
    finally:
        client.delete(stream)


def test_queue_survives_a_redis_that_came_back_empty():
    """No stream and no group (Redis restarted without persistence): the worker rejoins, nothing raises."""
    client = redis.Redis.from_url(REDIS_URL)
    stream = f"test:{uuid.uuid4().hex}:jobs"
    try:
        queue = JobQueue(client, stream, "g", consumer="a")
        client.delete(stream)  # what an empty restart looks like to a worker
        queue.last_trim = 0.0  # the periodic trim runs first (XINFO on a missing key)
        assert queue.take(1, block_ms=10) == []
        client.xadd(stream, {"n": 1})
        assert len(queue.take(1, block_ms=10)) == 1
    finally:
        client.delete(stream)


def test_a_preview_shown_as_the_network_keeps_the_preview_it_computed_for_the_next(tmp_path):
    """Before the peak the stage shows the network's answer; the next preview (and the scan's final) start from the
    preview computed, kept in the stage's file, not from the answer shown."""
    from types import SimpleNamespace

    from services.worker.infer import InferenceWorker
    from shared.state.settings import Settings
    from shared.state.store import Store

    store = Store(Settings(key_prefix=f"shown{uuid.uuid4().hex[:6]}", data_dir=tmp_path))
    try:
        rng = np.random.default_rng(6)
        network = rng.random((32, 32, 32)).astype(np.float32)
        computed = (rng.random((32, 32, 32)) * np.exp(1j * rng.random((32, 32, 32)))).astype(np.complex64)
        store.put_result("s1", "nn", network, np.zeros_like(network), {"seq": 1, "shown": "network", "crop": [32] * 3},
                         extra={"preview_real": computed.real, "preview_imag": computed.imag})
        worker = SimpleNamespace(store=store)
        last = InferenceWorker.last_preview(worker, "s1", store.result("s1", "nn"))
        assert np.allclose(last, computed)
        job = {"crop": json.dumps([32] * 3)}
        assert InferenceWorker.warm_start(job, store.result("s1", "nn"), last) is last
        store.put_result("s1", "nn", network, np.zeros_like(network), {"seq": 2, "shown": "preview", "crop": [32] * 3})
        assert np.allclose(InferenceWorker.last_preview(worker, "s1", store.result("s1", "nn")), network)
    finally:
        for key in store.redis.scan_iter(f"{store.settings.key_prefix}:*"):
            store.redis.delete(key)
