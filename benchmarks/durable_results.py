"""500 full-size scans' results held: Redis memory and gateway read latency (issue 24).

Writes N scans as the workers would (through the Store): a record, an NN result (32³) and a refined
result of a full-size scan (128³ amplitude and phase, a crystal in a quarter of the box), each
stage's arrays to DATA_DIR/<scan>/<stage>.h5 and a bounded cache in Redis. Then measures, on a private
key prefix of the local Redis:
    Redis memory of the deployment's keys, cache excluded, per scan and in all (target < 100 MB)
    the same layout as before (arrays in Redis: 21 MB per full-size scan), computed from one scan
    gateway reads with wrk (2 gateway workers): list, detail, download (refined, npz) of a scan whose
    result is cached and of one read from its file (target: list ≥ 500 req/s, p99 < 50 ms)
    .venv/bin/python benchmarks/durable_results.py [--scans 500] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from services.cli.up import wait_until_answering  # noqa: E402
from benchmarks.gateway_load import wrk  # noqa: E402
from benchmarks.scale_out import free_port  # noqa: E402
from shared.state.settings import Settings  # noqa: E402
from shared.state.store import Store  # noqa: E402


def crystal(size: int, rng) -> tuple[np.ndarray, np.ndarray]:
    grid = np.indices((size,) * 3) - size / 2
    radius = np.sqrt((grid**2).sum(0))
    amplitude = (radius < size / 4 + rng.normal(0, 1)).astype(np.float32)
    return amplitude, (amplitude * np.sin(grid[0] / 9.0)).astype(np.float32)


def deployment_memory(store: Store) -> int:
    return sum(store.redis.memory_usage(k) or 0 for k in store.redis.scan_iter(f"{store.settings.key_prefix}:*",
                                                                               count=1000))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=500)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    prefix, folder = f"dur{uuid.uuid4().hex[:6]}", Path(tempfile.mkdtemp(prefix="cdi-durable-"))
    settings = Settings(key_prefix=prefix, data_dir=folder)
    store, rng = Store(settings), np.random.default_rng(0)
    out = {"scans": args.scans}
    gateway = None
    try:
        began = time.perf_counter()
        for i in range(args.scans):
            scan = f"s54-{i:04d}"
            store.create_scan(scan, {"scan": scan, "state": "complete", "frames_expected": 201, "frames_received": 201,
                                     "duplicates": 0, "shape": [256, 256], "dtype": "uint32", "started": time.time()})
            a, p = crystal(32, rng)
            store.put_result(scan, "nn", a, p, {"chi": 0.1, "seq": 9, "frames_used": 201, "crop": [80, 60, 70],
                                                "seconds": 0.01})
            a, p = crystal(128, rng)
            store.put_result(scan, "refined", a, p, {"chi": 0.1, "seq": 9, "frames_used": 201, "grid": [128] * 3, "seconds": 30.0,
                                                     "crop": [128] * 3, "voxel_grid": [201, 256, 256]})
        out["write_s_per_scan"] = (time.perf_counter() - began) / args.scans
        cache = int(store.redis.get(store.keys.cache_bytes) or 0)
        total = deployment_memory(store)
        cached_keys = sum(store.redis.memory_usage(k) or 0 for k in store.redis.scan_iter(f"{prefix}:cache:*"))
        out.update(redis_bytes_all=total, cache_bytes=cache, redis_bytes_beyond_cache=total - cached_keys,
                   redis_bytes_per_scan=(total - cached_keys) / args.scans,
                   before_bytes_per_scan=2 * 128**3 * 4 + 2 * 32**3 * 4,
                   disk_bytes=sum(p.stat().st_size for p in folder.rglob("*.h5")))
        print(f"{args.scans} full-size scans: Redis {out['redis_bytes_beyond_cache'] / 2**20:.1f} MB beyond the cache "
              f"({out['redis_bytes_per_scan'] / 1024:.1f} kB per scan; arrays in Redis were "
              f"{out['before_bytes_per_scan'] / 2**20:.1f} MB per scan), cache {out['cache_bytes'] / 2**20:.0f} MB, "
              f"disk {out['disk_bytes'] / 2**30:.2f} GB, {out['write_s_per_scan'] * 1000:.0f} ms per scan written",
              flush=True)
        port = free_port()
        env = {**os.environ, "KEY_PREFIX": prefix, "DATA_DIR": str(folder), "GATEWAY_PORT": str(port),
               "GATEWAY_WORKERS": "2"}
        gateway = subprocess.Popen([sys.executable, "-m", "services.cli.main", "gateway"], env=env,
                                   start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        wait_until_answering(base, gateway)
        newest, oldest = f"s54-{args.scans - 1:04d}", "s54-0000"  # the newest is cached, the oldest was evicted
        routes = {"list": "/api/scans?limit=20", "detail": f"/api/scans/{newest}",
                  "download (cached)": f"/api/scans/{newest}/reconstruction?stage=refined&format=npz",
                  "download (from file)": f"/api/scans/{oldest}/reconstruction?stage=refined&format=npz"}
        out["reads"] = {name: wrk(base + route, args.seconds, 16) for name, route in routes.items()}
    finally:
        if gateway is not None:
            os.killpg(gateway.pid, signal.SIGINT)
            gateway.wait(30)
        for key in store.redis.scan_iter(f"{prefix}:*", count=1000):
            store.redis.delete(key)
        shutil.rmtree(folder, ignore_errors=True)
    for name, r in out["reads"].items():
        print(f"  {name:22s} {r['rps']:8.0f} req/s  p50 {r['p50']:6.1f} ms  p99 {r['p99']:6.1f} ms  errors {r['errors']}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
