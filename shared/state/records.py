"""Scan records: one Redis hash per scan (field → JSON), the scans' index by start time, and a version
that changes whenever any record does."""

from __future__ import annotations

import json
import time

from shared.state import results


class Records:
    """Create, update, list, read and delete scan records.
    Part of ``Store``: uses its ``redis``, ``keys`` and ``settings``."""

    def create_scan(self, scan: str, fields: dict, pipe=None) -> None:
        """A new scan's record (results of an earlier scan of that id are dropped).

        With ``pipe`` the commands are only queued on it (the ingest batches its writes)."""
        p = pipe if pipe is not None else self.redis.pipeline()
        self._forget(scan, p)
        self.write_scan(scan, fields, fields.get("started", time.time()), p)
        if pipe is None:
            p.execute()

    def write_scan(self, scan: str, fields: dict, started: float, pipe) -> None:
        """(Re)write a scan's record and list entry: idempotent, so it also heals a Redis that restarted empty."""
        self._write_record(pipe, scan, fields)
        pipe.zadd(self.keys.scans, {scan: started})

    def update_scan(self, scan: str, pipe=None, **fields) -> None:
        target = self.redis.pipeline(transaction=False) if pipe is None else pipe
        self._write_record(target, scan, fields)
        if pipe is None:
            target.execute()

    def _write_record(self, pipe, scan: str, fields: dict) -> None:
        pipe.hset(self.keys.scan(scan), mapping={k: json.dumps(v) for k, v in fields.items()})
        pipe.incr(self.keys.scans_version)

    def scans_version(self) -> int:
        """Changes whenever any scan record does: a page of the list read at one version is still right."""
        return int(self.redis.get(self.keys.scans_version) or 0)

    def list_scans(self, state: str | None, limit: int, offset: int,
                   proposals: frozenset | None = None) -> tuple[list[dict], int]:
        """Newest first; with ``state``, only scans in that state; with ``proposals``, only those proposals'
        scans (``proposal_of`` each record). Returns (page, total matching).

        Without a filter only the page's records are read; with one, every record's state and proposal are."""
        if state is None and proposals is None:
            pipe = self.redis.pipeline(transaction=False)
            pipe.zrevrange(self.keys.scans, offset, offset + limit - 1)
            pipe.zcard(self.keys.scans)
            ids, total = pipe.execute()
        else:
            ids = self.redis.zrevrange(self.keys.scans, 0, -1)
            pipe = self.redis.pipeline(transaction=False)
            for scan in ids:
                pipe.hmget(self.keys.scan(scan.decode()), "state", "proposal")
            ids = [i for i, (s, p) in zip(ids, pipe.execute()) if s is not None
                   and (state is None or json.loads(s) == state)
                   and (proposals is None or self.proposal_of({"proposal": json.loads(p or b"null")}) in proposals)]
            total, ids = len(ids), ids[offset:offset + limit]
        pipe = self.redis.pipeline(transaction=False)
        for scan in ids:
            pipe.hgetall(self.keys.scan(scan.decode()))
        records = [decode_record(raw) for raw in pipe.execute() if raw]
        return records, total

    def _forget(self, scan: str, pipe) -> None:
        pipe.delete(self.keys.scan(scan), *(self.keys.result(scan, stage) for stage in results.STAGES))
        self.cache_drop(scan, pipe)
        pipe.incr(self.keys.scans_version)

    def delete_scan(self, scan: str, reason: str | None = None) -> None:
        pipe = self.redis.pipeline()
        self._forget(scan, pipe)
        pipe.zrem(self.keys.scans, scan)
        pipe.execute()
        self.publish({"event": "deleted", "scan": scan, **({"reason": reason} if reason else {})})

    def proposal_of(self, record: dict) -> str:
        """Whose data a scan is: its record's proposal (records from before proposals: DEFAULT_PROPOSAL)."""
        return record.get("proposal") or self.settings.default_proposal

    def scan(self, scan: str) -> dict | None:
        raw = self.redis.hgetall(self.keys.scan(scan))
        if not raw:
            return None
        return decode_record(raw)


def decode_record(raw: dict[bytes, bytes]) -> dict:
    """A scan's Redis hash (field → JSON text) as a dict, in one JSON parse (one per field cost a list
    of 20 scans a millisecond)."""
    return json.loads(b"{" + b",".join(b'"%s":%s' % item for item in raw.items()) + b"}")
