"""Shared fixtures: simulated crystals and the real data beside the repository."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import redis
import requests

from services.cli.up import wait_until_ready
from shared.wire import realdata
from shared.physics.errors import InputError
from shared.physics import crystals, fourier

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = realdata.folder()
API_KEY = "test-key-" + uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def crystal():
    """One strained crystal on 32³: (complex object, intensity)."""
    amp, phase, _ = crystals.random_crystal(32, np.random.default_rng(3), max_strain=3e-3)
    obj = fourier.make_object(amp, phase)
    return obj, fourier.intensity(obj)


def require_redis() -> None:
    """Skip (with the reason) where no Redis answers on 127.0.0.1:6379; `.ci/run` starts one."""
    try:
        redis.Redis().ping()
    except redis.ConnectionError:
        pytest.skip("no Redis at 127.0.0.1:6379")


def ingest_running(settings, send, **serve_options):
    """``send()`` while an ingest serves ``settings`` in a thread; its result. One ingest at a time, as in
    production (one process each): HDF5 is not for two writers' threads."""
    import threading

    from services.ingest.service import serve

    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(settings, stop), kwargs=serve_options)
    thread.start()
    try:
        return send()
    finally:
        stop.set()
        thread.join()


def real_file(path: Path) -> Path:
    """``path`` (``shared.realdata``'s), or the test is skipped where the real data are not beside this checkout."""
    if not path.exists():
        pytest.skip(f"real data {path} not found (set CDI_LIVE_DATA to the folder of ../shared/data)")
    return path


# The whole service (`cdi-live up`: ingest, workers, gateway) on free ports against the real Redis,
# under a private key prefix; one per test session, shared by the streaming, gateway and page tests.
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def service(tmp_path_factory):
    try:
        redis.Redis.from_url(REDIS_URL).ping()
    except redis.ConnectionError:
        pytest.skip(f"no Redis at {REDIS_URL} (.ci/run starts one)")
    prefix = f"test{uuid.uuid4().hex[:8]}"
    port, zport = free_port(), free_port()
    env = {**os.environ, "KEY_PREFIX": prefix, "DATA_DIR": str(tmp_path_factory.mktemp("live")),
           "REFINE_TIME_BUDGET": "5", "CLAIM_IDLE_MS": "5000", "API_KEYS": API_KEY}
    log_path = tmp_path_factory.mktemp("logs") / "up.log"  # a file, not a pipe: a full pipe would stall the services
    log = log_path.open("wb")
    process = subprocess.Popen([sys.executable, "-m", "services.cli.main", "up", "--port", str(port),
                                "--bind", f"tcp://127.0.0.1:{zport}", "--redis-url", REDIS_URL], env=env,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base, [process], timeout=240)  # Redis, both workers (network loaded) and the gateway
    except InputError as exc:
        process.kill()
        pytest.fail(f"the services did not come up ({exc}): " + log_path.read_text()[-2000:])
    client = redis.Redis.from_url(REDIS_URL)
    yield {"base": base, "zmq": f"tcp://127.0.0.1:{zport}", "prefix": prefix, "redis": client,
           "data_dir": env["DATA_DIR"], "log": log_path}
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)


def wait_for(predicate, timeout=180.0, every=0.25):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out waiting")


def scan_state(service, scan):
    response = requests.get(f"{service['base']}/api/scans/{scan}", timeout=5)
    return response.json() if response.ok else None


@pytest.fixture(scope="session")
def finished_scan(service):
    """One simulated scan pushed through the stack and refined; its id."""
    from services.beamline.sim import Beamline, simulated_volume

    scan = f"done-{uuid.uuid4().hex[:6]}"
    beamline = Beamline(service["zmq"])
    beamline.play(scan, simulated_volume(32, 11, 0, 1e8))
    beamline.close()
    wait_for(lambda: (s := scan_state(service, scan)) and "refined" in s["results"])
    return scan
