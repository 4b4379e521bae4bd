"""A Redis Streams consumer-group queue: several workers share one stream, each job is done once.

New jobs come with XREADGROUP; jobs left pending by a dead worker for longer
than ``claim_idle_ms`` are taken over with XAUTOCLAIM. A live worker keeps its
own pending jobs fresh (XCLAIM to itself, JUSTID, every third of that time), so
a job that runs longer than ``claim_idle_ms`` is not done twice. A job is XACKed only
after its result is stored, so a crash mid-job loses nothing. A job claimed
more than ``max_deliveries`` times (it keeps killing workers) is moved to the
dead-letter stream and handed to ``on_dead`` instead of being run again.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
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
        self.in_hand: set[bytes] = set()  # the jobs of the last take() not yet done; replaced by the next take()
        self.keeping = threading.Event()  # set while jobs are in hand
        self.stopped = threading.Event()
        threading.Thread(target=self._keep_alive, name=f"keep-alive {stream}", daemon=True).start()

    def stop(self) -> None:
        """Stop keeping jobs alive: what is in hand is claimable by others after ``claim_idle_ms``."""
        self.stopped.set()
        self.keeping.set()  # wake the thread so it sees the stop

    def _keep_alive(self) -> None:
        """While jobs are in hand, reset their idle time before another worker may claim them as abandoned.

        It is a thread of the worker's process: a worker that dies stops it, and its jobs go to others as before.
        A job whose step failed is no longer in hand once the worker takes again, so it is retried (and, failing
        again, dead-lettered) as before."""
        while not self.stopped.is_set():
            self.keeping.wait()
            if self.stopped.wait(self.claim_idle_ms / 3000):
                return
            try:
                self.refresh()
            except redis.RedisError as exc:  # Redis away: the worker's own loop waits it out
                log.debug("keep-alive of %s: %s", self.stream, exc)

    def refresh(self) -> int:
        """XCLAIM the jobs in hand, still pending on this consumer, to itself (JUSTID: delivery counts unchanged);
        returns how many."""
        hand = set(self.in_hand)
        held = self.redis.xpending_range(self.stream, self.group, min="-", max="+", count=1000,
                                         consumername=self.consumer) if hand else []
        ids = [entry["message_id"] for entry in held if entry["message_id"] in hand]
        if ids:
            self.redis.xclaim(self.stream, self.group, self.consumer, 0, ids, justid=True)
        else:  # nothing to keep: sleep until the next take; cleared first, so a take that just set it is not lost
            self.keeping.clear()
            if self.in_hand:
                self.keeping.set()
        return len(ids)

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
        self.in_hand = {job_id for job_id, _ in jobs}
        if jobs:
            self.keeping.set()
        if jobs and self.stall_s:
            time.sleep(self.stall_s)
        return jobs

    def queued_after(self, job_id: bytes, count: int = 100) -> list[tuple[bytes, dict]]:
        """The jobs added after ``job_id`` (taken or not), oldest first, at most ``count``: what came in while it ran."""
        return self.redis.xrange(self.stream, min=b"(" + job_id, max="+", count=count)

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
        self.in_hand.difference_update(job_ids)
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
