"""The ingest loop: ZeroMQ PULL → validate → HDF5 per scan → Redis state + preview jobs.

Every malformed or unexpected message is counted under ``rejected:<reason>``,
logged once per reason, and dropped; nothing a sender does stops the loop or
touches other scans. Accepted frames are on disk (HDF5, Bitshuffle-LZ4) before
anything else happens with them.
"""

from __future__ import annotations

import json
import logging
import os
import socket as socketlib
import threading
import time
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import pydantic
import redis
import zmq

from services.ingest.assembly import ScanAssembly
from services.ingest.dectris import DectrisTranslator
from shared import codecs
from shared.messages import End, Frame, Start, parse_header
from shared.settings import Settings
from shared.store import Store

log = logging.getLogger("cdi-live.ingest")


class Rejected(Exception):
    """A message that is dropped; its text is the counted reason."""


def decode_frame(header: Frame, payload: bytes, start: Start, max_bytes: int) -> np.ndarray:
    """Payload bytes → frame array of the start message's shape and dtype."""
    if len(payload) > max_bytes:
        raise Rejected("oversize payload")
    try:
        frame = codecs.decode(payload, header.encoding, start.shape, start.dtype)
    except codecs.CodecError as exc:
        raise Rejected(str(exc)) from None
    if frame.dtype.kind == "f" and not np.isfinite(frame).all():
        raise Rejected("non-finite values in frame")
    return frame


