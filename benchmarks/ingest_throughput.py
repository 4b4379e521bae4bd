"""Ingest throughput against a bare pyzmq receive-and-discard loop, in the same run.

Workloads, each pushed as fast as a separate process can, with default settings (previews on):
- a day of scans: 15 rocking scans of 200 frames of 256² uint32, back to back;
- Eiger-1M-size frames: 3 scans of 200 frames of 1062×1028 uint16, Bitshuffle-LZ4 as DECTRIS sends them.
Each runs through `cdi-live ingest` processes (one receiver, then two on the same stream: the sender's
PUSH socket connects to both) and through the bare loop. The ingest's rate is its scans' frames over
the time from the first start to the last end in their records: every frame is then validated, on disk
and counted. Also: frames kept, the last final network input after the last scan's end, and the ingest's
peak memory (all its processes: storing, receiving, assembling).

The receive loop's own cost: the bare loop behind the receiving process (one copy of each message into
the shared-memory ring, a note over ``ipc://``) against the bare loop alone.

    .venv/bin/python benchmarks/ingest_throughput.py [--scans 15] [--eiger-scans 3] [--receivers 1 2]
    .venv/bin/python benchmarks/ingest_throughput.py --rates 250 500 1000 --receivers 1   # at a detector's pace
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import zmq  # noqa: E402

from services.beamline.sim import Beamline  # noqa: E402
from services.ingest.receive import Receiver, part_address  # noqa: E402
from shared.wire import codecs  # noqa: E402
from shared.state.settings import Settings  # noqa: E402
from shared.state.store import Store  # noqa: E402

mp = multiprocessing.get_context("spawn")  # a forked child must not inherit the parent's ZeroMQ context
WORKLOADS = {"day": {"shape": (256, 256), "dtype": "uint32", "encoding": "raw", "frames": 200},
             "eiger1m": {"shape": (1062, 1028), "dtype": "uint16", "encoding": "bslz4", "frames": 200}}


def payloads(workload: str) -> list[bytes]:
    """A rocking curve: a Bragg peak rising and falling through the frames, on Poisson background."""
    w = WORKLOADS[workload]
    rng = np.random.default_rng(1)
    height, width = w["shape"]
    rows, cols = np.arange(height)[:, None], np.arange(width)[None, :]
    spot = np.exp(-((rows - height // 2) ** 2 + (cols - width // 2 + 1) ** 2) / (2 * 6.0**2))
    out = []
    for k in range(w["frames"]):
        weight = 1e4 * np.exp(-((k - w["frames"] / 2) ** 2) / (2 * (w["frames"] / 12) ** 2))
        frame = (rng.poisson(0.2, w["shape"]) + weight * spot).astype(w["dtype"])
        out.append(codecs.encode(frame, w["encoding"]))
    return out


def pusher(endpoint: str, workload: str, scans: int, prefix: str, rate_hz: float = 0.0, sent_at=None) -> None:
    """The scans, as fast as possible or (``rate_hz``) at a detector's frame rate; ``sent_at`` (a shared
    double) gets the time the last end was sent."""
    w = WORKLOADS[workload]
    data = payloads(workload)
    extra = {} if w["encoding"] == "raw" else {"encoding": w["encoding"]}
    beamline = Beamline(endpoint)
    time.sleep(0.5)  # every receiver connected: ZeroMQ deals only among connected peers
    began, sent = time.perf_counter(), 0
    for n in range(scans):
        scan = f"{prefix}-{n}"
        beamline.send({"type": "start", "scan": scan, "frames": w["frames"], "shape": list(w["shape"]),
                       "dtype": w["dtype"]})
        for k in range(w["frames"]):
            if rate_hz:
                delay = began + sent / rate_hz - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            beamline.send({"type": "frame", "scan": scan, "index": k, **extra}, data[k])
            sent += 1
        beamline.send({"type": "end", "scan": scan})
    if sent_at is not None:
        sent_at.value = time.time()
    beamline.close()


def bare(endpoint: str, workload: str, scans: int, behind_receiver: bool = False) -> tuple[float, float]:
    """Receive-and-discard: (frames/s from the first start to the last end, µs of CPU a frame, ZeroMQ's I/O
    thread included), optionally behind the receiving process."""
    context = zmq.Context.instance()
    receiver = None
    if behind_receiver:
        receiver = Receiver(context, endpoint, True, Path(tempfile.gettempdir()), 10000, 2**30)
        socket = receiver
    else:
        socket = context.socket(zmq.PULL)
        socket.bind(endpoint)
    frames = WORKLOADS[workload]["frames"]
    process = mp.Process(target=pusher, args=(endpoint, workload, scans, "bare"))
    process.start()
    done = receiver.release if receiver is not None else (lambda: None)  # its room in the ring is free
    socket.recv_multipart()  # the first start
    done()
    began, cpu = time.perf_counter(), time.process_time()
    for _ in range(scans * (frames + 2) - 1):
        socket.recv_multipart()
        done()
    elapsed = time.perf_counter() - began
    cpu_us = (time.process_time() - cpu) / (scans * frames) * 1e6
    process.join()
    if receiver is not None:
        receiver.close()
        receiver.close_socket()
    else:
        socket.close(linger=0)
    return scans * frames / elapsed, cpu_us


def peak_memory_mb(pids: list[int]) -> float:
    """Peak resident memory (VmHWM) of the processes and their children, summed."""
    total = 0
    for pid in pids:
        for p in [pid, *children(pid)]:
            try:
                for line in Path(f"/proc/{p}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
            except OSError:
                pass
    return total / 1024


def cpu_seconds(pids: list[int], with_children: bool = True) -> float:
    """User + system CPU time of the processes (and their children: receiving, assembling) so far."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for pid in pids:
        for p in [pid, *(children(pid) if with_children else [])]:
            try:
                fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick
            except (OSError, IndexError, ValueError):
                pass
    return total


