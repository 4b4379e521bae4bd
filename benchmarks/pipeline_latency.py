"""Streaming latency: time from a scan's `end` to its NN and refined results, and a real-scan timeline.

Starts the whole service (`cdi-live up`) against the local Redis, then
1. pushes simulated 32-frame scans of 32×32 frames as fast as possible and
   reports end → NN result and end → refined result (median over scans);
2. pushes the recorded APS 34-ID-C scan (201 frames of 256×256) at 100 Hz and
   prints the timeline of previews and final results.
    .venv/bin/python benchmarks/pipeline_latency.py [--scans 5]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import redis  # noqa: E402

from benchmarks.scale_out import free_port  # noqa: E402
from services.beamline.sim import GEOMETRY_34IDC, Beamline, simulated_volume  # noqa: E402
from services.cli.up import wait_until_ready  # noqa: E402

from shared.wire import realdata  # noqa: E402


def watch(pubsub, scan, until_stage="refined", timeout=120):
    """(event, monotonic time) for the scan until the given stage's result arrives."""
    events, deadline = [], time.time() + timeout
    while time.time() < deadline:
        message = pubsub.get_message(timeout=0.05)
        if message and message["type"] == "message":
            event = json.loads(message["data"])
            if event.get("scan") == scan:
                events.append((event, time.perf_counter()))
                if event["event"] == "result" and event["stage"] == until_stage:
                    break
    return events


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=5)
    args = parser.parse_args()
    prefix, port, zport = f"bench{uuid.uuid4().hex[:6]}", free_port(), free_port()
    env = {**os.environ, "KEY_PREFIX": prefix, "DATA_DIR": f"/tmp/{prefix}"}
    process = subprocess.Popen([sys.executable, "-m", "services.cli.main", "up", "--port", str(port), "--bind",
                                f"tcp://127.0.0.1:{zport}"], env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis()
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", [process])  # workers have built their graphs
        pubsub = client.pubsub()
        pubsub.subscribe(f"{prefix}:updates")
        beamline = Beamline(f"tcp://127.0.0.1:{zport}")
        to_nn, to_refined = [], []
        for i in range(args.scans):
            scan = f"lat-{i}"
            beamline.play(scan, simulated_volume(32, 5, i, 1e7), rate_hz=0, end=False)
            time.sleep(0.5)  # previews settle; we time from the end message
            ended = time.perf_counter()
            beamline.send({"type": "end", "scan": scan})
            events = watch(pubsub, scan)
            final_nn = [t for e, t in events if e["event"] == "result" and e["stage"] == "nn" and e["frames_used"] == 32]
            refined = [t for e, t in events if e["event"] == "result" and e["stage"] == "refined"]
            if final_nn and refined:
                to_nn.append(final_nn[-1] - ended)
                to_refined.append(refined[-1] - ended)
        print(f"32 frames of 32×32, {len(to_nn)} scans: end → NN result median {1000 * np.median(to_nn):.0f} ms, "
              f"end → refined result median {np.median(to_refined):.2f} s")
        if realdata.scan54_file().exists():
            volume = realdata.scan54_frames(None)
            scan = "aps-scan54"
            began = time.perf_counter()
            beamline.play(scan, volume, rate_hz=100, geometry=GEOMETRY_34IDC)
            ended = time.perf_counter()
            events = watch(pubsub, scan, timeout=180)
            print(f"APS 34-ID-C scan 54 at 100 Hz: frames pushed in {ended - began:.2f} s")
            for event, t in events:
                if event["event"] == "result":
                    print(f"  t = {t - began:6.2f} s  {event['stage']:8s} result from {event['frames_used']:3d} frames, "
                          f"χ {event['chi']:.3f}")
        beamline.close()
    finally:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(30)
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)


if __name__ == "__main__":
    main()
