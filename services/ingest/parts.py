"""Several receivers on one stream: each keeps its part of a scan, the scan's record is assembled from all.

ZeroMQ deals a stream's messages round-robin among the PULL sockets on it (a DECTRIS detector among
its clients; a control system's PUSH among the addresses it connects to), so with N receivers each
gets about 1/N of a scan's frames, and the start and the end reach one receiver each. The receivers
meet in Redis, in one hash per scan (``<prefix>:parts:<scan>``):

``start``, ``mask``  the start message and its pixel-mask part, put by the receiver that got it (the *owner*)
``owner``            that receiver's index
``roi``              {"path", "corner"}: the owner's ROI volume once placed (shared memory); the others
                     write their frames' ROI into it, so previews see every frame
``end``              the end message, put by whichever receiver got it
``part:<k>``         receiver k's part: frames, duplicates, out of order, saturated pixels, ``roi_written``
                     (all its frames are in the owner's ROI volume) and ``done`` (its file is closed)

A receiver's part is done once the end is known and either every frame of the scan is counted, or
its own socket has been found empty ``GRACE_S`` after it learnt of the end (frames sent before the end
were in its queue by then). The owner keeps the record (frames received: the sum of the parts), asks
for previews, and, when every part is done, writes ``frames.h5`` (``shared.wire.framefiles``), marks the scan
complete and asks for the final input. ``<prefix>:parts:ending`` lists scans with an end announced, so a
receiver that got none of a scan's frames says so too.
"""

from __future__ import annotations

import json
import logging
import os
import time

import h5py
import numpy as np
import redis

from services.ingest.rejected import Rejected
from services.ingest.scanfile import ScanFile
from shared.wire import framefiles
from shared.wire.messages import End, Start

log = logging.getLogger("cdi-live.ingest")

GRACE_S = 0.2  # after learning of the end: frames in flight have reached a receiver's queue
WAIT_FOR_PARTS_S = 30.0  # a receiver silent this long after the end is left out (its file is still read)
HOLD_S = 5.0  # a frame whose scan's start has not been announced yet is held this long, then rejected
HOLD_MAX = 20_000  # messages held at most (bounded memory while a start is late)


class Parts:
    """This receiver's view of the shared hashes (one Redis round trip per sync for all open scans)."""

    def __init__(self, client: redis.Redis, prefix: str, receiver: int, receivers: int):
        self.redis, self.prefix, self.receiver, self.receivers = client, prefix, receiver, receivers
        self.ending_key = f"{prefix}:parts:ending"

    def key(self, scan: str) -> str:
        return f"{self.prefix}:parts:{scan}"

    # written in the ingest's sync pipeline ------------------------------------------------
    def announce_start(self, pipe, start_json: str, mask: bytes | None) -> None:
        scan = json.loads(start_json)["scan"]
        pipe.delete(self.key(scan))
        pipe.hset(self.key(scan), mapping={"start": start_json, "owner": self.receiver,
                                           **({"mask": mask} if mask is not None else {})})

    def announce_roi(self, pipe, scan: str, path: str, corner) -> None:
        pipe.hset(self.key(scan), "roi", json.dumps({"path": path, "corner": [int(c) for c in corner]}))

    def announce_end(self, pipe, scan: str, end_json: str) -> None:
        pipe.hset(self.key(scan), "end", end_json)
        pipe.sadd(self.ending_key, scan)

    def report(self, pipe, scan: str, state: dict) -> None:
        pipe.hset(self.key(scan), f"part:{self.receiver}", json.dumps(state))

    def finished(self, pipe, scan: str) -> None:
        """The owner has ended the scan: late frames are refused, the hash goes in an hour."""
        pipe.srem(self.ending_key, scan)
        pipe.hset(self.key(scan), "finished", 1)
        pipe.expire(self.key(scan), 3600)

    # read -------------------------------------------------------------------------------
    def lookup(self, scan: str) -> dict | None:
        """A scan's shared state (None: no receiver has announced its start)."""
        return self.decode(self.redis.hgetall(self.key(scan)))

    def read(self, scans: list[str]) -> tuple[dict[str, dict], list[str]]:
        """The shared state of ``scans``, and the scans whose end is announced."""
        pipe = self.redis.pipeline(transaction=False)
        for scan in scans:
            pipe.hgetall(self.key(scan))
        pipe.smembers(self.ending_key)
        *states, ending = pipe.execute()
        return ({scan: self.decode(raw) for scan, raw in zip(scans, states) if raw},
                [s.decode() for s in ending])

    @staticmethod
    def decode(raw: dict) -> dict | None:
        if not raw or b"start" not in raw:
            return None
        out = {"start": raw[b"start"].decode(), "mask": raw.get(b"mask"),
               "finished": b"finished" in raw, "parts": {}}
        for name in ("roi", "end"):
            out[name] = json.loads(raw[name.encode()]) if name.encode() in raw else None
        for field, value in raw.items():
            if field.startswith(b"part:"):
                out["parts"][int(field[5:])] = json.loads(value)
        return out

    def others(self, shared: dict, field: str) -> int:
        """``field`` (frames, duplicates) summed over the other receivers' last reports."""
        return sum(p.get(field, 0) for k, p in shared["parts"].items() if k != self.receiver)

    def all_done(self, shared: dict) -> bool:
        return all(shared["parts"].get(k, {}).get("done") for k in range(self.receivers))


