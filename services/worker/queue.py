"""A Redis Streams consumer-group queue: several workers share one stream, each job is done once.

New jobs come with XREADGROUP; jobs left pending by a dead worker for longer
than ``claim_idle_ms`` are taken over with XAUTOCLAIM; a job is XACKed only
after its result is stored, so a crash mid-job loses nothing. A job claimed
more than ``max_deliveries`` times (it keeps killing workers) is moved to the
dead-letter stream and handed to ``on_dead`` instead of being run again.
"""

from __future__ import annotations

import logging
import os
import socket
import time

import redis

log = logging.getLogger("cdi-live.queue")


class JobQueue:
    def __init__(self, client: redis.Redis, stream: str, group: str, claim_idle_ms: int = 30000,
                 consumer: str | None = None, max_deliveries: int = 3, dead_letters: str | None = None,
                 on_dead=None):
        self.redis, self.stream, self.group = client, stream, group
        self.claim_idle_ms = claim_idle_ms
        self.max_deliveries, self.dead_letters, self.on_dead = max_deliveries, dead_letters, on_dead
        self.last_trim = 0.0
        # Fault-injection hook for the reliability tests: hold each taken job this long, so a
        # test can kill the worker by its pid while the job is pending. Unset in production.
        self.stall_s = float(os.environ.get("CDI_LIVE_TEST_STALL_S", "0"))
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.ensure_group()

    def ensure_group(self) -> None:
        join_group(self.redis, self.stream, self.group)

    def take(self, count: int, block_ms: int = 500) -> list[tuple[bytes, dict]]:
        """Up to ``count`` jobs: first any abandoned by dead workers, then new ones."""
        try:
            return self._take(count, block_ms)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc) and "no such key" not in str(exc):
                raise
            self.ensure_group()  # Redis restarted empty (no stream, no group): join again and carry on
            return []

    def trim_acknowledged(self) -> None:
        """Drop entries every group has acknowledged; pending and undelivered ones stay.

        Jobs are added without MAXLEN, so no job is ever trimmed before a worker has done it;
        this keeps the stream's length to the backlog."""
        floor = None
        for group in self.redis.xinfo_groups(self.stream):
            low = group["last-delivered-id"]
            if group["pending"]:
                low = min(low, self.redis.xpending(self.stream, group["name"])["min"], key=stream_id)
            floor = low if floor is None else min(floor, low, key=stream_id)
        if floor is not None:
            self.redis.xtrim(self.stream, minid=floor, approximate=False)

    def _take(self, count: int, block_ms: int) -> list[tuple[bytes, dict]]:
        if time.monotonic() - self.last_trim > 5:
            self.last_trim = time.monotonic()
            self.trim_acknowledged()
        jobs = []
        claimed = self.redis.xautoclaim(self.stream, self.group, self.consumer, self.claim_idle_ms, "0-0", count=count)
        for job_id, fields in claimed[1]:
            if not fields:  # the entry was deleted while pending: nothing left to do
                self.done(job_id)
            elif self.deliveries(job_id) > self.max_deliveries:
                self.bury(job_id, fields)
            else:
                jobs.append((job_id, fields))
        if len(jobs) < count:
            fresh = self.redis.xreadgroup(self.group, self.consumer, {self.stream: ">"}, count=count - len(jobs),
                                          block=None if jobs else block_ms)
            for _, entries in fresh or []:
                jobs += [(job_id, fields) for job_id, fields in entries]
        if jobs and self.stall_s:
            time.sleep(self.stall_s)
        return jobs

    def deliveries(self, job_id: bytes) -> int:
        pending = self.redis.xpending_range(self.stream, self.group, min=job_id, max=job_id, count=1)
        return int(pending[0]["times_delivered"]) if pending else 0

    def bury(self, job_id: bytes, fields: dict) -> None:
        """Dead-letter a job that failed ``max_deliveries`` times, so it stops taking workers down."""
        log.error("job %s of %s delivered more than %d times: dead-lettered", job_id, self.stream, self.max_deliveries)
        if self.dead_letters:
            self.redis.xadd(self.dead_letters, {**fields, b"stream": self.stream, b"job": job_id}, maxlen=10000)
        if self.on_dead:
            self.on_dead(fields, f"job crashed its worker {self.max_deliveries} times")
        self.done(job_id)

    def done(self, *job_ids: bytes) -> None:
        if job_ids:
            self.redis.xack(self.stream, self.group, *job_ids)


def join_group(client: redis.Redis, stream: str, group: str) -> None:
    """Create the consumer group (and the stream) unless it exists: after a Redis that restarted empty too."""
    try:
        client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def stream_id(value) -> tuple[int, int]:
    """'1700000000000-3' → (1700000000000, 3), for ordering stream entry ids."""
    ms, _, seq = (value.decode() if isinstance(value, bytes) else value).partition("-")
    return int(ms), int(seq or 0)


def run_forever(step, stop, name: str, heartbeat=None) -> None:
    """Call ``step()`` until ``stop`` is set; Redis outages are waited out with backoff.

    ``heartbeat()`` (at most every 2 s) tells the gateway's /ready this worker is alive.
    """
    delay, last_beat = 0.5, 0.0
    while not stop.is_set():
        try:
            if heartbeat and time.monotonic() - last_beat > 2:
                heartbeat()
                last_beat = time.monotonic()
            step()
            delay = 0.5
        except Exception as exc:  # a bug must not end the worker either: its job stays pending, is retried,
            # then dead-lettered
            if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
                log.warning("%s: Redis unavailable (%s); retrying in %.1f s", name, exc, delay)
            else:
                log.exception("%s: unexpected error; retrying in %.1f s", name, delay)
            stop.wait(delay)
            delay = min(delay * 2, 10.0)
