"""Server-Sent Events: the Redis pub/sub updates of the services, relayed to browsers and scripts.

Each event's data is one JSON object with an ``event`` field: ``start``,
``progress`` (frames received), ``complete``, ``result`` (a stage landed),
``failed`` or ``deleted``, and the ``scan`` it is about.
"""

from __future__ import annotations

import json
import time

import redis.asyncio as aioredis
from fastapi import HTTPException, Request
from fastapi.responses import StreamingResponse

from shared.settings import Settings, keys

KEEPALIVE_S = 15.0


class Subscribers:
    """Bounded count of open event streams (each holds a Redis connection)."""

    def __init__(self, limit: int):
        self.limit, self.open = limit, 0

    def stream(self, request: Request, settings: Settings, scan: str | None = None) -> StreamingResponse:
        if self.open >= self.limit:
            raise HTTPException(503, f"too many live subscribers (limit {self.limit}); retry later")
        self.open += 1
        return StreamingResponse(self._events(request, settings, scan), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _events(self, request: Request, settings: Settings, scan: str | None):
        client = aioredis.Redis.from_url(settings.redis_url)
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(keys(settings).updates)
            yield "retry: 2000\n\n"
            quiet_since = time.monotonic()
            while not await request.is_disconnected():
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is not None:
                    data = message["data"].decode()
                    if scan is None or json.loads(data).get("scan") == scan:
                        yield f"data: {data}\n\n"
                        quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since > KEEPALIVE_S:
                    yield ": keep-alive\n\n"
                    quiet_since = time.monotonic()
        finally:
            self.open -= 1
            await pubsub.aclose()
            await client.aclose()
