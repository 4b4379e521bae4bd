"""Run the HTTP gateway (FastAPI + uvicorn)."""

from services.cli.services_common import add_settings_arguments, settings_from


def add_arguments(p):
    add_settings_arguments(p)
    p.add_argument("--host", help="default $GATEWAY_HOST or 127.0.0.1")
    p.add_argument("--port", type=int, help="default $GATEWAY_PORT or 8000")


def run(args):
    import uvicorn

    from services.gateway.app import create_app

    settings = settings_from(args, gateway_host=args.host, gateway_port=args.port)
    uvicorn.run(create_app(settings), host=settings.gateway_host, port=settings.gateway_port, log_level="info",
                timeout_graceful_shutdown=3)  # open live-update streams must not hold up a shutdown
