"""Fuzzing the ingest at scale: ≥ 100,000 hostile messages while two valid scans are acquired.

Starts `cdi-live ingest` alone under a private key prefix, sends the messages of
tests/fuzzing.py as fast as the ingest takes them (valid frames interleaved),
then checks: the ingest is alive, every reject is counted (exactly the expected
number), no internal errors, the valid scans are complete and bit-identical on
disk; prints messages/s and the ingest's peak RSS.
    .venv/bin/python benchmarks/fuzz_ingest.py [--messages 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import redis  # noqa: E402
from tqdm import tqdm  # noqa: E402

from benchmarks.scale_out import free_port  # noqa: E402
from services.beamline.sim import Beamline  # noqa: E402
from tests.fuzzing import attack  # noqa: E402

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    args = parser.parse_args()
    client = redis.Redis.from_url(REDIS_URL)
    prefix, data = f"fuzz{uuid.uuid4().hex[:6]}", Path(tempfile.mkdtemp(prefix="cdi-fuzz-"))
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    env = {**os.environ, "KEY_PREFIX": prefix, "INGEST_BIND": endpoint, "DATA_DIR": str(data), "REDIS_URL": REDIS_URL}
    ingest = subprocess.Popen([sys.executable, "-m", "services.cli.main", "ingest"], env=env,
                              stderr=subprocess.DEVNULL)
    try:
        while not list(client.scan_iter(f"{prefix}:worker:ingest:*")):
            time.sleep(0.1)
        victims = {"u32": (32, (32, 32), "uint32"), "f32": (32, (32, 32), "float32")}
        volumes = {n: np.random.default_rng(i).poisson(50, (32, 32, 32)).astype(v[2])
                   for i, (n, v) in enumerate(victims.items())}
        starter = Beamline(endpoint)
        for name, volume in volumes.items():
            starter.send({"type": "start", "scan": name, "frames": 32, "shape": [32, 32], "dtype": str(volume.dtype)})
        starter.close()
        time.sleep(0.5)

        def rejected_so_far() -> int:
            return int(float(client.hget(f"{prefix}:metrics", "rejected") or 0))

        started = time.perf_counter()
        with tqdm(total=args.messages, desc="hostile messages", unit="msg", mininterval=1) as bar:
            expected, valid = attack(endpoint, victims, volumes, args.messages, rejected_so_far, random.Random(7),
                                     bar.update)
        still_open = [json.loads(client.hget(f"{prefix}:scan:{n}", "state")) for n in volumes]
        for name in volumes:
            valid.send({"type": "end", "scan": name})
        valid.close()
        while (rejected := rejected_so_far()) < expected and time.perf_counter() - started < 3600:
            time.sleep(0.2)
        seconds = time.perf_counter() - started
        while any(json.loads(client.hget(f"{prefix}:scan:{n}", "state")) == "acquiring" for n in volumes):
            time.sleep(0.05)  # their end messages are being handled
        alive = ingest.poll() is None
        counters = {k.decode(): float(v) for k, v in client.hgetall(f"{prefix}:metrics").items()}
        intact = []
        for name, volume in volumes.items():
            state = json.loads(client.hget(f"{prefix}:scan:{name}", "state") or "null")
            with h5py.File(data / name / "frames.h5") as f:
                intact.append(state == "complete" and np.array_equal(f["frames"][()], volume) and f["received"][()].all())
        print(f"{args.messages} hostile messages in {seconds:.1f} s ({args.messages / seconds:,.0f} msg/s); "
              f"rejects counted {rejected} of {expected} expected; internal errors "
              f"{int(counters.get('rejected:internal error', 0))}; ingest alive: {alive}; "
              f"valid scans open through the attack: {still_open == ['acquiring'] * 2}, then complete and "
              f"bit-identical: {all(intact)}; ingest peak RSS {peak_rss_mb(ingest.pid):.0f} MB")
        top = sorted(((v, k) for k, v in counters.items() if k.startswith("rejected:")), reverse=True)[:8]
        print("most frequent reasons: " + "; ".join(f"{k[9:]} {int(v)}" for v, k in top))
    finally:
        ingest.send_signal(signal.SIGINT)
        ingest.wait(30)
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)


if __name__ == "__main__":
    main()