class OpenScan:
    """A scan being acquired: its assembly and its HDF5 file."""

    def __init__(self, start: Start, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.start = start
        self.path = folder / "frames.h5"
        self.file = h5py.File(self.path, "w")
        self.dataset = self.file.create_dataset(
            "frames", (start.frames, *start.shape), start.dtype, chunks=(1, *start.shape), fillvalue=0,
            **hdf5plugin.Bitshuffle(cname="lz4"))
        self.file.create_dataset("received", (start.frames,), bool, fillvalue=False)
        self.file.attrs["start"] = start.model_dump_json()
        self.assembly = ScanAssembly(start)
        self.seq = 0
        self.since_preview = 0

    def write(self, index: int, frame: np.ndarray) -> None:
        self.dataset[index] = frame

    def sync(self) -> None:
        """Record which frames are in and push HDF5's buffers to the OS."""
        self.file["received"][...] = self.assembly.received
        self.file.flush()

    def close(self) -> None:
        self.sync()
        self.file.close()


SYNC_SECONDS = 0.05  # files flushed and Redis state sent at least this often while frames flow


class Ingest:
    """Per-frame work is in memory; files are flushed and Redis is updated in one
    pipeline every ``SYNC_SECONDS`` (and at every start, end and preview), so a
    fast detector costs neither a disk flush nor a Redis round trip per frame."""

    def __init__(self, settings: Settings, store: Store | None = None):
        self.settings = settings
        self.store = store or Store(settings)
        self.scans: dict[str, OpenScan] = {}
        self.logged_reasons: set[str] = set()
        self.counters: dict[str, int] = {}
        self.dirty: set[str] = set()
        self.last_sync = time.monotonic()

    def count(self, name: str, amount: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + amount

    def sync(self, force: bool = False) -> None:
        if not force and time.monotonic() - self.last_sync < SYNC_SECONDS:
            return
        self.last_sync = time.monotonic()
        pipe = self.store.redis.pipeline(transaction=False)
        for name in list(self.dirty):
            scan = self.scans.get(name)
            if scan is not None:
                scan.sync()
                a = scan.assembly
                fields = {"frames_received": a.count, "duplicates": a.duplicates, "out_of_order": a.out_of_order}
                pipe.hset(self.store.keys.scan(name), mapping={k: json.dumps(v) for k, v in fields.items()})
                pipe.publish(self.store.keys.updates, json.dumps(
                    {"event": "progress", "scan": name, "frames_expected": scan.start.frames, **fields}))
        for name, amount in self.counters.items():
            pipe.hincrby(self.store.keys.metrics, name, amount)
        pipe.execute()
        self.dirty.clear()
        self.counters.clear()

    # one message ------------------------------------------------------------
    def handle(self, parts: list[bytes]) -> None:
        try:
            self._handle(parts)
        except Rejected as reason:
            self.reject(str(reason))
        self.sync()

    def reject(self, reason: str) -> None:
        self.count(f"rejected:{reason}")
        self.count("rejected")
        if reason not in self.logged_reasons:
            self.logged_reasons.add(reason)
            log.warning("rejected a message: %s (further ones are only counted)", reason)

    def _handle(self, parts: list[bytes]) -> None:
        if not parts or len(parts[0]) > 65536:
            raise Rejected("missing or oversize header")
        try:
            header = parse_header(parts[0])
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            raise Rejected(f"malformed header ({first['type']})") from None
        if isinstance(header, Start):
            self.on_start(header, parts)
        elif isinstance(header, Frame):
            self.on_frame(header, parts)
        else:
            self.on_end(header, parts)

    def on_start(self, start: Start, parts) -> None:
        if len(parts) != 1:
            raise Rejected("start message with extra parts")
        if start.scan in self.scans:
            raise Rejected("start for a scan already acquiring")
        if len(self.scans) >= self.settings.max_concurrent_scans:
            raise Rejected("too many concurrent scans")
        if int(np.prod(start.shape)) * np.dtype(start.dtype).itemsize > self.settings.max_frame_bytes:
            raise Rejected("declared frame size over the limit")
        existing = self.store.scan(start.scan)
        if existing and existing.get("state") in ("acquiring", "complete"):
            raise Rejected("scan id already used")
        scan = OpenScan(start, self.settings.data_dir / start.scan)
        self.scans[start.scan] = scan
        self.store.create_scan(start.scan, {
            "scan": start.scan, "state": "acquiring", "frames_expected": start.frames, "frames_received": 0,
            "duplicates": 0, "out_of_order": 0, "shape": list(start.shape), "dtype": start.dtype,
            "geometry": start.geometry.model_dump() if start.geometry else None, "raw_file": str(scan.path),
            "started": time.time()})
        self.count("scans_started")
        self.store.publish({"event": "start", "scan": start.scan, "frames_expected": start.frames})

    def on_frame(self, header: Frame, parts) -> None:
        scan = self.scans.get(header.scan)
        if scan is None:
            raise Rejected("frame for an unknown or finished scan")
        if len(parts) != 2:
            raise Rejected("frame message without exactly one data part")
        if header.index >= scan.start.frames:
            raise Rejected("frame index beyond the declared frame count")
        frame = decode_frame(header, parts[1], scan.start, self.settings.max_frame_bytes)
        self.dirty.add(header.scan)
        if not scan.assembly.add(header.index, frame):
            self.count("duplicates")
            return
        scan.write(header.index, frame)
        self.count("frames_in")
        scan.since_preview += 1
        every = self.settings.preview_every or max(4, scan.start.frames // 8)
        if scan.since_preview >= every and scan.assembly.count < scan.start.frames:
            self.enqueue(scan, final=False)

    def on_end(self, end: End, parts) -> None:
        if end.scan not in self.scans:
            raise Rejected("end for an unknown or finished scan")
        self.dirty.add(end.scan)
        self.sync(force=True)
        scan = self.scans.pop(end.scan)
        scan.close()
        missing = scan.assembly.missing
        self.store.update_scan(end.scan, state="complete", missing=missing, ended=time.time())
        self.store.publish({"event": "complete", "scan": end.scan, "missing": missing})
        if scan.assembly.count:
            self.enqueue(scan, final=True)
        else:
            self.store.update_scan(end.scan, state="failed", reason="no frames received")

    def enqueue(self, scan: OpenScan, final: bool) -> None:
        if not final:
            self.sync(force=True)  # the preview never runs ahead of the files and the state
        net_in, crop = scan.assembly.network_input()
        scan.seq += 1
        scan.since_preview = 0
        self.store.redis.xadd(self.store.keys.infer_jobs, {
            "scan": scan.start.scan, "seq": scan.seq, "final": int(final), "frames_used": scan.assembly.count,
            "crop": json.dumps(list(crop)), "input": net_in.astype("<f4").tobytes(), "queued": time.time()},
            maxlen=self.settings.stream_maxlen, approximate=True)
        self.store.update_scan(scan.start.scan, latest_seq=scan.seq)

    def close(self) -> None:
        self.dirty.update(self.scans)
        self.sync(force=True)
        for scan in self.scans.values():
            scan.close()


def serve(settings: Settings, stop: threading.Event | None = None, dectris: str | None = None) -> None:
    """Run until ``stop`` is set (or Ctrl-C); files are closed cleanly either way.

    With ``dectris`` (a detector's stream address) the ingest connects to it and
    translates DECTRIS stream v1 messages instead of binding the native socket.
    """
    stop = stop or threading.Event()
    ingest = Ingest(settings)
    context = zmq.Context.instance()
    socket = context.socket(zmq.PULL)
    socket.setsockopt(zmq.RCVHWM, settings.ingest_hwm)
    socket.setsockopt(zmq.MAXMSGSIZE, settings.max_frame_bytes + 65536)
    translator = DectrisTranslator() if dectris else None
    if dectris:
        socket.connect(dectris)
    else:
        socket.bind(settings.ingest_bind)
    log.info("ingest %s %s", "connected to DECTRIS stream" if dectris else "listening on", dectris or settings.ingest_bind)
    name, last_beat = f"{socketlib.gethostname()}-{os.getpid()}", 0.0
    try:
        while not stop.is_set():
            if time.monotonic() - last_beat > 2:  # for `cdi-live health ingest` and /metrics
                try:
                    ingest.store.heartbeat("ingest", name)
                except redis.RedisError:
                    pass  # frames keep going to disk while Redis is away
                last_beat = time.monotonic()
            if socket.poll(50):
                parts = socket.recv_multipart()
                if translator is not None:
                    try:
                        parts = translator.translate(parts)
                    except ValueError as exc:
                        ingest.reject(str(exc))
                        continue
                ingest.handle(parts)
            else:
                ingest.sync()  # a quiet moment: bring files and Redis up to date
    finally:
        ingest.close()
        socket.close(linger=0)
