"""A bound on request bodies (who may read and write: ``services.gateway.access``)."""

from __future__ import annotations

from fastapi.responses import JSONResponse


class BodyLimit:
    """413 for a declared body over the limit, 411 for a body of undeclared length (pure ASGI: no per-request task)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            length = headers.get(b"content-length")
            problem = None
            if length is None and headers.get(b"transfer-encoding"):
                problem = 411, "request bodies must declare their length"
            elif length is not None and (not length.isdigit() or int(length) > self.max_bytes):
                problem = 413, f"request body over {self.max_bytes} bytes"
            if problem:
                await JSONResponse({"detail": problem[1]}, status_code=problem[0])(scope, receive, send)
                return
        await self.app(scope, receive, send)
