"""Ingest throughput for 256×256 uint32 frames vs a bare pyzmq receive-and-discard loop (same run).

Two workloads, each against the bare loop in the same run:
- one long scan of N frames, previews off (the receive path alone);
- a day of scans: 15 rocking scans of 200 frames pushed back to back, default settings
  (previews on), as a fast detector delivers them; also the frames kept, the previews
  published and the time from the last `end` to the last final job.
A separate process pushes as fast as it can; both receivers are timed from the first start
message to the last end (the ingest's own record times, so the pusher's start-up is not
counted for either); the ingest has then validated every frame, written it to HDF5 and
counted it.
    .venv/bin/python benchmarks/ingest_throughput.py [--frames 5000] [--scans 15]
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

mp = multiprocessing.get_context("spawn")  # a forked child must not inherit the parent's ZeroMQ context
import zmq  # noqa: E402

from services.beamline.sim import Beamline  # noqa: E402
from shared import codecs  # noqa: E402
from services.ingest.service import serve  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.store import Store  # noqa: E402


def pusher(endpoint, frames, scan, encoding="raw"):
    volume = np.random.default_rng(0).poisson(3, (64, 256, 256)).astype(np.uint32)
    payloads = [codecs.encode(frame, encoding) for frame in volume]
    extra = {} if encoding == "raw" else {"encoding": encoding}
    beamline = Beamline(endpoint)
    beamline.send({"type": "start", "scan": scan, "frames": frames, "shape": [256, 256], "dtype": "uint32"})
    for k in range(frames):
        beamline.send({"type": "frame", "scan": scan, "index": k, **extra}, payloads[k % 64])
    beamline.send({"type": "end", "scan": scan})
    beamline.close()


def day_pusher(endpoint, scans, frames, prefix, encoding="raw"):
    """Rocking scans back to back: a crystal's Bragg peak moving through the frames, on Poisson background."""
    rng = np.random.default_rng(1)
    rows = np.arange(256)[:, None]
    cols = np.arange(256)[None, :]
    spot = np.exp(-((rows - 128) ** 2 + (cols - 127) ** 2) / (2 * 6.0**2))
    payloads = []
    for k in range(frames):
        weight = 1e4 * np.exp(-((k - frames / 2) ** 2) / (2 * (frames / 12) ** 2))
        payloads.append(codecs.encode((rng.poisson(0.2, (256, 256)) + weight * spot).astype(np.uint32), encoding))
    extra = {} if encoding == "raw" else {"encoding": encoding}
    beamline = Beamline(endpoint)
    for n in range(scans):
        scan = f"{prefix}-{n}"
        beamline.send({"type": "start", "scan": scan, "frames": frames, "shape": [256, 256], "dtype": "uint32"})
        for k in range(frames):
            beamline.send({"type": "frame", "scan": scan, "index": k, **extra}, payloads[k])
        beamline.send({"type": "end", "scan": scan})
    beamline.close()


def bare(endpoint, frames, scans=0):
    """Receive-and-discard: one scan of ``frames`` frames, or ``scans`` scans of ``frames`` (day workload)."""
    socket = zmq.Context.instance().socket(zmq.PULL)
    socket.bind(endpoint)
    if scans:
        process = mp.Process(target=day_pusher, args=(endpoint, scans, frames, "bare"))
        messages, counted = scans * (frames + 2) - 1, scans * frames
    else:
        process = mp.Process(target=pusher, args=(endpoint, frames, "bare"))
        messages, counted = frames + 1, frames
    process.start()
    socket.recv_multipart()  # start
    began = time.perf_counter()
    for _ in range(messages):
        socket.recv_multipart()
    elapsed = time.perf_counter() - began
    process.join()
    socket.close(linger=0)
    return counted / elapsed


