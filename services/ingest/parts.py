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
for previews, and, when every part is done, writes ``frames.h5`` (``shared.framefiles``), marks the scan
complete and asks for the final input. ``<prefix>:parts:ending`` lists scans with an end announced, so a
receiver that got none of a scan's frames says so too.
"""

from __future__ import annotations

import json
import time

import redis

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
        out = {"start": raw[b"start"].decode(), "mask": raw.get(b"mask"), "owner": int(raw[b"owner"]),
               "finished": b"finished" in raw, "parts": {}}
        for name in ("roi", "end"):
            out[name] = json.loads(raw[name.encode()]) if name.encode() in raw else None
        for field, value in raw.items():
            if field.startswith(b"part:"):
                out["parts"][int(field[5:])] = json.loads(value)
        return out

    def total(self, shared: dict, own_count: int) -> int:
        """Frames counted by every receiver (this one's live count in place of its last report)."""
        return own_count + sum(p.get("frames", 0) for k, p in shared["parts"].items() if k != self.receiver)

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