def children(pid: int) -> list[int]:
    try:
        found = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return found + [g for c in found for g in children(c)]


def ingest(bind: str, workload: str, scans: int, receivers: int, rate_hz: float = 0.0) -> dict:
    """The workload through `cdi-live ingest` processes (``receivers`` of them on the stream), pushed as
    fast as possible or at ``rate_hz``."""
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings(data_dir=Path(folder), key_prefix=prefix)
        store = Store(settings)
        env = {**os.environ, "DATA_DIR": folder, "KEY_PREFIX": prefix, "INGEST_BIND": bind}
        processes = [subprocess.Popen([sys.executable, "-m", "services.cli.main", "ingest", "--receivers",
                                       str(receivers), "--receiver", str(k)], cwd=ROOT, env=env,
                                      stderr=subprocess.DEVNULL) for k in range(receivers)]
        while len(store.live_workers("ingest")) < receivers:
            time.sleep(0.1)
        endpoints = ",".join(part_address(bind, k) for k in range(receivers))
        names = [f"{prefix}-{n}" for n in range(scans)]
        pids = [p.pid for p in processes]
        cpu_before, storing_before = cpu_seconds(pids), cpu_seconds(pids, False)
        sent_at = mp.Value("d", 0.0)
        sender = mp.Process(target=pusher, args=(endpoints, workload, scans, prefix, rate_hz, sent_at))
        sender.start()
        while any((store.scan(name) or {}).get("state") != "complete" for name in names):
            time.sleep(0.01)
        complete_at = time.time()

        def finals():
            return [f for _, f in store.redis.xrange(store.keys.infer_jobs) if f[b"final"] == b"1"]

        while len(finals()) < scans:
            time.sleep(0.01)
        finals_at = time.time()
        cpu, storing = cpu_seconds(pids) - cpu_before, cpu_seconds(pids, False) - storing_before
        sender.join()
        memory = peak_memory_mb(pids)
        for p in processes:
            p.terminate()
        for p in processes:
            p.wait(60)
        records = [store.scan(name) for name in names]
        counters = store.counters()
        for key in store.redis.scan_iter(f"{prefix}:*"):
            store.redis.delete(key)
    frames = WORKLOADS[workload]["frames"]
    return {"rate": scans * frames / (records[-1]["ended"] - records[0]["started"]),
            "kept": sum(r["frames_received"] for r in records), "sent": scans * frames,
            "rejected": int(counters.get("rejected", 0)),
            "last_final_after_s": finals_at - max(r["ended"] for r in records),
            "seen_complete_after_s": complete_at - max(r["ended"] for r in records), "memory_mb": memory,
            "behind_s": max(r["ended"] for r in records) - sent_at.value,
            "cpu_us_per_frame": cpu / (scans * frames) * 1e6, "storing_us_per_frame": storing / (scans * frames) * 1e6}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=15, help="scans of 200 frames of 256² in the day workload")
    parser.add_argument("--eiger-scans", type=int, default=3, help="scans of 200 Eiger-1M-size frames")
    parser.add_argument("--receivers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rates", type=float, nargs="*", default=[],
                        help="also push at these frame rates (Hz), as a detector does: does the ingest keep up?")
    args = parser.parse_args()
    if args.rates:
        paced(args)
        return
    port = 5600
    for workload, scans in (("day", args.scans), ("eiger1m", args.eiger_scans)):
        if scans == 0:  # that workload is not wanted (the bare loop would wait for it for ever)
            continue
        w = WORKLOADS[workload]
        print(f"\n{workload}: {scans} scans × {w['frames']} frames of {w['shape'][0]}×{w['shape'][1]} {w['dtype']} "
              f"({w['encoding']}), pushed as fast as possible")
        base, base_cpu = bare(f"tcp://127.0.0.1:{port}", workload, scans)
        proxied, _ = bare(f"tcp://127.0.0.1:{port + 1}", workload, scans, behind_receiver=True)
        print(f"  bare pyzmq loop:                     {base:8.0f} frames/s ({base_cpu:.0f} µs of CPU a "
              f"frame)")
        print(f"  bare loop behind the receiver:       {proxied:8.0f} frames/s ({proxied / base:.2f}×; "
              f"{(1 / proxied - 1 / base) * 1e6:+.0f} µs a frame)")
        for n in args.receivers:
            port += 10
            r = ingest(f"tcp://127.0.0.1:{port}", workload, scans, n)
            print(f"  cdi-live ingest, {n} receiver{'s' if n > 1 else ' '}:        {r['rate']:8.0f} frames/s "
                  f"({r['rate'] / base:.2f}× bare); {r['kept']}/{r['sent']} kept, {r['rejected']} rejected; "
                  f"last final input {r['last_final_after_s']:.2f} s after the last end; "
                  f"peak memory {r['memory_mb']:.0f} MB; CPU a frame: {r['cpu_us_per_frame']:.0f} µs in all its "
                  f"processes, {r['storing_us_per_frame']:.0f} µs in the storing one(s) (the rest: receiving and "
                  f"network inputs)")
        port += 10


def paced(args) -> None:
    """At a detector's frame rate: the rate kept, and how far behind the last scan's end the ingest finished."""
    port = 5800
    for workload, scans in (("day", args.scans), ("eiger1m", args.eiger_scans)):
        if scans == 0:  # that workload is not wanted (the bare loop would wait for it for ever)
            continue
        w = WORKLOADS[workload]
        for rate in args.rates:
            for n in args.receivers:
                port += 10
                r = ingest(f"tcp://127.0.0.1:{port}", workload, scans, n, rate)
                print(f"{workload} ({w['shape'][0]}×{w['shape'][1]} {w['encoding']}) at {rate:.0f} Hz, {n} receiver(s): "
                      f"{r['rate']:.0f} frames/s kept up with, {r['kept']}/{r['sent']} kept, scan complete "
                      f"{r['behind_s']:.2f} s after the last end was sent, peak memory {r['memory_mb']:.0f} MB")


if __name__ == "__main__":
    main()