def ingest_day(endpoint, scans, frames, encoding="raw"):
    """The day-of-scans workload through `serve` with default settings (previews on)."""
    prefix = f"day-{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings(ingest_bind=endpoint, data_dir=Path(folder), key_prefix=f"bench{uuid.uuid4().hex[:6]}")
        store = Store(settings)
        stop = threading.Event()
        thread = threading.Thread(target=serve, args=(settings, stop))
        thread.start()
        time.sleep(0.5)
        process = mp.Process(target=day_pusher, args=(endpoint, scans, frames, prefix, encoding))
        process.start()
        names = [f"{prefix}-{n}" for n in range(scans)]
        while any((store.scan(name) or {}).get("state") != "complete" for name in names):
            time.sleep(0.01)
        received_at = time.perf_counter()

        def jobs():
            return [f for _, f in store.redis.xrange(store.keys.infer_jobs) if f[b"scan"].decode().startswith(prefix)]

        while sum(f[b"final"] == b"1" for f in jobs()) < scans:
            time.sleep(0.01)
        finals_at = time.perf_counter()
        process.join()
        stop.set()
        thread.join()
        records = [store.scan(name) for name in names]
        kept = sum(r["frames_received"] for r in records)
        receiving = records[-1]["ended"] - records[0]["started"]
        previews = sum(f[b"final"] == b"0" for f in jobs())
        counters = store.counters()
        for key in store.redis.scan_iter(f"{settings.key_prefix}:*"):
            store.redis.delete(key)
    return {"rate": scans * frames / receiving, "kept": kept, "previews": previews,
            "skipped": sum(int(counters.get(k, 0)) for k in ("previews_skipped_busy", "previews_skipped_backpressure")),
            "last_final_after_s": finals_at - received_at}


def ingest(endpoint, frames, encoding="raw"):
    scan = f"bench-{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings(ingest_bind=endpoint, data_dir=Path(folder), key_prefix=f"bench{uuid.uuid4().hex[:6]}",
                            preview_every=10**9)
        store = Store(settings)
        stop = threading.Event()
        thread = threading.Thread(target=serve, args=(settings, stop))
        thread.start()
        time.sleep(0.5)
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        process = mp.Process(target=pusher, args=(endpoint, frames, scan, encoding))
        process.start()
        while (store.scan(scan) or {}).get("state") != "complete":
            time.sleep(0.01)
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        process.join()
        stop.set()
        thread.join()
        state = store.scan(scan)
        elapsed = state["ended"] - state["started"]
        for key in store.redis.scan_iter(f"{settings.key_prefix}:*"):
            store.redis.delete(key)
    cores = (cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime) / elapsed
    return frames / elapsed, cores, state["frames_received"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=5000)
    parser.add_argument("--scans", type=int, default=15, help="scans of 200 frames in the day-of-scans workload")
    args = parser.parse_args()
    base = bare("tcp://127.0.0.1:5591", args.frames)
    print(f"bare pyzmq receive-and-discard (raw frames): {base:8.0f} frames/s")
    for port, encoding in ((5592, "raw"), (5594, "bslz4")):
        rate, cores, received = ingest(f"tcp://127.0.0.1:{port}", args.frames, encoding)
        print(f"cdi-live ingest, {encoding:5s} frames (HDF5 + Redis): {rate:8.0f} frames/s, {cores:.2f} cores, "
              f"{received}/{args.frames} frames kept — {rate / base:.2f}× the bare loop")
    day = bare("tcp://127.0.0.1:5595", 200, args.scans)
    print(f"\nday of scans ({args.scans} × 200 frames back to back, default settings, previews on)")
    print(f"bare pyzmq receive-and-discard: {day:8.0f} frames/s")
    for port, encoding in ((5596, "raw"), (5597, "bslz4")):
        r = ingest_day(f"tcp://127.0.0.1:{port}", args.scans, 200, encoding)
        print(f"cdi-live ingest, {encoding:5s}: {r['rate']:8.0f} frames/s — {r['rate'] / day:.2f}× the bare loop; "
              f"{r['kept']}/{args.scans * 200} frames kept, {r['previews']} previews queued, {r['skipped']} skipped "
              f"as stale, last final job {r['last_final_after_s']:.2f} s after the last frame was in")


if __name__ == "__main__":
    main()
