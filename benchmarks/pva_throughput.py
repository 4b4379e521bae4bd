"""Ingest over EPICS pvAccess vs a bare pvapy monitor loop: frames/s and frames lost, same server, same run.

A separate process serves an NTNDArray channel (pvapy's PvaServer, as NDPluginPva does) and publishes
N frames with their scan attributes as fast as it can, after a subscriber has connected. Receivers,
each against a fresh server process:
    bare      a pvapy monitor (server queue 1000) counting updates: the ceiling on this machine
    ingest    `cdi-live ingest --pva` (thread): frames validated, written to HDF5, counted in Redis
Frame sizes: 256² uint32 and 512² uint16. Target (issue 26): ingest ≥ 0.8× bare, 0 lost.
    .venv/bin/python benchmarks/pva_throughput.py [--frames 2000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import redis  # noqa: E402

mp = multiprocessing.get_context("spawn")


def publisher(channel: str, frames: int, shape, dtype: str, go, done) -> None:
    from services.beamline.sim import PvaDetector

    detector = PvaDetector(channel)
    rng = np.random.default_rng(0)
    images = [detector.ntndarray(rng.poisson(3, shape).astype(dtype), attributes={"scan": "bench", "frames": frames,
                                                                                  "index": k}) for k in range(64)]
    go.wait(60)
    for k in range(frames):
        image = images[k % 64]
        image["uniqueId"] = k + 1
        image["attribute"] = [detector.pva.NtAttribute("scan", detector.pva.PvString("bench")),
                              detector.pva.NtAttribute("frames", detector.pva.PvInt(frames)),
                              detector.pva.NtAttribute("index", detector.pva.PvInt(k))]
        detector.server.update(channel, image)
    done.wait(120)
    detector.close(0)


def bare(frames: int, shape, dtype: str) -> dict:
    import pvaccess as pva

    from services.ingest.pva import loopback_defaults

    loopback_defaults()
    channel, go, done = f"bench:{uuid.uuid4().hex[:6]}", mp.Event(), mp.Event()
    server = mp.Process(target=publisher, args=(channel, frames, shape, dtype, go, done))
    server.start()
    seen, times = [], []

    def on_update(pv):
        if pv["uniqueId"]:
            seen.append(1)
            times.append(time.perf_counter())

    monitor = pva.Channel(channel, pva.PVA)
    monitor.subscribe("bench", on_update)
    monitor.startMonitor("record[queueSize=1000]field()")
    time.sleep(2)
    go.set()
    deadline = time.time() + 120
    while len(seen) < frames and time.time() < deadline:
        if times and time.perf_counter() - times[-1] > 5:
            break
        time.sleep(0.05)
    counters = monitor.getMonitorCounters()
    monitor.stopMonitor()
    done.set()
    server.join(30)
    return {"rate": (len(times) - 1) / (times[-1] - times[0]), "received": len(seen), "lost": frames - len(seen),
            "overruns": counters.get("nOverruns", 0)}


def ingest(frames: int, shape, dtype: str) -> dict:
    from services.ingest.service import serve
    from shared.state.settings import Settings
    from shared.state.store import Store

    channel, go, done = f"bench:{uuid.uuid4().hex[:6]}", mp.Event(), mp.Event()
    server = mp.Process(target=publisher, args=(channel, frames, shape, dtype, go, done))
    server.start()
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings(key_prefix=f"pvab{uuid.uuid4().hex[:6]}", data_dir=Path(folder),
                            ingest_bind="tcp://127.0.0.1:0".replace(":0", f":{free_port()}"))
        store, stop = Store(settings), threading.Event()
        thread = threading.Thread(target=serve, args=(settings, stop), kwargs={"pva": {"channel": channel}})
        thread.start()
        time.sleep(3)
        go.set()
        deadline = time.time() + 180
        while (store.scan("bench") or {}).get("state") != "complete" and time.time() < deadline:
            time.sleep(0.05)
        record = store.scan("bench") or {}
        counters = store.counters()
        done.set()
        stop.set()
        thread.join()
        server.join(30)
        for key in store.redis.scan_iter(f"{settings.key_prefix}:*"):
            store.redis.delete(key)
    received = int(record.get("frames_received", 0))
    elapsed = (record.get("ended") or time.time()) - record.get("started", time.time())
    return {"rate": received / elapsed if elapsed > 0 else 0.0, "received": received, "lost": frames - received,
            "dropped": counters.get("pva_frames_dropped", 0), "overruns": counters.get("pva_overruns", 0)}


def free_port() -> int:
    from benchmarks.scale_out import free_port as port

    return port()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    redis.Redis().ping()
    out = {}
    for shape, dtype in (((256, 256), "uint32"), ((512, 512), "uint16")):
        label = f"{shape[0]}² {dtype}"
        base, ours = bare(args.frames, shape, dtype), ingest(args.frames, shape, dtype)
        out[label] = {"bare": base, "ingest": ours, "ratio": ours["rate"] / base["rate"]}
        print(f"{label}: bare pvapy monitor {base['rate']:7.0f} frames/s ({base['lost']} lost) — ingest "
              f"{ours['rate']:7.0f} frames/s ({ours['lost']} lost) = {ours['rate'] / base['rate']:.2f}× the bare loop",
              flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
