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

from shared.state.settings import Settings, keys

KEEPALIVE_S = 15.0


class Subscribers:
    """Bounded count of open event streams (each holds a Redis connection). A caller who does not read every
    proposal gets only the events of its proposals' scans (each scan's proposal looked up once per stream);
    events that name no scan go to staff alone."""

    def __init__(self, limit: int, default_proposal: str):
        self.limit, self.open, self.default_proposal = limit, 0, default_proposal

    def stream(self, request: Request, settings: Settings, identity, scan: str | None = None) -> StreamingResponse:
        if self.open >= self.limit:
            raise HTTPException(503, f"too many live subscribers (limit {self.limit}); retry later")
        self.open += 1
        return StreamingResponse(self._events(request, settings, identity, scan), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _events(self, request: Request, settings: Settings, identity, scan: str | None):
        client = aioredis.Redis.from_url(settings.redis_url)
        pubsub = client.pubsub()
        proposals: dict[str, str | None] = {}  # scan → its proposal, looked up once

        async def readable(event: dict) -> bool:
            if identity.reads_all:
                return True
            name = event.get("scan")
            if not isinstance(name, str):
                return False
            if proposals.get(name) is None:  # looked up once the record exists (its start event follows it)
                proposal, state = await client.hmget(keys(settings).scan(name), "proposal", "state")
                proposals[name] = json.loads(proposal) if proposal else self.default_proposal if state else None
                if len(proposals) > 10_000:
                    proposals.clear()
            return identity.may_read(proposals[name])

        try:
            await pubsub.subscribe(keys(settings).updates)
            yield "retry: 2000\n\n"
            quiet_since = time.monotonic()
            while not await request.is_disconnected():
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is not None:
                    data = message["data"].decode()
                    event = json.loads(data)
                    if (scan is None or event.get("scan") == scan) and await readable(event):
                        yield f"data: {data}\n\n"
                        quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since > KEEPALIVE_S:
                    yield ": keep-alive\n\n"
                    quiet_since = time.monotonic()
        finally:
            self.open -= 1
            await pubsub.aclose()
            await client.aclose()
