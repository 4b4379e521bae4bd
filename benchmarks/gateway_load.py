"""Gateway under load: wrk on the read endpoints while SSE subscribers listen, loopback only.

Starts `cdi-live gateway` (GATEWAY_WORKERS processes, default 2 here) against Redis under a private key prefix holding 50 scans
with NN results (written through the Store, as the workers would), opens 50
Server-Sent-Event subscribers that receive a published event every 100 ms, and runs
wrk (Debian's `wrk`) for 10 s on each read endpoint: requests/s, p50/p99 latency,
errors. The baseline in the same run is /health (no Redis, no work). Twice: open (no access control),
then with ACCESS_FILE, half the scans of another proposal, every request and subscriber carrying a
reader's key (issue 35's target: reads ≥ 500 req/s, p99 < 50 ms with access control on).
    .venv/bin/python benchmarks/gateway_load.py [--seconds 10] [--connections 16]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import requests  # noqa: E402

from services.cli.up import wait_until_answering  # noqa: E402
from benchmarks.scale_out import free_port  # noqa: E402
from shared.state.settings import Settings  # noqa: E402
from shared.state.store import Store  # noqa: E402

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


KEY = "reader-" + uuid.uuid4().hex


def wrk(url: str, seconds: int, connections: int, headers: dict) -> dict:
    flags = [item for name, value in headers.items() for item in ("-H", f"{name}: {value}")]
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", *flags, url],
                         capture_output=True, text=True).stdout

    def ms(label):
        value, unit = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "p50": ms(" 50"), "p99": ms(" 99"),
            "errors": int(errors.group(1)) if errors else 0, "socket_errors": socket_errors.group(1) if socket_errors else ""}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--subscribers", type=int, default=50)
    parser.add_argument("--workers", type=int, default=int(os.environ.get("GATEWAY_WORKERS", 2)),
                        help="gateway processes (GATEWAY_WORKERS)")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (apt-get install wrk)")
    prefix = f"load{uuid.uuid4().hex[:6]}"
    settings = Settings(redis_url=REDIS_URL, key_prefix=prefix)
    store = Store(settings)
    rng = np.random.default_rng(0)
    for i in range(50):
        scan = f"scan-{i:03d}"
        store.create_scan(scan, {"scan": scan, "state": "complete", "frames_expected": 32, "frames_received": 32,
                                 "duplicates": 0, "started": time.time() + i, "proposal": f"P-{'AB'[i % 2]}"})
        amp = rng.random((32, 32, 32)).astype(np.float32)
        store.put_result(scan, "nn", amp, amp, {"frames_used": 32, "chi": 0.1, "seconds": 0.03, "crop": [32, 32, 32]})
    access_file = Path(f"/tmp/{prefix}-access.json")
    access_file.write_text(json.dumps({hashlib.sha256(KEY.encode()).hexdigest():
                                       {"name": "bench", "role": "reader", "proposals": ["P-B"]}}))
    try:
        for mode, extra_env, headers in (("open (no access control)", {}, {}),
                                         ("access control on (reader of one of two proposals)",
                                          {"ACCESS_FILE": str(access_file)}, {"Authorization": f"Bearer {KEY}"})):
            run_gateway(args, store, prefix, mode, extra_env, headers)
    finally:
        access_file.unlink(missing_ok=True)
        for key in store.redis.scan_iter(f"{prefix}:*"):
            store.redis.delete(key)


def run_gateway(args, store, prefix, mode, extra_env, headers):
    port = free_port()
    data_dir = Path(f"/tmp/{prefix}-data")
    env = {**os.environ, "KEY_PREFIX": prefix, "REDIS_URL": REDIS_URL, "GATEWAY_PORT": str(port),
           "GATEWAY_WORKERS": str(args.workers), "DATA_DIR": str(data_dir), **extra_env}
    gateway = subprocess.Popen([sys.executable, "-m", "services.cli.main", "gateway"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    received, stop = [0] * args.subscribers, threading.Event()
    try:
        wait_until_answering(base, gateway)

        def subscribe(k):
            try:
                with requests.get(f"{base}/api/events", stream=True, timeout=60, headers=headers) as response:
                    for line in response.iter_lines():
                        received[k] += line.startswith(b"data: ")
                        if stop.is_set():
                            return
            except requests.RequestException:
                return  # the gateway stops at the end of the run

        threads = [threading.Thread(target=subscribe, args=(k,), daemon=True) for k in range(args.subscribers)]
        for t in threads:
            t.start()

        def publisher():
            while not stop.is_set():
                store.publish({"event": "progress", "scan": "scan-001", "frames_received": 1})
                time.sleep(0.1)

        threading.Thread(target=publisher, daemon=True).start()
        time.sleep(2)
        print(f"\n{mode}: gateway ({args.workers} uvicorn worker process(es)), {os.cpu_count()} cores, wrk 2 threads × "
              f"{args.connections} connections, {args.seconds} s each, {args.subscribers} SSE subscribers open")
        print("| endpoint | requests/s | p50 ms | p99 ms | errors | vs /health |")
        print("|---|---|---|---|---|---|")
        base_rps = None
        for path in ("/health", "/api/scans?limit=20", "/api/scans/scan-007", "/metrics",
                     "/api/scans/scan-007/reconstruction?stage=nn&format=npz"):
            r = wrk(base + path, args.seconds, args.connections, headers)
            base_rps = base_rps or r["rps"]
            errors = f"{r['errors']}" + (f" ({r['socket_errors']})" if r["socket_errors"] else "")
            print(f"| `{path}` | {r['rps']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {errors} | {r['rps'] / base_rps:.2f} |")
        stop.set()
        time.sleep(0.5)
        print(f"SSE: every subscriber received events during the load: {min(received) > 0} "
              f"(min {min(received)}, max {max(received)})")
    finally:
        stop.set()
        gateway.send_signal(signal.SIGINT)
        gateway.wait(20)
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
