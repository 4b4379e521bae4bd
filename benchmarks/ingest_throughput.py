"""Ingest throughput for 256×256 uint32 frames vs a bare pyzmq receive-and-discard loop (same run).

A separate process pushes N frames as fast as it can; we time how long the
receiver takes to have them all (for the ingest: validated, on disk in HDF5,
counted in Redis). Also reports the ingest process's CPU use (cores).
    .venv/bin/python benchmarks/ingest_throughput.py [--frames 5000]
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


def bare(endpoint, frames):
    socket = zmq.Context.instance().socket(zmq.PULL)
    socket.bind(endpoint)
    process = mp.Process(target=pusher, args=(endpoint, frames, "bare"))
    process.start()
    socket.recv_multipart()  # start
    began = time.perf_counter()
    for _ in range(frames):
        socket.recv_multipart()
    elapsed = time.perf_counter() - began
    socket.recv_multipart()
    process.join()
    socket.close(linger=0)
    return frames / elapsed


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
        began = time.perf_counter()
        process.start()
        while (store.scan(scan) or {}).get("state") != "complete":
            time.sleep(0.01)
        elapsed = time.perf_counter() - began
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        process.join()
        stop.set()
        thread.join()
        state = store.scan(scan)
        for key in store.redis.scan_iter(f"{settings.key_prefix}:*"):
            store.redis.delete(key)
    cores = (cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime) / elapsed
    return frames / elapsed, cores, state["frames_received"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=5000)
    args = parser.parse_args()
    base = bare("tcp://127.0.0.1:5591", args.frames)
    print(f"bare pyzmq receive-and-discard (raw frames): {base:8.0f} frames/s")
    for port, encoding in ((5592, "raw"), (5594, "bslz4")):
        rate, cores, received = ingest(f"tcp://127.0.0.1:{port}", args.frames, encoding)
        print(f"cdi-live ingest, {encoding:5s} frames (HDF5 + Redis): {rate:8.0f} frames/s, {cores:.2f} cores, "
              f"{received}/{args.frames} frames kept — {rate / base:.2f}× the bare loop")


if __name__ == "__main__":
    main()
