"""FastAPI gateway: REST for scripts, Server-Sent Events and the operators' live page.

Routes (OpenAPI at /docs): /health, /ready, /metrics, /api/scans…, /api/events, and / (the page).
"""

from __future__ import annotations

import contextlib
import gc
from pathlib import Path

import anyio
import plotly
import redis
import redis.asyncio as aioredis
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from services.gateway import metrics
from services.gateway.access import Access, AuditLog, Identity
from services.gateway.housekeeping import Housekeeping
from services.gateway.live import Subscribers
from services.gateway.scans import ScanId, scans_router
from services.gateway.security import BodyLimit
from shared import __version__
from shared.state.settings import Settings
from shared.state.store import Store

STATIC = Path(__file__).parent / "static"
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"  # vendored by the plotly package


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    store = Store(settings)
    access, audit = Access(settings), AuditLog(settings)
    reader = Depends(access.identify)
    subscribers = Subscribers(settings.max_live_subscribers, settings.default_proposal)
    clients = {}

    def async_redis() -> aioredis.Redis:
        """The asyncio client of this process's event loop (made on first use, inside that loop)."""
        if "redis" not in clients:
            clients["redis"] = aioredis.Redis.from_url(settings.redis_url, socket_timeout=5)
        return clients["redis"]

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        # Redis-backed routes run in anyio's thread pool; a few threads keep the GIL calm and the tail short.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.gateway_threads
        housekeeping = Housekeeping(store)  # Redis rebuilt from DATA_DIR when emptied, disk, retention
        housekeeping.start()
        gc.freeze()  # the imports' objects are never garbage: full collections stop scanning them (the p99 tail)
        yield
        housekeeping.stop.set()

    app = FastAPI(title="cdi-live", version=__version__, lifespan=lifespan,
                  description="Real-time Bragg CDI: scan state, reconstructions, strain maps, live updates")
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if origins:
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET"])
    app.include_router(scans_router(settings, store, access, audit))

    @app.get("/api/access", tags=["service"])
    def who_am_i(request: Request):
        """Whether reads need credentials ("open: no access control" when not) and who the caller is (null when
        its credential is missing or not accepted): the page says it."""
        try:
            identity = access.identify(request)
        except HTTPException:
            identity = None
        return {"open": access.open, "mode": "open: no access control" if access.open else "access control",
                "who": identity.name if identity else None, "role": identity.role if identity else None,
                "proposals": sorted(identity.proposals) if identity and not identity.reads_all else None,
                "reads_all": bool(identity and identity.reads_all)}

    @app.get("/health", tags=["service"])
    async def health():
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/ready", tags=["service"])
    def ready():
        """Readiness: Redis answers, at least one inference and one refinement worker beat recently, and
        DATA_DIR has room for new scans (MIN_FREE_GB)."""
        try:
            store.redis.ping()
            workers = {kind: len(store.live_workers(kind)) for kind in ("infer", "refine")}
            disk = {k.decode(): float(v) for k, v in store.redis.hgetall(store.keys.disk).items()}
        except redis.RedisError as exc:
            return JSONResponse({"ready": False, "redis": f"unreachable: {type(exc).__name__}"}, status_code=503)
        alarm = store.disk_alarm(disk)
        ok = all(workers.values()) and alarm is None
        return JSONResponse({"ready": ok, "redis": "ok", "workers": workers, "disk": alarm or "ok"},
                            status_code=200 if ok else 503)

    @app.get("/metrics", tags=["service"], response_class=Response)
    async def prometheus_metrics():
        """Scraped often by many: one pipelined round trip on the asyncio client, no thread hop."""
        pipe = async_redis().pipeline(transaction=False)
        store.queue_snapshot(pipe)
        snapshot = store.parse_snapshot(await pipe.execute(raise_on_error=False))
        return Response(metrics.render(snapshot), media_type="text/plain; version=0.0.4")

    @app.get("/api/queue", tags=["service"])
    async def queue():
        """The backlog per stage: jobs waiting or running and the oldest one's age (what KEDA scales the
        refinement workers on, through its metrics-api scaler). Aggregates only, like /metrics: no scan ids."""
        pipe = async_redis().pipeline(transaction=False)
        store.queue_snapshot(pipe)
        snapshot = store.parse_snapshot(await pipe.execute(raise_on_error=False))
        return {**snapshot["backlog"], "workers": snapshot["workers"]}

    @app.get("/api/storage", tags=["service"])
    async def storage():
        """DATA_DIR's size, the volume's free space, the alarm that refuses new scans, and the result cache."""
        pipe = async_redis().pipeline(transaction=False)
        store.queue_snapshot(pipe)
        snapshot = store.parse_snapshot(await pipe.execute(raise_on_error=False))
        return {"disk": snapshot["disk"], "cache": snapshot["cache"],
                "min_free_gb": settings.min_free_gb, "retention_days": settings.retention_days,
                "max_data_gb": settings.max_data_gb}

    @app.get("/api/events", tags=["live"])
    def all_events(request: Request, identity: Identity = reader):
        """Server-Sent Events for every scan of the caller's proposals (the page's scan list)."""
        audit.read(identity, None, "events")
        return subscribers.stream(request, settings, identity)

    @app.get("/api/scans/{scan}/events", tags=["live"])
    def scan_events(request: Request, scan: str = ScanId, identity: Identity = reader):
        """Server-Sent Events of one scan: progress, completion, each result as it lands. 404 for a scan of
        another proposal and, for callers who do not read every proposal, for one not started yet (the same
        answer: another proposal's scan ids are not confirmed); staff may subscribe ahead of a start."""
        record = store.scan(scan)
        if not identity.reads_all and (record is None or not identity.may_read(store.proposal_of(record))):
            raise HTTPException(404, f"unknown scan {scan!r}")
        audit.read(identity, scan, "events")
        return subscribers.stream(request, settings, identity, scan)

    @app.get("/static/vendor/plotly.min.js", include_in_schema=False)
    def plotly_js():
        return FileResponse(PLOTLY_JS, media_type="text/javascript")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html")

    return app
