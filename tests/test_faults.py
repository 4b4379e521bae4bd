"""Faults with real processes against a private Redis: killed workers, poison jobs, Redis restarts, ingest crashes.

Redis is started here with the machine's command (redis-server, no persistence) on a
free port, so restarting it disturbs nothing else; services are `cdi-live` subprocesses
killed by their pid.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import h5py
import numpy as np
import pytest
import redis

from services.beamline.sim import Beamline, simulated_volume
from tests.conftest import free_port, wait_for

pytestmark = pytest.mark.skipif(not shutil.which("redis-server"), reason="redis-server is not installed")


class PrivateRedis:
    def __init__(self, folder):
        self.port, self.folder = free_port(), folder
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.start()

    def start(self):
        self.process = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                                         "--appendonly", "no", "--dir", str(self.folder)], stdout=subprocess.DEVNULL)
        self.client = redis.Redis.from_url(self.url)
        wait_for(lambda: self._pings(), timeout=10, every=0.05)

    def _pings(self):
        try:
            return self.client.ping()
        except redis.ConnectionError:
            return False

    def stop(self):
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture
def stack(tmp_path):
    """Start services one by one (`stack.start("ingest")`); everything is killed afterwards."""
    server = PrivateRedis(tmp_path)
    zport = free_port()
    env = {**os.environ, "REDIS_URL": server.url, "KEY_PREFIX": f"fault{uuid.uuid4().hex[:6]}",
           "DATA_DIR": str(tmp_path / "live"), "INGEST_BIND": f"tcp://127.0.0.1:{zport}",
           "CLAIM_IDLE_MS": "1000", "PREVIEW_EVERY": "1000", "REFINE_TIME_BUDGET": "3", "MAX_DELIVERIES": "2"}
    processes = []

    class Stack:
        redis = server
        endpoint = env["INGEST_BIND"]
        prefix = env["KEY_PREFIX"]

        @staticmethod
        def start(*command, **extra_env):
            p = subprocess.Popen([sys.executable, "-m", "services.cli.main", *command], env={**env, **extra_env},
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            processes.append(p)
            return p

        @staticmethod
        def wait_worker(kind, process):
            wait_for(lambda: any(k.endswith(f"-{process.pid}".encode())
                                 for k in server.client.zrange(f"{env['KEY_PREFIX']}:workers:{kind}", 0, -1)),
                     timeout=120)

        @staticmethod
        def scan(name):
            raw = server.client.hgetall(f"{env['KEY_PREFIX']}:scan:{name}")
            return {k.decode(): json.loads(v) for k, v in raw.items()}

        @staticmethod
        def result(name, stage="nn"):
            info = server.client.hget(f"{env['KEY_PREFIX']}:result:{name}:{stage}", "info")
            return json.loads(info) if info else None

        @staticmethod
        def raw_folder(name):
            return tmp_path / "live" / name

        @staticmethod
        def raw(name):
            with h5py.File(tmp_path / "live" / name / "frames.h5") as f:
                return f["frames"][()], f["received"][()]

    yield Stack
    for p in processes:
        if p.poll() is None:
            p.kill()
            p.wait()
    server.process.kill()
    server.process.wait()


def kill(process):
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)


def pending_consumers(stack, stream="infer"):
    try:
        summary = stack.redis.client.xpending(f"{stack.prefix}:jobs:{stream}", stream)
    except redis.ResponseError:
        return []
    return [c["name"].decode() for c in summary["consumers"]] if summary["pending"] else []


def push(stack, scan, volume, frames=None, end=True):
    beamline = Beamline(stack.endpoint)
    if frames is None or frames.start == 0:
        beamline.send({"type": "start", "scan": scan, "frames": int(volume.shape[0]),
                       "shape": list(volume.shape[1:]), "dtype": "uint32"})
    for k in range(volume.shape[0])[frames or slice(None)]:
        beamline.send({"type": "frame", "scan": scan, "index": k}, volume[k].tobytes())
    if end:
        beamline.send({"type": "end", "scan": scan})
    beamline.close()


def test_killed_inference_worker_job_is_claimed_by_another(stack):
    stack.start("ingest")
    doomed = stack.start("worker", "infer", CDI_LIVE_TEST_STALL_S="600")  # holds each job it takes
    stack.wait_worker("infer", doomed)
    volume = simulated_volume(32, 1, 0, 1e8)
    push(stack, "claimed", volume)
    wait_for(lambda: pending_consumers(stack) == [f"{os.uname().nodename}-{doomed.pid}"], timeout=30)
    kill(doomed)  # mid-job
    survivor = stack.start("worker", "infer")
    info = wait_for(lambda: stack.result("claimed"), timeout=120)
    assert info["final"] and info["frames_used"] == 32
    assert wait_for(lambda: not pending_consumers(stack), timeout=10)
    assert survivor.poll() is None


def test_job_that_keeps_killing_workers_is_dead_lettered(stack):
    stack.start("ingest")
    push(stack, "poison", simulated_volume(32, 1, 1, 1e8))
    for _ in range(2):  # MAX_DELIVERIES=2: two workers die holding it
        doomed = stack.start("worker", "infer", CDI_LIVE_TEST_STALL_S="600")
        wait_for(lambda: any(c.endswith(f"-{doomed.pid}") for c in pending_consumers(stack)), timeout=120)
        kill(doomed)
    stack.start("worker", "infer")  # the third delivery is refused: dead-lettered, scan failed
    state = wait_for(lambda: (s := stack.scan("poison")) and s["state"] == "failed" and s, timeout=120)
    assert "crashed" in state["reason"]
    assert stack.redis.client.xlen(f"{stack.prefix}:jobs:dead") == 1
    assert not pending_consumers(stack)


def test_redis_restart_mid_scan_loses_no_frames_and_the_scan_completes(stack):
    stack.start("ingest")
    infer, refine = stack.start("worker", "infer"), stack.start("worker", "refine")
    stack.wait_worker("infer", infer)
    stack.wait_worker("refine", refine)
    volume = simulated_volume(32, 1, 2, 1e8)
    push(stack, "restart", volume, slice(0, 16), end=False)
    wait_for(lambda: stack.scan("restart").get("frames_received") == 16, timeout=30)
    stack.redis.stop()
    push(stack, "restart", volume, slice(16, 32), end=False)  # while Redis is down: to disk
    time.sleep(1.0)
    stack.redis.start()  # same command; it comes back empty (no persistence)
    push(stack, "restart", volume, slice(32, 32), end=True)
    state = wait_for(lambda: (s := stack.scan("restart")) and s.get("state") == "complete" and s, timeout=60)
    assert state["frames_received"] == 32 and state["missing"] == 0
    assert wait_for(lambda: stack.result("restart", "refined"), timeout=180)  # workers reconnected and rejoined
    frames, received = stack.raw("restart")
    assert received.all() and np.array_equal(frames, volume)


def test_ingest_killed_mid_scan_resumes_from_its_file(stack):
    ingest = stack.start("ingest")
    infer = stack.start("worker", "infer")
    volume = simulated_volume(32, 1, 3, 1e8)
    push(stack, "crash", volume, slice(0, 20), end=False)
    wait_for(lambda: stack.scan("crash").get("frames_received") == 20, timeout=60)
    kill(ingest)
    assert stack.scan("crash")["state"] == "acquiring"
    stack.start("ingest")  # same address: it owns the scan and resumes it from frames.h5
    push(stack, "crash", volume, slice(20, 32), end=True)
    state = wait_for(lambda: (s := stack.scan("crash")) and s.get("state") == "complete" and s, timeout=120)
    assert state["frames_received"] == 32 and state["missing"] == 0
    stack.wait_worker("infer", infer)
    assert wait_for(lambda: stack.result("crash"), timeout=120)["frames_used"] == 32
    frames, received = stack.raw("crash")
    assert received.all() and np.array_equal(frames, volume)


def test_two_inference_workers_do_each_job_once(stack):
    stack.start("ingest")
    workers = [stack.start("worker", "infer") for _ in range(2)]
    for w in workers:
        stack.wait_worker("infer", w)
    scans = [f"pair{i}" for i in range(6)]
    for i, scan in enumerate(scans):
        push(stack, scan, simulated_volume(32, 2, i, 1e8))
    for scan in scans:
        assert wait_for(lambda scan=scan: (r := stack.result(scan)) and r["final"], timeout=120)
    stream = f"{stack.prefix}:jobs:infer"
    wait_for(lambda: not pending_consumers(stack), timeout=30)
    counters = {k.decode(): int(float(v)) for k, v in stack.redis.client.hgetall(f"{stack.prefix}:metrics").items()}
    done = sum(v for k, v in counters.items() if k.startswith("jobs_done:"))
    # Each queued job was done or skipped as stale exactly once (workers trim only acknowledged jobs).
    queued = stack.redis.client.xinfo_groups(stream)[0]["entries-read"]
    assert done + counters.get("jobs_skipped_stale", 0) == queued == len(scans)


def test_newest_scan_first_a_preempted_job_resumes_and_survives_its_worker(stack):
    """Two scans wait as backlog (REFINE_FRESH_S=8); the refinement worker starts on the oldest; a live scan
    ends and preempts it; the live one is refined first, the preempted one resumes from its checkpoint, its
    worker is killed mid-resume, another worker finishes it, and the backlog drains oldest first: every
    scan refined exactly once."""
    fresh = {"REFINE_FRESH_S": "8"}
    stack.start("ingest")
    stack.wait_worker("infer", stack.start("worker", "infer"))
    for i, scan in enumerate(("old1", "old2")):
        push(stack, scan, simulated_volume(32, 1, 10 + i, 1e8))
        wait_for(lambda scan=scan: (r := stack.result(scan)) and r["final"], timeout=120)
    time.sleep(8)  # both are backlog now
    first = stack.start("worker", "refine", CDI_LIVE_TEST_STEP_DELAY_S="0.03", **fresh)  # ≈ 300 steps: ≈ 10 s a job
    wait_for(lambda: stack.scan("old1").get("refining"), timeout=120)
    assert stack.scan("old2")["queue"] == {"stage": "refined", "position": 1, "eta_s": pytest.approx(
        stack.scan("old2")["queue"]["eta_s"])}
    push(stack, "live", simulated_volume(32, 1, 12, 1e8))
    refined = []

    def progress():
        for scan in ("live", "old1", "old2"):
            if scan not in refined and stack.result(scan, "refined"):
                refined.append(scan)
        return stack.scan("old1").get("refining", {}) or {}

    wait_for(lambda: progress().get("resumed"), timeout=120, every=0.05)  # old1 taken up again after "live"
    assert refined == ["live"]
    kill(first)  # in the middle of the resumed job
    stack.start("worker", "refine", **fresh)
    wait_for(lambda: (progress(), len(refined) == 3)[1], timeout=180, every=0.1)
    assert refined == ["live", "old1", "old2"]
    assert stack.result("old1", "refined")["resumed"] and not stack.result("live", "refined")["resumed"]
    def counters():  # counted just after each result is stored
        return {k.decode(): float(v) for k, v in stack.redis.client.hgetall(f"{stack.prefix}:metrics").items()}

    wait_for(lambda: counters().get("results_refined") == 3, timeout=10)
    assert counters()["results_refined"] == 3 and counters()["jobs_preempted"] >= 1
    for part in ("waiting", "running"):
        assert stack.redis.client.zcard(f"{stack.prefix}:jobs:refine:{part}") == 0
    assert not (stack.scan("old2").get("queue") or stack.scan("old2").get("refining"))


def test_a_run_again_that_gives_way_to_a_live_scan_comes_back_and_settles(stack):
    """A scan left uncertain by its first run shows that answer (searching) and runs again; a live scan ends
    meanwhile: the run again gives way (its job put back), the live scan is refined, and the run again comes
    back and settles (runs 2, searching false) instead of leaving the scan with its first answer."""
    stack.start("ingest")
    stack.wait_worker("infer", stack.start("worker", "infer"))
    names = [f"dim{seed}" for seed in (29, 30, 31)]  # 3e5 photons: some run again
    for seed, scan in zip((29, 30, 31), names):
        push(stack, scan, simulated_volume(32, 1, seed, 3e5))
    for scan in names:
        wait_for(lambda scan=scan: (r := stack.result(scan)) and r["final"], timeout=120)
    stack.start("worker", "refine", CDI_LIVE_TEST_STEP_DELAY_S="0.03")

    def searching():  # running again (not a verdict being checked on resamples: ``checking``)
        return next((scan for scan in names if (r := stack.result(scan, "refined") or {}).get("searching")
                     and not r.get("checking")), None)

    again = wait_for(searching, timeout=240, every=0.05)
    push(stack, "live", simulated_volume(32, 1, 5, 1e8))
    wait_for(lambda: stack.result("live", "refined"), timeout=120)
    cut = stack.result(again, "refined")
    assert cut["searching"] and cut["runs"] == 1  # the first answer, shown while the run again waits
    settled = wait_for(lambda: (r := stack.result(again, "refined")) and not r["searching"] and r, timeout=400)
    assert settled["runs"] == 2
    counters = {k.decode(): float(v) for k, v in stack.redis.client.hgetall(f"{stack.prefix}:metrics").items()}
    assert counters["jobs_preempted"] >= 1
