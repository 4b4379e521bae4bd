"""Scan state, results and counters in Redis: the only module that knows the record layouts.

Raw frames and every stage's result live in HDF5 files in DATA_DIR (``shared.state.results``); Redis holds
state, jobs, the scan index and a size-bounded cache of recent result arrays (RESULT_CACHE_MB).
"""

from __future__ import annotations

import json
import time

import numpy as np
import redis

from shared.state import results
from shared.state.settings import Settings, keys


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
    def queue_refinement(self, scan: str, record: dict, options: dict | None = None, pipe=None,
                         queued: float | None = None) -> None:
        """Ask for a scan's refined stage: one entry on the refine stream (the backlog admits it and
        ``shared.state.scheduling`` orders it), with its cost in refined voxels for the queue's ETA."""
        frames = max(32, int(record.get("frames_expected") or 32))
        shape = [frames] + [max(32, int(n)) for n in (record.get("shape") or [32, 32])]
        voxels = int(np.prod([min(n, self.settings.refine_size) for n in shape]))
        fields = {"scan": scan, "queued": queued or time.time(), "voxels": voxels}
        if options:
            fields["options"] = json.dumps(options)
        (self.redis if pipe is None else pipe).xadd(self.keys.refine_jobs, fields)

    def queue_full_grid(self, scan: str, voxels: int, queued: float | None = None, pipe=None) -> None:
        """Ask for a scan's full-grid stage (after its refined result): the lowest-priority refinement work."""
        (self.redis if pipe is None else pipe).xadd(
            self.keys.refine_jobs, {"scan": scan, "queued": queued or time.time(), "voxels": voxels, "stage": "full"})

    def record_refine_speed(self, seconds_per_voxel: float) -> None:
        """A moving average of refinement seconds per refined voxel (what queue ETAs are made of)."""
        old = self.refine_speed(default=seconds_per_voxel)
        self.redis.hset(self.keys.metrics, "refine_s_per_voxel", 0.7 * old + 0.3 * seconds_per_voxel)

    def refine_speed(self, default: float | None = None) -> float:
        from shared.state.scheduling import DEFAULT_S_PER_VOXEL
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
        pipe.zcard(f"{keys.refine_jobs}:waiting:full")  # full-grid fits (``shared.solver.fullgrid``)
        pipe.zrange(f"{keys.refine_jobs}:waiting:full", 0, 0, withscores=True)
        pipe.hgetall(keys.disk)
        pipe.get(keys.cache_bytes)
        pipe.zcard(keys.cache_index)

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
        full_waiting, full_oldest = next(replies), next(replies)
        snapshot["backlog"] = {
            "nn": {"jobs": infer_depth, "oldest_s": infer_oldest},
            "refined": {"jobs": waiting + (running if isinstance(running, int) else 0)
                        + (arrived if isinstance(arrived, int) else 0),
                        "oldest_s": now - oldest[0][1] if isinstance(oldest, list) and oldest else 0.0},
            "full": {"jobs": full_waiting if isinstance(full_waiting, int) else 0,
                     "oldest_s": now - full_oldest[0][1] if isinstance(full_oldest, list) and full_oldest else 0.0}}
        disk, cache_bytes, cache_entries = next(replies), next(replies), next(replies)
        disk = {k.decode(): float(v) for k, v in disk.items()} if isinstance(disk, dict) else {}
        snapshot["disk"] = {**disk, "alarm": self.disk_alarm(disk)}
        counters = snapshot["counters"]
        snapshot["cache"] = {"bytes": int(cache_bytes or 0) if not isinstance(cache_bytes, Exception) else 0,
                             "entries": cache_entries if isinstance(cache_entries, int) else 0,
                             "limit_bytes": int(self.settings.result_cache_mb * 2**20),
                             "hits": counters.get("cache_hits", 0), "misses": counters.get("cache_misses", 0)}
        return snapshot

    def disk_alarm(self, disk: dict) -> str | None:
        """Why new scans are refused, as of housekeeping's last look (None: room enough)."""
        from shared.state.retention import low_on_space

        return low_on_space(int(disk["free_bytes"]), self.settings.min_free_gb) if "free_bytes" in disk else None

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

    # results --------------------------------------------------------------
    # The arrays live in DATA_DIR/<scan>/<stage>.h5 (``shared.state.results``); Redis holds each result's
    # info (a few hundred bytes) and a cache of recent arrays bounded by RESULT_CACHE_MB (oldest read
    # evicted first).
    def put_result(self, scan: str, stage: str, amplitude: np.ndarray, phase: np.ndarray, info: dict,
                   force: bool = False, extra: dict[str, np.ndarray] | None = None) -> bool:
        """Store a stage's arrays unless a result from more frames is already there (``force``: a re-run):
        the file first (atomically), then the record says the stage exists. ``extra``: further arrays kept
        in the file only (``result_array``)."""
        key = self.keys.result(scan, stage)
        existing = self.redis.hget(key, "info")
        if not force and existing and json.loads(existing).get("seq", -1) > info.get("seq", 0):
            return False
        path = results.stage_path(self.settings.data_dir, scan, stage)
        proposal = self.redis.hget(self.keys.scan(scan), "proposal")
        results.write_stage(path, scan, stage, amplitude, phase, info, extra,
                            self.proposal_of({"proposal": json.loads(proposal) if proposal else None}))
        self.redis.hset(key, mapping={"info": json.dumps(info), "file": str(path)})
        self.cache_put(scan, stage, amplitude, phase)
        summary = results.summary_of(info)
        self.update_scan(scan, **{f"result_{stage}": summary})
        self.publish({"event": "result", "scan": scan, "stage": stage, **summary})
        return True

    def result(self, scan: str, stage: str):
        """(amplitude, phase, info) from the cache, else from the stage's file (then cached); None if the
        stage does not exist."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(self.keys.cached(scan, stage), "amplitude", "phase", "shape")
        pipe.hget(self.keys.result(scan, stage), "info")
        (amplitude, phase, shape), info = pipe.execute()
        if amplitude is not None and info is not None:
            pipe = self.redis.pipeline(transaction=False)
            pipe.zadd(self.keys.cache_index, {f"{scan}:{stage}": time.time()}, xx=True)
            pipe.hincrby(self.keys.metrics, "cache_hits", 1)
            pipe.execute()
            shape = json.loads(shape)
            return (np.frombuffer(amplitude, "<f4").reshape(shape), np.frombuffer(phase, "<f4").reshape(shape),
                    json.loads(info))
        stored = results.read_stage(results.stage_path(self.settings.data_dir, scan, stage))
        if stored is None:
            return None
        amplitude, phase, file_info = stored
        if info is None:  # Redis lost it (emptied, restarted): the file is the record
            self.redis.hset(self.keys.result(scan, stage), mapping={"info": json.dumps(file_info)})
        self.count("cache_misses")
        self.cache_put(scan, stage, amplitude, phase)
        return amplitude, phase, json.loads(info) if info is not None else file_info

    def result_array(self, scan: str, stage: str, name: str) -> np.ndarray | None:
        """A further array of a stage's result (e.g. ``phase_uncertainty``), from its file."""
        return results.read_dataset(results.stage_path(self.settings.data_dir, scan, stage), name)

    EVICT = """
    local total = tonumber(redis.call('GET', KEYS[3]) or '0')
    while total > tonumber(ARGV[1]) do
      local oldest = redis.call('ZPOPMIN', KEYS[1])
      if #oldest == 0 then break end
      local size = tonumber(redis.call('HGET', KEYS[2], oldest[1]) or '0')
      redis.call('HDEL', KEYS[2], oldest[1])
      redis.call('DEL', ARGV[2] .. oldest[1])
      total = redis.call('DECRBY', KEYS[3], size)
    end
    return total
    """

    def cache_put(self, scan: str, stage: str, amplitude: np.ndarray, phase: np.ndarray) -> None:
        """Keep recent arrays in Redis for fast reads; the oldest read go when the cache passes its bound."""
        a, p = np.asarray(amplitude, "<f4").tobytes(), np.asarray(phase, "<f4").tobytes()
        size, member, k = len(a) + len(p), f"{scan}:{stage}", self.keys
        if size > self.settings.result_cache_mb * 2**20 or stage == "full":
            return  # larger than the whole cache, or a full-grid answer (detector-size, read rarely): from its file
        old = int(self.redis.hget(k.cache_sizes, member) or 0)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(k.cached(scan, stage), mapping={"amplitude": a, "phase": p, "shape": json.dumps(list(amplitude.shape))})
        pipe.zadd(k.cache_index, {member: time.time()})
        pipe.hset(k.cache_sizes, member, size)
        pipe.incrby(k.cache_bytes, size - old)
        pipe.execute()
        self.redis.eval(self.EVICT, 3, k.cache_index, k.cache_sizes, k.cache_bytes,
                        self.settings.result_cache_mb * 2**20, f"{k.cache_prefix}")

    def cache_drop(self, scan: str, pipe) -> None:
        for stage in results.STAGES:
            member = f"{scan}:{stage}"
            pipe.eval("""local size = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
                         redis.call('HDEL', KEYS[2], ARGV[1]); redis.call('ZREM', KEYS[1], ARGV[1])
                         redis.call('DEL', KEYS[4]); redis.call('DECRBY', KEYS[3], size)""",
                      4, self.keys.cache_index, self.keys.cache_sizes, self.keys.cache_bytes,
                      self.keys.cached(scan, stage), member)

    # Redis emptied --------------------------------------------------------
    def restore_from_disk(self) -> dict:
        """Every scan in DATA_DIR that Redis does not know gets its record and result infos back from its
        files (``shared.state.results``); nothing is recomputed: a complete scan with an NN result but no refined
        one is queued for refinement, as it was; a binned refined one with no full-grid result is queued
        for its full-grid stage. Returns counts."""
        restored = queued = 0
        for raw in sorted(self.settings.data_dir.glob("*/frames.h5")):
            scan = raw.parent.name
            if self.redis.exists(self.keys.scan(scan)):
                continue
            rebuilt = results.record_from_files(raw.parent)
            if rebuilt is None:
                continue
            record, infos = rebuilt
            pipe = self.redis.pipeline(transaction=False)
            self.write_scan(scan, record, record["started"], pipe)
            for stage, info in infos.items():
                pipe.hset(self.keys.result(scan, stage), mapping={"info": json.dumps(info)})
            if record["state"] == "complete" and "result_nn" in record and "result_refined" not in record:
                # queued as of its end: behind every scan newer than it (shared.state.scheduling)
                self.queue_refinement(scan, record, pipe=pipe, queued=record.get("ended") or record["started"])
                queued += 1
            elif (refined := infos.get("refined", {})).get("downsampled") and "region" in refined \
                    and "full" not in infos and self.settings.full_grid:
                self.queue_full_grid(scan, int(np.prod(refined["region"]["shape"])),
                                     record.get("ended") or record["started"], pipe)
                queued += 1
            elif record["state"] == "complete" and "result_nn" not in record:
                reason = "its network input was lost with Redis's state before inference (frames kept on disk)"
                self.update_scan(scan, pipe, state="failed", reason=reason)
            pipe.execute()
            restored += 1
        return {"restored": restored, "queued": queued}

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
