"""Scale-out on one machine: 1 vs 3 inference workers (separate processes) sharing one Redis Stream.

For each worker count: start `cdi-live ingest` and K × `cdi-live worker infer`
under a private key prefix, push 20 simulated scans (32 frames of 32×32, a
preview every 4 frames) as fast as possible, and wait for every scan's final NN
result. Then check that every job was done exactly once (jobs done per worker +
stale previews skipped = jobs queued, none pending), and print how the jobs
spread over the workers and the throughput against 1 worker.
    .venv/bin/python benchmarks/scale_out.py [--scans 20] [--workers 3]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from services.beamline.sim import Beamline, simulated_volume  # noqa: E402

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(workers: int, volumes, client) -> dict:
    prefix, zport = f"scale{uuid.uuid4().hex[:6]}", free_port()
    env = {**os.environ, "KEY_PREFIX": prefix, "INGEST_BIND": f"tcp://127.0.0.1:{zport}", "PREVIEW_EVERY": "4",
           "DATA_DIR": tempfile.mkdtemp(prefix="cdi-scale-"), "REDIS_URL": REDIS_URL}
    exe = [sys.executable, "-m", "services.cli.main"]
    procs = [subprocess.Popen(exe + ["ingest"], env=env, stderr=subprocess.DEVNULL)]
    procs += [subprocess.Popen(exe + ["worker", "infer"], env=env, stderr=subprocess.DEVNULL) for _ in range(workers)]
    try:
        while len(list(client.scan_iter(f"{prefix}:worker:infer:*"))) < workers:
            time.sleep(0.2)  # each worker has loaded TensorFlow and the network
        time.sleep(1.0)
        beamline = Beamline(env["INGEST_BIND"])
        started = time.perf_counter()
        scans = [f"s{i}" for i in range(len(volumes))]
        for scan, volume in zip(scans, volumes):
            beamline.play(scan, volume)
        beamline.close()
        final = set()
        while len(final) < len(scans):
            for scan in set(scans) - final:
                info = client.hget(f"{prefix}:result:{scan}:nn", "info")
                if info and json.loads(info).get("final"):
                    final.add(scan)
            time.sleep(0.02)
        seconds = time.perf_counter() - started
        time.sleep(1.0)  # let the last stale previews be acknowledged
        counters = {k.decode(): int(float(v)) for k, v in client.hgetall(f"{prefix}:metrics").items()}
        done = {k.split(":", 1)[1]: v for k, v in counters.items() if k.startswith("jobs_done:")}
        queued = client.xlen(f"{prefix}:jobs:infer")
        pending = client.xpending(f"{prefix}:jobs:infer", "infer")["pending"]
        return {"workers": workers, "seconds": seconds, "queued": queued, "done": done, "pending": pending,
                "skipped": counters.get("jobs_skipped_stale", 0), "scans_per_s": len(scans) / seconds}
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait(30)
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=20)
    parser.add_argument("--workers", type=int, default=3)
    args = parser.parse_args()
    client = redis.Redis.from_url(REDIS_URL)
    volumes = [simulated_volume(32, 5, i, 1e8) for i in range(args.scans)]
    print(f"{args.scans} scans of 32 frames (32×32), {os.cpu_count()} cores; Redis {REDIS_URL}")
    results = [run(1, volumes, client), run(args.workers, volumes, client)]
    for r in results:
        exactly_once = sum(r["done"].values()) + r["skipped"] == r["queued"] and r["pending"] == 0
        spread = ", ".join(f"{n}" for n in sorted(r["done"].values(), reverse=True))
        print(f"{r['workers']} worker(s): {r['seconds']:.2f} s to all final NN results, {r['scans_per_s']:.1f} scans/s;"
              f" jobs queued {r['queued']}, done per worker [{spread}], stale previews skipped {r['skipped']},"
              f" pending {r['pending']} → exactly once: {exactly_once}")
    print(f"throughput {args.workers} workers / 1 worker: {results[1]['scans_per_s'] / results[0]['scans_per_s']:.2f}×")


if __name__ == "__main__":
    main()
