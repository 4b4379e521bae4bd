"""API keys on the routes that change anything, and a bound on request bodies."""

from __future__ import annotations

import secrets

from fastapi import Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.middleware.base import BaseHTTPMiddleware

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


class BodyLimit(BaseHTTPMiddleware):
    """413 for a declared body over the limit, 411 for a body of undeclared length."""

    def __init__(self, app, max_bytes: int):
        super().__init__(app)
        self.max_bytes = max_bytes

    async def dispatch(self, request: Request, call_next):
        length = request.headers.get("content-length")
        if length is None and request.headers.get("transfer-encoding"):
            return JSONResponse({"detail": "request bodies must declare their length"}, status_code=411)
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return JSONResponse({"detail": f"request body over {self.max_bytes} bytes"}, status_code=413)
        return await call_next(request)
