"""API keys on the routes that change anything, and a bound on request bodies."""

from __future__ import annotations

import secrets

from fastapi import Depends, HTTPException
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shared.settings import Settings

bearer = HTTPBearer(auto_error=False, description="an API key from the API_KEYS setting")


def api_key_guard(settings: Settings):
    """A dependency answering 401 unless the request carries one of the configured keys."""
    keys = settings.api_key_set()

    def check(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        given = credentials.credentials if credentials else ""
        if not given or not any(secrets.compare_digest(given, key) for key in keys):
            raise HTTPException(401, "a valid API key is required (Authorization: Bearer <key>)",
                                headers={"WWW-Authenticate": "Bearer"})

    return check


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
