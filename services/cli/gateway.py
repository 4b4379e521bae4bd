"""Run the HTTP gateway (FastAPI + uvicorn)."""

from services.cli.services_common import add_exposure_arguments, add_settings_arguments, refuse_open_exposure, \
    settings_from


def add_arguments(p):
    add_settings_arguments(p)
    add_exposure_arguments(p)
    p.add_argument("--port", type=int, help="default $GATEWAY_PORT or 8000")


def run(args):
    import os

    import uvicorn

    from services.gateway.app import create_app

    import signal

    settings = settings_from(args, gateway_host=args.host, gateway_port=args.port)
    refuse_open_exposure(settings, args.insecure)
    from services.gateway.access import Access

    Access(settings)  # a broken ACCESS_FILE or OIDC_JWKS is one line here, not a worker's traceback
    # uvicorn shuts down on SIGINT/SIGTERM, then re-raises the signal to the handler it found: make that one
    # quiet, so Ctrl-C ends the gateway cleanly instead of with a KeyboardInterrupt traceback.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    common = {"host": settings.gateway_host, "port": settings.gateway_port, "log_level": "info",
              "timeout_graceful_shutdown": 3}  # open live-update streams must not hold up a shutdown
    if settings.gateway_workers > 1:  # worker processes build the app from the environment
        os.environ.update(REDIS_URL=settings.redis_url, DATA_DIR=str(settings.data_dir))
        uvicorn.run("services.gateway.app:create_app", factory=True, workers=settings.gateway_workers, **common)
    else:
        uvicorn.run(create_app(settings), **common)
