"""A Redis Streams consumer-group queue: several workers share one stream, each job is done once.

New jobs come with XREADGROUP; jobs left pending by a dead worker for longer
than ``claim_idle_ms`` are taken over with XAUTOCLAIM; a job is XACKed only
after its result is stored, so a crash mid-job loses nothing.
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
                 consumer: str | None = None):
        self.redis, self.stream, self.group = client, stream, group
        self.claim_idle_ms = claim_idle_ms
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.ensure_group()

    def ensure_group(self) -> None:
        try:
            self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def take(self, count: int, block_ms: int = 500) -> list[tuple[bytes, dict]]:
        """Up to ``count`` jobs: first any abandoned by dead workers, then new ones."""
        jobs = []
        claimed = self.redis.xautoclaim(self.stream, self.group, self.consumer, self.claim_idle_ms, "0-0", count=count)
        jobs += [(job_id, fields) for job_id, fields in claimed[1] if fields]
        if len(jobs) < count:
            fresh = self.redis.xreadgroup(self.group, self.consumer, {self.stream: ">"}, count=count - len(jobs),
                                          block=None if jobs else block_ms)
            for _, entries in fresh or []:
                jobs += [(job_id, fields) for job_id, fields in entries]
        return jobs

    def done(self, *job_ids: bytes) -> None:
        if job_ids:
            self.redis.xack(self.stream, self.group, *job_ids)


def run_forever(step, stop, name: str) -> None:
    """Call ``step()`` until ``stop`` is set; Redis outages are waited out with backoff."""
    delay = 0.5
    while not stop.is_set():
        try:
            step()
            delay = 0.5
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("%s: Redis unavailable (%s); retrying in %.1f s", name, exc, delay)
            stop.wait(delay)
            delay = min(delay * 2, 10.0)
        except redis.ResponseError as exc:
            if "NOGROUP" in str(exc):
                time.sleep(0.1)  # Redis restarted empty: the caller's next take() recreates the group
            else:
                raise