class Ending:
    """When this receiver learnt of a scan's end, and whether its socket has been empty since."""

    def __init__(self):
        self.learnt: dict[str, float] = {}

    def drained(self, scan: str, last_idle: float, now: float | None = None) -> bool:
        learnt = self.learnt.setdefault(scan, now or time.monotonic())
        return last_idle > learnt + GRACE_S

    def forget(self, scan: str) -> None:
        self.learnt.pop(scan, None)


class SharedStream:
    """This receiver's side of a stream it shares with others: its parts of their scans, met in Redis.

    The ingest calls it where one receiver would act alone: at a start (:meth:`announce_start`), a frame of
    a scan it did not start (:meth:`join`), an end (:meth:`on_end`), each sync (:meth:`report`,
    :meth:`settle`) and an idle part (:meth:`close_part`)."""

    def __init__(self, ingest):
        settings = ingest.settings
        self.ingest = ingest
        self.parts = Parts(ingest.store.redis, settings.key_prefix, settings.ingest_receiver, settings.ingest_receivers)
        self.ending = Ending()
        self.held: dict[str, list] = {}  # messages of scans whose start another receiver has not announced yet
        self.held_since: dict[str, float] = {}
        self.settling = False

    def announce_start(self, start: Start, mask_part: bytes | None) -> None:
        self.ingest.outbox.append(lambda pipe: self.parts.announce_start(pipe, start.model_dump_json(), mask_part))

    def on_end(self, end: End, message: list[bytes]) -> None:
        """An end that reached this receiver: announced to all (held while its start is not)."""
        if end.scan not in self.ingest.scans and (end.scan in self.held or self.parts.lookup(end.scan) is None):
            self.hold(end.scan, message)  # its start has not been announced yet: after it, or rejected
            return
        self.ingest.outbox.append(lambda pipe: self.parts.announce_end(pipe, end.scan, end.model_dump_json()))
        self.ingest.sync(force=True)

    def report(self, pipe, scan: ScanFile) -> None:
        self.parts.report(pipe, scan.start.scan, self.part_state(scan))

    def close_part(self, scan: ScanFile) -> None:
        """This receiver's part of another's scan closed (idle): its file, its view of the ROI, its report."""
        name = scan.start.scan
        self.ingest.scans.pop(name).close()
        scan.assembly.release()  # the volume is the owner's: only this view of it goes
        scan.part_done = True
        self.ending.forget(name)
        self.ingest.outbox.append(lambda pipe: self.parts.report(pipe, name, self.part_state(scan)))

    def settle(self) -> None:
        """Bring each open scan's part up to date with the other receivers' (one Redis round trip): release
        held frames whose start is announced, join the ROI, ask for previews (owner), close a part whose
        end is known and whose frames are all in, and end a scan whose parts are all done (owner)."""
        if self.settling:  # a held message handled from here syncs again
            return
        self.settling = True
        try:
            self._settle()
        except redis.RedisError as exc:
            log.warning("cannot read the other receivers' parts now (%s)", exc)
        finally:
            self.settling = False

    @staticmethod
    def part_state(scan: ScanFile) -> dict:
        a = scan.assembly
        return {"frames": a.count, "duplicates": a.duplicates, "out_of_order": a.out_of_order,
                "saturated": a.saturated, "roi_written": a.placed, "done": scan.part_done}

    def join(self, name: str, message: list[bytes]) -> ScanFile | None:
        """This receiver's part of a scan another receiver started, opened at its first frame here; None
        while no receiver has announced the start (the frame is held, and handled once it is)."""
        if name not in self.held:
            try:
                shared = self.parts.lookup(name)
            except redis.RedisError:
                shared = None
            if shared is not None:
                if shared["finished"]:
                    raise Rejected("frame for an unknown or finished scan")
                return self.open_part(name, shared)
        self.hold(name, message)
        return None

    def hold(self, name: str, message: list[bytes]) -> None:
        """Keep a message of a scan whose start no receiver has announced yet (it may be on its way)."""
        if sum(map(len, self.held.values())) >= HOLD_MAX:
            raise Rejected("frame for an unknown or finished scan")
        self.held.setdefault(name, []).append([bytes(part) for part in message])  # its parts lie in the hand-over ring
        self.held_since.setdefault(name, time.monotonic())

    def open_part(self, name: str, shared: dict) -> ScanFile:
        start = Start.model_validate_json(shared["start"])
        if len(self.ingest.scans) >= self.ingest.settings.max_concurrent_scans:
            raise Rejected("too many concurrent scans")
        mask, source = self.ingest.calibration.pixel_mask(start, shared["mask"])
        dark = self.ingest.calibration.dark(start.shape)
        flat, _ = self.ingest.calibration.flat_field(start.shape)
        settings = self.ingest.settings
        record = {"scan": name, "started": time.time(), "ingest": self.ingest.name}  # the owner's is the record
        scan = ScanFile.create(start, settings.data_dir / name, record, settings.ingest_roi_px, self.ingest.scratch,
                               mask, source, dark, flat, name=self.ingest.file_name(), follower=True)
        scan.owner = False
        self.ingest.scans[name] = scan
        self.ingest.dirty.add(name)
        self.join_roi(scan, shared)
        return scan

    @staticmethod
    def join_roi(scan: ScanFile, shared: dict) -> None:
        """Write this part's frames into the owner's ROI volume once it is placed (on this node)."""
        roi = shared.get("roi")
        if roi and not scan.assembly.placed and os.path.exists(roi["path"]):
            scan.assembly.join(roi["path"], roi["corner"], scan.read_block)

    def _settle(self) -> None:
        now = time.monotonic()
        states, ending = self.parts.read(list({*self.ingest.scans, *self.held}))
        others = [name for name in ending if name not in self.ingest.scans and name not in states]
        if others:
            states.update(self.parts.read(others)[0])
        for name in list(self.held):
            if name in states and not states[name]["finished"]:
                messages = self.held.pop(name)
                self.held_since.pop(name, None)
                try:
                    self.ingest.scans.get(name) or self.open_part(name, states[name])
                except Rejected as reason:
                    for _ in messages:
                        self.ingest.reject(str(reason), name)
                    continue
                for message in messages:
                    self.ingest.handle(message)
            elif now - self.held_since.get(name, now) > HOLD_S or name in states:
                for message in self.held.pop(name):
                    self.ingest.reject("frame for an unknown or finished scan", name)
                self.held_since.pop(name, None)
        for name, shared in states.items():
            scan = self.ingest.scans.get(name)
            if scan is None:  # a scan none of whose frames came here: say so once its end is known
                if shared["end"] and self.parts.receiver not in shared["parts"] and \
                        self.ending.drained(name, self.ingest.last_idle, now):
                    self.ingest.outbox.append(lambda pipe, name=name: self.parts.report(
                        pipe, name, {"frames": 0, "duplicates": 0, "out_of_order": 0, "saturated": 0,
                                     "roi_written": True, "done": True}))
                    self.ending.forget(name)
                continue
            scan.others = self.parts.others(shared, "frames")
            scan.others_duplicates = self.parts.others(shared, "duplicates")
            if shared["end"] is not None:
                self.ending.learnt.setdefault(name, now)
            if scan.owner:
                self.settle_owner(scan, shared, now)
            else:
                self.settle_follower(scan, shared, now)

    def settle_owner(self, scan: ScanFile, shared: dict, now: float) -> None:
        name = scan.start.scan
        if scan.assembly.placed and not scan.roi_announced:
            scan.roi_announced = True
            self.ingest.outbox.append(lambda pipe: self.parts.announce_roi(pipe, name, str(scan.assembly.path),
                                                                    scan.assembly.roi))
            self.ingest.dirty.add(name)
        if shared["end"] is None:
            self.ingest.preview_if_due(scan)
            return
        if not scan.assembly.placed:  # the end is known: the others write their frames into the ROI now
            scan.place_roi_if_clear(now=True)
            self.ingest.dirty.add(name)
            return
        if not scan.part_done and self.drained(scan, now):
            scan.part_done = True
            self.ingest.dirty.add(name)
            return
        waited = now - self.ending.learnt.get(name, now)
        if scan.part_done and (self.parts.all_done(shared) or waited > WAIT_FOR_PARTS_S):
            if not self.parts.all_done(shared):
                log.warning("scan %s: receivers %s did not report; ended with the frames their files hold", name,
                            sorted(set(range(self.parts.receivers)) - {k for k, p in shared["parts"].items()
                                                                       if p.get("done")}))
            self.end_parts(scan, shared)

    def drained(self, scan: ScanFile, now: float) -> bool:
        """This receiver has every frame of ``scan`` it will get: all are counted, or its queue has drained
        since it learnt of the end."""
        return scan.frames_in >= scan.start.frames or \
            self.ending.drained(scan.start.scan, self.ingest.last_idle, now)

    def settle_follower(self, scan: ScanFile, shared: dict, now: float) -> None:
        name = scan.start.scan
        if not scan.assembly.placed:
            self.join_roi(scan, shared)
            if scan.assembly.placed:
                self.ingest.dirty.add(name)
        if shared["end"] is None:
            return
        roi_waited = now - self.ending.learnt.get(name, now) > GRACE_S * 10
        if self.drained(scan, now) and (scan.assembly.placed or roi_waited):
            self.close_part(scan)

    def end_parts(self, scan: ScanFile, shared: dict) -> None:
        """The owner ends a scan every receiver is done with: ``frames.h5`` over their files, the frames
        whose ROI no receiver wrote read from it, then the end as with one receiver."""
        name = scan.start.scan
        self.ingest.scans.pop(name)
        self.ending.forget(name)
        folder = scan.path.parent
        end = End.model_validate_json(json.dumps(shared["end"]))
        own = scan.assembly.received.copy()

        def close(ending: dict) -> None:
            scan.close(ending)
            parts = sorted(folder.glob("frames-*.h5"))
            framefiles.write_virtual(folder, parts, {"start": scan.start.model_dump_json(),
                                                     "started": scan.record["started"], "end": json.dumps(ending)})
            scan.record["raw_file"] = str(folder / "frames.h5")
            self.ingest.later(name, None, raw_file=scan.record["raw_file"])

        received, a = own.copy(), scan.assembly
        rows, cols = (slice(c, c + n) for c, n in zip(a.roi, a.roi_px))
        for path in folder.glob("frames-*.h5"):
            if path == scan.path:
                continue
            written = shared["parts"].get(int(path.stem.split("-")[1]), {}).get("roi_written")
            try:
                with h5py.File(path, "r") as f, framefiles.FrameWindows(f) as stored:
                    theirs = f["received"][()]
                    if not written:  # a receiver on another node: its frames' ROI read from its file
                        for index in np.flatnonzero(theirs & ~received):
                            a.volume[index] = a.counts(stored.window(index, rows, cols), a.roi)
            except (OSError, KeyError) as exc:
                log.warning("scan %s: %s unreadable (%s); its frames are left out", name, path.name, exc)
                continue
            received |= theirs
        scan.others = int(received.sum()) - a.count
        self.ingest.finish(scan, end, close, received)
        self.ingest.outbox.append(lambda pipe: self.parts.finished(pipe, name))
