"""What /metrics and /ready report, read in one Redis round trip: counters, streams and pending jobs,
live workers, the backlog per stage, disk and the result cache."""

from __future__ import annotations

import time

from shared.state.retention import low_on_space


class Snapshot:
    """One pipeline that reads the service's state, and its parse (the gateway runs the same pipeline on its
    asyncio client).
    Part of ``Store``: uses its ``redis``, ``keys`` and ``settings``."""

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
        return low_on_space(int(disk["free_bytes"]), self.settings.min_free_gb) if "free_bytes" in disk else None
