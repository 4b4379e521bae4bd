"""Which workers are alive: one sorted set of heartbeats per kind of worker."""

from __future__ import annotations

import time

import redis


class Liveness:
    """Heartbeats and farewells of workers.
    Part of ``Store``: uses its ``redis``, ``keys`` and ``settings``."""

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
