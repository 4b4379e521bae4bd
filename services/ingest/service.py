"""The ingest loop: ZeroMQ PULL → validate → HDF5 per scan → Redis state + preview jobs.

Every malformed or unexpected message is counted under ``rejected:<reason>``,
logged once per reason, and dropped; nothing a sender does stops the loop or
touches other scans. Accepted frames are on disk (HDF5, Bitshuffle-LZ4) before
anything else happens with them.

Receiving never waits for computing: the loop only validates, writes the frame
and keeps its region of interest (``assembly``); a network input (peak search,
crop, DCT) is computed by an assembler process beside it, reading the ROI volume
from shared memory, and its job is queued when it is ready. A preview asked for
while one of the same scan is still being computed is skipped as stale
(counted); final inputs always go.
"""

from __future__ import annotations

import functools
import json
import logging
import multiprocessing
import os
import shutil
import socket as socketlib
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np
import pydantic
import redis
import zmq
from threadpoolctl import threadpool_limits

from services.ingest import assembly
from services.ingest.calibration import DetectorFiles
from services.ingest.scanfile import ScanFile
from services.ingest.dectris import DectrisTranslator
from services.ingest.parts import SharedStream
from services.ingest.rejected import Rejected
from services.ingest.receive import Receiver, part_address
from shared.wire import codecs, detector, framefiles
from shared.state import retention, scheduling
from shared.wire.messages import End, Frame, Start, parse_header
from shared.state.settings import Settings
from shared.state.store import Store

log = logging.getLogger("cdi-live.ingest")


MAX_HEADER_BYTES = 65536  # a longer first part is no header


def scan_named(parts: list[bytes]) -> str | None:
    """The scan id a message's header names, if it names one (even a header rejected as malformed)."""
    try:
        scan = json.loads(parts[0]).get("scan") if parts and len(parts[0]) <= MAX_HEADER_BYTES else None
    except (ValueError, AttributeError, UnicodeDecodeError):
        return None
    return scan[:128] if isinstance(scan, str) else None


def receive_frame(header: Frame, payload: bytes, start: Start, max_bytes: int) -> codecs.Received:
    """Payload bytes → the frame as received, checked against the start message's shape and dtype (a
    compressed integer frame by its framing: its pixels are decoded where they are read)."""
    if len(payload) > max_bytes:
        raise Rejected("oversize payload")
    try:
        frame = codecs.Received(payload, header.encoding, start.shape, start.dtype)
    except codecs.CodecError as exc:
        raise Rejected(str(exc)) from None
    if frame.array is not None and frame.array.dtype.kind == "f" and not np.isfinite(frame.array).all():
        raise Rejected("non-finite values in frame")
    return frame


def decode_frame(header: Frame, payload: bytes, start: Start, max_bytes: int) -> np.ndarray:
    """Payload bytes → the whole frame array (every pixel decoded)."""
    try:
        return receive_frame(header, payload, start, max_bytes).full()
    except codecs.CodecError as exc:
        raise Rejected(str(exc)) from None


SYNC_SECONDS = 0.05  # files flushed and Redis state sent at least this often while frames flow


