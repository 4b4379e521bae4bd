"""Scan state, results and counters in Redis: the only module that knows the record layouts.

Small arrays (32³–64³ float32) live in Redis; raw frames live in HDF5 files.
"""

from __future__ import annotations

import json
import time

import numpy as np
import redis

from shared.settings import Settings, keys


class Store:
    def __init__(self, settings: Settings, client: redis.Redis | None = None):
        self.settings = settings
        self.keys = keys(settings)
        self.redis = client or redis.Redis.from_url(settings.redis_url, socket_timeout=10,
                                                    health_check_interval=30, retry_on_timeout=True)

    # counters -------------------------------------------------------------
    def count(self, name: str, amount: int = 1) -> None:
        self.redis.hincrby(self.keys.metrics, name, amount)

    def counters(self) -> dict[str, float]:
        return {k.decode(): float(v) for k, v in self.redis.hgetall(self.keys.metrics).items()}

    def record_latency(self, stage: str, seconds: float) -> None:
        """Sum and count per stage: enough for a Prometheus summary of job latency."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hincrbyfloat(self.keys.metrics, f"latency_sum:{stage}", seconds)
        pipe.hincrby(self.keys.metrics, f"latency_count:{stage}", 1)
        pipe.execute()

    # refinement jobs -------------------------------------------------------
    def queue_refinement(self, scan: str, record: dict, options: dict | None = None, pipe=None) -> None:
        """Ask for a scan's refined stage: one entry on the refine stream (the backlog admits it and
        ``shared.scheduling`` orders it), with its cost in refined voxels for the queue's ETA."""
        frames = max(32, int(record.get("frames_expected") or 32))
        shape = [frames] + [max(32, int(n)) for n in (record.get("shape") or [32, 32])]
        voxels = int(np.prod([min(n, self.settings.refine_size) for n in shape]))
        fields = {"scan": scan, "queued": time.time(), "voxels": voxels}
        if options:
            fields["options"] = json.dumps(options)
        (self.redis if pipe is None else pipe).xadd(self.keys.refine_jobs, fields)

    def record_refine_speed(self, seconds_per_voxel: float) -> None:
        """A moving average of refinement seconds per refined voxel (what queue ETAs are made of)."""
        old = self.refine_speed(default=seconds_per_voxel)
        self.redis.hset(self.keys.metrics, "refine_s_per_voxel", 0.7 * old + 0.3 * seconds_per_voxel)

    def refine_speed(self, default: float | None = None) -> float:
        from shared.scheduling import DEFAULT_S_PER_VOXEL
        value = self.redis.hget(self.keys.metrics, "refine_s_per_voxel")
        return float(value) if value else (default if default is not None else DEFAULT_S_PER_VOXEL)

    # workers ----------------------------------------------------------------
    HEARTBEAT_TTL_S = 15  # a worker silent this long is not counted alive

    def heartbeat(self, kind: str, consumer: str) -> None:
        """One sorted set per kind (not a key per worker): the gateway reads who is alive in one command."""
        now = time.time()
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(self.keys.workers(kind), {consumer: now})
        pipe.zremrangebyscore(self.keys.workers(kind), 0, now - 3600)  # long gone
        pipe.execute()

    def farewell(self, kind: str, consumer: str) -> None:
        """A worker stopping cleanly is no longer counted alive (a restarted service's /ready must wait
        for its new workers, not trust the old ones' last heartbeats)."""
        try:
            self.redis.zrem(self.keys.workers(kind), consumer)
        except redis.RedisError:
            pass

    def live_workers(self, kind: str) -> list[str]:
        return sorted(m.decode() for m in self._live_workers(self.redis, kind))

    def _live_workers(self, client, kind: str):
        return client.zrangebyscore(self.keys.workers(kind), time.time() - self.HEARTBEAT_TTL_S, "+inf")

    SNAPSHOT_STREAMS = ("infer", "refine", "dead")

    def service_snapshot(self) -> dict:
        """What /metrics reports, in one round trip: counters, stream lengths and pending jobs, live
        workers per kind, scans known. (The gateway runs the same pipeline on its asyncio client.)"""
        pipe = self.redis.pipeline(transaction=False)
        self.queue_snapshot(pipe)
        return self.parse_snapshot(pipe.execute(raise_on_error=False))

    def queue_snapshot(self, pipe) -> None:
        keys = self.keys
        pipe.hgetall(keys.metrics)
        for queue, stream in zip(self.SNAPSHOT_STREAMS, (keys.infer_jobs, keys.refine_jobs, keys.dead_letters)):
            pipe.xlen(stream)
            pipe.xpending(stream, queue)
        for kind in ("infer", "refine"):
            self._live_workers(pipe, kind)
        pipe.zcard(keys.scans)
        # the backlog per stage: depth and the oldest job's age
        pipe.xinfo_groups(keys.infer_jobs)
        pipe.xrange(keys.infer_jobs, "-", "+", count=1)
        for part in ("waiting", "running"):
            pipe.zcard(f"{keys.refine_jobs}:{part}")
        pipe.zrange(f"{keys.refine_jobs}:waiting", 0, 0, withscores=True)
        pipe.xlen(keys.refine_jobs)  # arrived, not yet admitted by a refinement worker

    def parse_snapshot(self, replies: list) -> dict:
        replies = iter(replies)
        snapshot = {"counters": {k.decode(): float(v) for k, v in next(replies).items()}, "length": {},
                    "pending": {}, "workers": {}}
        for queue in self.SNAPSHOT_STREAMS:
            snapshot["length"][queue] = next(replies)
            pending = next(replies)  # an error where the group does not exist (yet)
            snapshot["pending"][queue] = pending["pending"] if isinstance(pending, dict) else 0
        for kind in ("infer", "refine"):
            snapshot["workers"][kind] = len(next(replies))
        snapshot["scans"] = next(replies)
        now = time.time()
        groups, first = next(replies), next(replies)
        group = next((g for g in groups if g.get("name") in (b"infer", "infer")), None) if isinstance(groups, list) else None
        infer_depth = (int(group.get("lag") or 0) + int(group.get("pending") or 0)) if group else 0
        infer_oldest = 0.0  # the stream's first entry (acknowledged ones are trimmed within 5 s)
        if infer_depth and isinstance(first, list) and first:
            infer_oldest = max(0.0, now - int(first[0][0].split(b"-")[0]) / 1000)
        waiting, running, oldest, arrived = next(replies), next(replies), next(replies), next(replies)
        waiting = waiting if isinstance(waiting, int) else 0
        snapshot["backlog"] = {
            "nn": {"jobs": infer_depth, "oldest_s": infer_oldest},
            "refined": {"jobs": waiting + (running if isinstance(running, int) else 0)
                        + (arrived if isinstance(arrived, int) else 0),
                        "oldest_s": now - oldest[0][1] if isinstance(oldest, list) and oldest else 0.0}}
        return snapshot

    # scans ----------------------------------------------------------------
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

    def list_scans(self, state: str | None, limit: int, offset: int) -> tuple[list[dict], int]:
        """Newest first; with ``state``, only scans in that state. Returns (page, total matching).

        Without a filter only the page's records are read; with one, every record's state is."""
        if state is None:
            pipe = self.redis.pipeline(transaction=False)
            pipe.zrevrange(self.keys.scans, offset, offset + limit - 1)
            pipe.zcard(self.keys.scans)
            ids, total = pipe.execute()
        else:
            ids = self.redis.zrevrange(self.keys.scans, 0, -1)
            pipe = self.redis.pipeline(transaction=False)
            for scan in ids:
                pipe.hget(self.keys.scan(scan.decode()), "state")
            ids = [i for i, s in zip(ids, pipe.execute()) if s is not None and json.loads(s) == state]
            total, ids = len(ids), ids[offset:offset + limit]
        pipe = self.redis.pipeline(transaction=False)
        for scan in ids:
            pipe.hgetall(self.keys.scan(scan.decode()))
        records = [decode_record(raw) for raw in pipe.execute() if raw]
        return records, total

    def _forget(self, scan: str, pipe) -> None:
        pipe.delete(self.keys.scan(scan), self.keys.result(scan, "nn"), self.keys.result(scan, "refined"))
        pipe.incr(self.keys.scans_version)

    def delete_scan(self, scan: str) -> None:
        pipe = self.redis.pipeline()
        self._forget(scan, pipe)
        pipe.zrem(self.keys.scans, scan)
        pipe.execute()
        self.publish({"event": "deleted", "scan": scan})

    def scan(self, scan: str) -> dict | None:
        raw = self.redis.hgetall(self.keys.scan(scan))
        if not raw:
            return None
        return decode_record(raw)

    # results --------------------------------------------------------------
    def put_result(self, scan: str, stage: str, amplitude: np.ndarray, phase: np.ndarray, info: dict,
                   force: bool = False) -> bool:
        """Store a stage's arrays unless a result from more frames is already there (``force``: a re-run)."""
        key = self.keys.result(scan, stage)
        existing = self.redis.hget(key, "info")
        if not force and existing and json.loads(existing).get("seq", -1) > info.get("seq", 0):
            return False
        self.redis.hset(key, mapping={"amplitude": np.asarray(amplitude, "<f4").tobytes(),
                                      "phase": np.asarray(phase, "<f4").tobytes(),
                                      "shape": json.dumps(list(amplitude.shape)), "info": json.dumps(info)})
        summary = {k: info[k] for k in ("frames_used", "chi", "seconds") if k in info}
        self.update_scan(scan, **{f"result_{stage}": summary})
        self.publish({"event": "result", "scan": scan, "stage": stage, **summary})
        return True

    def result(self, scan: str, stage: str):
        raw = self.redis.hgetall(self.keys.result(scan, stage))
        if not raw:
            return None
        shape = json.loads(raw[b"shape"])
        return (np.frombuffer(raw[b"amplitude"], "<f4").reshape(shape),
                np.frombuffer(raw[b"phase"], "<f4").reshape(shape), json.loads(raw[b"info"]))

    def fail_job(self, fields: dict, reason: str) -> None:
        """A dead-lettered job: its scan is marked failed with the reason, visibly, not left stuck."""
        scan = fields.get(b"scan", b"").decode()
        if scan and self.scan(scan) is not None:
            self.update_scan(scan, state="failed", reason=reason)
            self.publish({"event": "failed", "scan": scan, "reason": reason})
        self.count("jobs_dead_lettered")

    def publish(self, event: dict, pipe=None) -> None:
        (self.redis if pipe is None else pipe).publish(self.keys.updates, json.dumps(event))


def decode_record(raw: dict[bytes, bytes]) -> dict:
    """A scan's Redis hash (field → JSON text) as a dict, in one JSON parse (one per field cost a list
    of 20 scans a millisecond)."""
    return json.loads(b"{" + b",".join(b'"%s":%s' % item for item in raw.items()) + b"}")