class Ingest:
    """Per-frame work is in memory; files are flushed and Redis is updated in one
    pipeline every ``SYNC_SECONDS`` (and at every start, end and preview), so a
    fast detector costs neither a disk flush nor a Redis round trip per frame.

    Redis writes wait in an outbox until a pipeline succeeds: while Redis is away
    frames keep going to disk, and state, ends and final jobs are sent when it is
    back (previews are skipped meanwhile). Each sync rewrites the open scans' whole
    records, so a Redis that restarted empty is healed.
    """

    def __init__(self, settings: Settings, store: Store | None = None, name: str | None = None):
        self.settings = settings
        self.store = store or Store(settings)
        self.name = name or settings.ingest_bind  # scans this ingest owns (resumed after a restart)
        self.scans: dict[str, ScanFile] = {}
        self.logged_reasons: set[str] = set()
        self.counters: dict[str, int] = {}
        self.dirty: set[str] = set()
        self.outbox: list = []  # callables queuing Redis commands on a pipeline
        self.announced_rejections: set = set()  # (scan, reason) pairs already published as an event
        self.redis_down = False
        self.last_sync = time.monotonic()
        # OpenMP's thread count is per thread: the loop that receives must be the one that constructs us.
        # One thread per frame's (de)compression: more only fought the assembler for the cores.
        threadpool_limits(1, user_api="openmp")
        self.scratch = assembly.scratch_dir(settings.data_dir)
        assembly.remove_stale(self.scratch)
        self.assembler = self.start_assembler()
        self.computing: list[tuple[ScanFile, dict, Future]] = []  # (scan, job fields, input being computed), in order
        self.calibration = DetectorFiles(settings)  # mask, dark and flat-field files, read once
        # several receivers on one stream: this one's part of each scan, met in Redis (``parts``)
        self.shared = SharedStream(self) if settings.ingest_receivers > 1 else None
        self.last_idle = 0.0  # when the receive loop last found its socket empty

    @staticmethod
    def start_assembler() -> ProcessPoolExecutor:
        """One process beside the loop (it dies with us; Ctrl-C is ours to handle), started and warmed now:
        its imports and first transforms are not paid by the first scan's final input."""
        pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=assembly.started)
        pool.submit(assembly.warm_up)
        return pool

    def assemble(self, *request) -> Future:
        """Submit a network input; an assembler process that died (killed, out of memory) is replaced."""
        try:
            return self.assembler.submit(assembly.network_input, *request)
        except BrokenProcessPool:
            log.error("the assembler process died; starting another")
            self.count("assembler_restarts")
            self.assembler = self.start_assembler()
            return self.assembler.submit(assembly.network_input, *request)

    def count(self, name: str, amount: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + amount

    def sync(self, force: bool = False) -> None:
        force = self.collect() or force  # a final input that became ready goes out now
        if not force and time.monotonic() - self.last_sync < SYNC_SECONDS:
            return
        self.last_sync = time.monotonic()
        pipe = self.store.redis.pipeline(transaction=False)
        for op in self.outbox:
            op(pipe)
        for name in list(self.dirty):
            scan = self.scans.get(name)
            if scan is not None:
                scan.sync()  # the file first: it does not depend on Redis
                a = scan.assembly
                known = scan.record.setdefault("detector", {})
                if a.saturated != known.get("saturated_pixels", 0):
                    self.count("saturated_pixels", a.saturated - known.get("saturated_pixels", 0))
                    known["saturated_pixels"] = a.saturated
                if self.shared is not None:
                    self.shared.report(pipe, scan)
                if not scan.owner:
                    continue  # the receiver that got the start keeps the record
                scan.record.update(frames_received=scan.frames_in, duplicates=a.duplicates + scan.others_duplicates,
                                   out_of_order=a.out_of_order)
                self.store.write_scan(name, scan.record, scan.record["started"], pipe)
                self.store.publish({"event": "progress", "scan": name, "frames_expected": scan.start.frames,
                                    "frames_received": scan.frames_in, "duplicates": scan.record["duplicates"]}, pipe)
        for name, amount in self.counters.items():
            pipe.hincrby(self.store.keys.metrics, name, amount)
        try:
            pipe.execute()
        except redis.RedisError as exc:
            if not self.redis_down:
                log.warning("Redis unavailable (%s): frames keep going to disk, state follows when it is back", exc)
            self.redis_down = True
            return  # outbox, dirty scans and counters are kept for the next try
        if self.redis_down:
            log.info("Redis is back: state of %d open scan(s) rewritten", len(self.scans))
        self.redis_down = False
        self.outbox.clear()
        self.dirty.clear()
        self.counters.clear()
        if self.shared is not None:
            self.shared.settle()

    def later(self, name: str, event: dict | None, **fields) -> None:
        """Queue an update of scan ``name``'s record and an event about it for the next successful sync
        (one call binds its own values: nothing is read later from a loop variable)."""
        if fields:
            self.outbox.append(lambda pipe: self.store.update_scan(name, pipe, **fields))
        if event is not None:
            self.outbox.append(lambda pipe: self.store.publish({**event, "scan": name}, pipe))

    def resume(self) -> None:
        """After a restart: continue this ingest's scans that were still acquiring, from their files."""
        try:
            records, _ = self.store.list_scans("acquiring", 10_000, 0)
        except redis.RedisError as exc:
            log.warning("cannot look for scans to resume (%s)", exc)
            return
        for record in records:
            if record.get("ingest") != self.name or record["scan"] in self.scans:
                continue
            path = self.settings.data_dir / record["scan"] / self.file_name()
            try:
                scan = ScanFile.reopen(path, record, self.settings.ingest_roi_px, self.scratch)
            except Exception as exc:  # unreadable after a crash: say so rather than leave it acquiring
                reason = f"raw file unreadable after an ingest restart ({type(exc).__name__})"
                self.store.update_scan(record["scan"], state="failed", reason=reason)
                log.error("scan %s: %s", record["scan"], reason)
                continue
            self.scans[record["scan"]] = scan
            self.dirty.add(record["scan"])
            log.info("resumed scan %s with %d of %d frames", record["scan"], scan.assembly.count, scan.start.frames)
        self.sync(force=True)

    # one message ------------------------------------------------------------
    def handle(self, parts: list[bytes]) -> None:
        try:
            self._handle(parts)
        except Rejected as reason:
            self.reject(str(reason), scan_named(parts))
        except Exception:  # a bug or a full disk must cost one message, never the ingest
            log.exception("internal error on a message (dropped, counted)")
            self.reject("internal error")
        self.sync()

    def reject(self, reason: str, scan: str | None = None) -> None:
        """Counted by reason (``/metrics``), logged once per reason, and an event ``rejected`` for operators
        once per scan and reason (the page shows it): a scan refused at its start is seen, not only logged."""
        self.count(f"rejected:{reason}")
        self.count("rejected")
        if reason not in self.logged_reasons:
            self.logged_reasons.add(reason)
            log.warning("rejected a message: %s (further ones are only counted)", reason)
        if (scan, reason) not in self.announced_rejections:
            if len(self.announced_rejections) >= 10_000:  # bounded: a flood of bad messages costs no memory
                self.announced_rejections.clear()
            self.announced_rejections.add((scan, reason))
            event = {"event": "rejected", "reason": reason, **({"scan": scan} if scan else {})}
            self.outbox.append(lambda pipe: self.store.publish(event, pipe))

    def _handle(self, parts: list[bytes]) -> None:
        if not parts or len(parts[0]) > MAX_HEADER_BYTES:
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
        if len(parts) != (2 if start.pixel_mask is not None else 1):
            raise Rejected("start message with a pixel_mask needs exactly one mask part" if start.pixel_mask
                           else "start message with extra parts")
        if start.scan in self.scans:
            raise Rejected("start for a scan already acquiring")
        if len(self.scans) >= self.settings.max_concurrent_scans:
            raise Rejected("too many concurrent scans")
        if int(np.prod(start.shape)) * np.dtype(start.dtype).itemsize > self.settings.max_frame_bytes:
            raise Rejected("declared frame size over the limit")
        roi = [min(n, self.settings.ingest_roi_px or n) for n in start.shape]
        if start.frames * int(np.prod(roi)) * 4 > self.settings.max_scan_bytes:  # float32 ROI in memory
            raise Rejected("declared scan size over the limit")
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        full = retention.low_on_space(shutil.disk_usage(self.settings.data_dir).free, self.settings.min_free_gb)
        if full:  # refused whole, at its start: scans already acquiring keep their room
            self.later(start.scan, {"event": "refused", "reason": full})
            raise Rejected("disk nearly full (MIN_FREE_GB)")
        try:
            existing = self.store.scan(start.scan)
        except redis.RedisError:
            existing = None  # Redis away: the files are the record until it is back
        if existing and existing.get("state") in ("acquiring", "complete"):
            raise Rejected("scan id already used")
        if start.proposal is None:  # whose data the scan is, in the record and in every file of it
            start = start.model_copy(update={"proposal": self.settings.default_proposal})
        mask, source = self.calibration.pixel_mask(start, parts[1] if len(parts) > 1 else None)
        dark = self.calibration.dark(start.shape)
        flat, flat_source = self.calibration.flat_field(start.shape)
        record = {"scan": start.scan, "state": "acquiring", "frames_expected": start.frames, "frames_received": 0,
                  "duplicates": 0, "out_of_order": 0, "shape": list(start.shape), "dtype": start.dtype,
                  "geometry": start.geometry.model_dump() if start.geometry else None, "started": time.time(),
                  "ingest": self.name, "proposal": start.proposal,
                  "detector": {**detector.summary(mask, source), "saturation_value": start.saturation_value,
                               "dark": str(self.settings.dark_file) if dark is not None else None,
                               "flat_field": flat_source}}
        scan = ScanFile.create(start, self.settings.data_dir / start.scan, record, self.settings.ingest_roi_px,
                               self.scratch, mask, source, dark, flat, name=self.file_name())
        self.scans[start.scan] = scan
        self.outbox.append(lambda pipe: self.store.create_scan(start.scan, scan.record, pipe))
        if self.shared is not None:  # the other receivers open their parts from it
            self.shared.announce_start(start, parts[1] if start.pixel_mask is not None else None)
        self.later(start.scan, {"event": "start", "frames_expected": start.frames})
        self.count("scans_started")
        self.sync(force=True)

    def file_name(self) -> str:
        return "frames.h5" if self.shared is None else framefiles.part_name(self.settings.ingest_receiver)

    def on_frame(self, header: Frame, parts) -> None:
        scan = self.scans.get(header.scan)
        if scan is None and self.shared is not None:
            scan = self.shared.join(header.scan, parts)
            if scan is None:
                return  # held until the receiver that got its start announces it
        if scan is None:
            raise Rejected("frame for an unknown or finished scan")
        if len(parts) != 2:
            raise Rejected("frame message without exactly one data part")
        if header.index >= scan.start.frames:
            raise Rejected("frame index beyond the declared frame count")
        frame = receive_frame(header, parts[1], scan.start, self.settings.max_frame_bytes)
        self.dirty.add(header.scan)
        scan.last_activity = time.monotonic()
        try:
            added = scan.add(header.index, frame)
        except codecs.CodecError as exc:  # blocks that do not decompress: nothing was kept
            raise Rejected(str(exc)) from None
        if not added:
            self.count("duplicates")
            return
        self.count("frames_in")
        if self.shared is None:  # several receivers: the scan's owner asks, from every receiver's count
            self.preview_if_due(scan)

    def preview_if_due(self, scan: ScanFile) -> None:
        """A preview about every ``scheduling.PREVIEW_INTERVAL_S`` (or every PREVIEW_EVERY frames, where set)
        while the scan is being taken."""
        acquiring = time.monotonic() - scan.opened
        every = self.settings.preview_every or scheduling.preview_every(scan.frames_in, acquiring, scan.frames_at_open)
        if scan.frames_in - scan.previewed_at < every or scan.frames_in >= scan.start.frames:
            return
        if not scheduling.preview_worth_asking(scan.frames_in, scan.start.frames, acquiring,
                                               self.settings.preview_min_left_s, scan.frames_at_open):
            scan.previewed_at = scan.frames_in
            self.count("previews_skipped_ending")  # the final input comes first
            return
        self.enqueue(scan, final=False)

    def on_end(self, end: End, parts) -> None:
        if self.shared is not None:  # every receiver settles its part; the owner then ends the scan
            self.shared.on_end(end, parts)
            return
        if end.scan not in self.scans:
            raise Rejected("end for an unknown or finished scan")
        self.dirty.add(end.scan)
        self.sync(force=True)
        scan = self.scans.pop(end.scan)
        scan.place_roi_if_clear(now=True)  # from the file, while it is open: the final input needs the ROI
        self.finish(scan, end, lambda ending: scan.close(ending))

    def finish(self, scan: ScanFile, end: End, close, received: np.ndarray | None = None) -> None:
        """The scan's end: its state, its file(s) closed (``close(ending)``), the final input asked for.
        ``received``: the frames every receiver on the stream got (several), else this one's."""
        count = scan.assembly.count if received is None else int(received.sum())
        fields = {"state": "complete", "frames_received": count} if count else \
            {"state": "failed", "reason": "no frames received"}
        if end.aborted:  # the control system stopped it: failed, frames kept, no final input
            fields = {"state": "failed", "reason": f"acquisition aborted: {end.aborted}", "frames_received": count}
        close({**fields, "ended": time.time()})
        missing = scan.start.frames - count
        if scan.assembly.placed:  # where the signal is on the detector: refinement reads around it
            fields["roi"] = {"corner": [int(c) for c in scan.assembly.roi],
                             "shape": [int(n) for n in scan.assembly.roi_px]}
        event = {"event": "complete", "missing": missing} if fields["state"] == "complete" else \
            {"event": "failed", "reason": fields["reason"]}
        self.later(end.scan, event, missing=missing, ended=time.time(), **fields)
        if count and not end.aborted:
            # asked before any sync: a sync collects finished previews and frees the ROI of a closed scan
            # with nothing left computing. Its job goes out after the state, which is already in the outbox.
            self.enqueue(scan, final=True)
        self.sync(force=True)  # the scan is known complete before its (slower) final input is computed
        self.release_if_idle(scan)

    def enqueue(self, scan: ScanFile, final: bool) -> None:
        """Ask the assembler for the current (possibly partial) network input; its job is queued by
        :meth:`collect` when it is ready.

        Previews are skipped while Redis is away, the inference backlog is deep, or the assembler
        is still computing an input (back-pressure: they would be stale anyway, and a final input
        asked next waits for one input at most); final jobs always go, and never through MAXLEN
        trimming (the workers trim what they have acknowledged)."""
        scan.previewed_at = scan.frames_in
        if not final:
            busy = any(not f.done() for _, _, f in self.computing)
            if busy or self.redis_down or self.backlog() > self.settings.stream_maxlen // 2:
                self.count("previews_skipped_busy" if busy else "previews_skipped_backpressure")
                return
            self.sync(force=True)  # the preview never runs ahead of the files and the state
        scan.seq += 1
        scan.record["latest_seq"] = scan.seq
        snapshot = {"scan": scan.start.scan, "seq": scan.seq, "final": int(final),
                    "frames_used": scan.frames_in, "queued": time.time()}
        scan.place_roi_if_clear(now=True)  # (open scans: a final's was placed before its file closed)
        self.computing.append((scan, snapshot, self.assemble(*scan.assembly.input_request(final))))

    def collect(self) -> bool:
        """Queue the jobs of network inputs the assembler has finished, in the order asked; True if a
        final one was among them (it is worth a sync at once)."""
        finals = False
        while self.computing and self.computing[0][2].done():
            scan, snapshot, future = self.computing.pop(0)
            name, final = scan.start.scan, bool(snapshot["final"])
            try:
                net_in, crop, *warnings = future.result()
            except Exception as exc:  # a bug must cost one input, never the ingest; a final one fails its scan
                log.error("network input of scan %s failed: %s: %s", name, type(exc).__name__, exc)
                self.count("inputs_failed")
                if final:
                    reason = f"network input failed ({type(exc).__name__})"
                    self.later(name, {"event": "failed", "reason": reason}, state="failed", reason=reason)
                    finals = True
                self.release_if_idle(scan)
                continue
            scan.assembly.input_done(crop, snapshot["frames_used"])
            self.release_if_idle(scan)
            if warnings and warnings[0]:  # the operator must move the detector or attenuate
                self.later(name, {"event": "flagged", "flags": warnings[0]}, flags=warnings[0])
                self.count("scans_flagged")
                log.warning("scan %s: %s", name, ", ".join(warnings[0]))
            job = {**snapshot, "crop": json.dumps(list(crop)), "input": net_in.astype("<f4").tobytes()}
            self.outbox.append(lambda pipe, job=job: pipe.xadd(self.store.keys.infer_jobs, job))
            self.later(name, None, latest_seq=job["seq"])
            finals = finals or final
        return finals

    def release_if_idle(self, scan: ScanFile) -> None:
        """Free a closed scan's ROI volume once no network input of it is being computed."""
        if self.scans.get(scan.start.scan) is not scan and not any(s is scan for s, _, _ in self.computing):
            scan.assembly.release()

    def drain(self) -> None:
        """Wait for every network input asked for, then queue their jobs (a stop, a test)."""
        for _, _, future in list(self.computing):
            future.exception()  # waits; a failure is handled by collect
        self.sync(force=True)

    def backlog(self) -> int:
        """Jobs of the inference stream not yet delivered to a worker."""
        try:
            groups = self.store.redis.xinfo_groups(self.store.keys.infer_jobs)
        except redis.RedisError:
            return 0
        return max([int(g.get("lag") or 0) for g in groups if g["name"] in (b"infer", "infer")] or [0])

    def expire_idle(self) -> None:
        """Close scans that have been silent too long (a sender that died, or never meant to end):
        they must not hold a concurrent-scan slot forever. Frames stay on disk; the scan is failed."""
        now = time.monotonic()
        for name, scan in list(self.scans.items()):
            if now - scan.last_activity > self.settings.scan_idle_timeout_s:
                reason = f"no message for {self.settings.scan_idle_timeout_s:g} s; closed with " \
                         f"{scan.assembly.count} of {scan.start.frames} frames on disk"
                if not scan.owner:  # another receiver's scan: this part is closed, the owner says the rest
                    self.shared.close_part(scan)
                    continue
                self.scans.pop(name).close({"state": "failed", "reason": reason, "ended": time.time()})
                self.release_if_idle(scan)
                self.later(name, {"event": "failed", "reason": reason}, state="failed", reason=reason,
                           frames_received=scan.assembly.count)
                self.count("scans_expired")
                log.warning("scan %s: %s", name, reason)
                self.sync(force=True)

    def close(self) -> None:
        self.assembler.shutdown(wait=True)  # final inputs already asked for are not lost
        self.collect()
        self.dirty.update(self.scans)
        self.sync(force=True)
        for scan in self.scans.values():
            scan.close()
            scan.assembly.release()  # a restarted ingest rebuilds it from the file


def native_messages(parts: list[bytes], translator: DectrisTranslator | None, ingest: Ingest) -> list[list[bytes]]:
    """A received message as native messages: itself, or a DECTRIS message translated (a bad one is counted)."""
    if translator is None:
        return [parts]
    try:
        return translator.translate(parts)
    except ValueError as exc:
        ingest.reject(str(exc))
        return []


def serve(settings: Settings, stop: threading.Event | None = None, dectris: str | None = None,
          dectris_version: int | None = None, pva: dict | None = None) -> None:
    """Run until ``stop`` is set (or Ctrl-C); files are closed cleanly either way.

    With ``dectris`` (a detector's stream address) the ingest connects to it and
    translates DECTRIS stream messages (v1 or v2: ``dectris_version``, None to tell
    them apart per message) instead of binding the native socket. With ``pva``
    ({"channel", and PvaTranslator's arguments}) it also subscribes to an areaDetector
    NTNDArray channel over EPICS pvAccess (``services.ingest.pva``).
    """
    stop = stop or threading.Event()
    k = settings.ingest_receiver
    address = dectris or part_address(settings.ingest_bind, k)  # native: each receiver binds its own port
    ingest = Ingest(settings, name=address if settings.ingest_receivers == 1 or not dectris else f"{dectris}#{k}")
    ingest.resume()
    context = zmq.Context.instance()
    translator = DectrisTranslator(version=dectris_version, shared=settings.ingest_receivers > 1) if dectris else None
    receiver = Receiver(context, address, not dectris, ingest.scratch, settings.ingest_hwm,
                        settings.max_frame_bytes + MAX_HEADER_BYTES, ring_mb=settings.ingest_ring_mb)
    socket = receiver.socket
    log.info("ingest %s %s%s", "connected to DECTRIS stream" if dectris else "listening on", address,
             f" (receiver {k} of {settings.ingest_receivers})" if settings.ingest_receivers > 1 else "")
    poller = zmq.Poller()
    poller.register(socket, zmq.POLLIN)
    pva_receiver = from_pva = None
    if pva:  # the areaDetector channel: a receiving process of its own, the same hand-over
        pva_receiver = Receiver(context, None, False, ingest.scratch, settings.ingest_hwm, 0, pva=pva,
                                ring_mb=settings.ingest_ring_mb)
        from_pva = pva_receiver.socket
        poller.register(from_pva, zmq.POLLIN)
        log.info("ingest subscribed to pvAccess channel %s", pva["channel"])
    receivers = [r for r in (receiver, pva_receiver) if r is not None]
    name, last_beat, last_expiry = f"{socketlib.gethostname()}-{os.getpid()}", 0.0, time.monotonic()
    try:
        while not stop.is_set():
            if time.monotonic() - last_beat > 2:  # for `cdi-live health ingest` and /metrics
                try:
                    ingest.store.heartbeat("ingest", name)
                except redis.RedisError:
                    pass  # frames keep going to disk while Redis is away
                last_beat = time.monotonic()
            ready = dict(poller.poll(50))
            if socket in ready:
                for message in native_messages(receiver.recv_multipart(), translator, ingest):
                    ingest.handle(message)
                receiver.release()
            if from_pva is not None and from_pva in ready:
                ingest.handle(pva_receiver.recv_multipart())
                pva_receiver.release()
            if not ready:
                ingest.last_idle = time.monotonic()  # everything handed over so far is handled
                ingest.sync()  # a quiet moment: bring files and Redis up to date
            if time.monotonic() - last_expiry > 1:
                for r in receivers:
                    if r.restart_if_dead():
                        log.error("a receiving process died; another one receives now")
                        ingest.count("receiver_restarts")
                if pva_receiver is not None:
                    counted(pva_receiver, ingest)
                ingest.expire_idle()
                last_expiry = time.monotonic()
    finally:
        def store(r: Receiver, parts) -> None:
            for message in native_messages(parts, translator if r is receiver else None, ingest):
                ingest.handle(message)

        for r in receivers:  # the stream's address is free; what was received is stored, none dropped
            r.close(functools.partial(store, r))
        if pva_receiver is not None:
            counted(pva_receiver, ingest)
        ingest.close()
        for r in receivers:
            r.close_socket()


def counted(receiver: Receiver, ingest: Ingest) -> None:
    """A pvAccess receiver's rejections and loss counters, into the ingest's."""
    for report in receiver.reported():
        for reason in report["rejected"]:
            ingest.reject(reason)
        for counter, amount in report["counters"].items():
            ingest.count(counter, amount)
