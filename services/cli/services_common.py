"""Shared plumbing of the service commands: settings from options, logging, clean stop on signals."""

from __future__ import annotations

import logging
import signal
import threading

from shared.state.settings import Settings


def add_settings_arguments(p):
    p.add_argument("--redis-url", help="default $REDIS_URL or redis://127.0.0.1:6379/0")
    p.add_argument("--data-dir", help="raw frames folder (default $DATA_DIR or data/live)")


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_exposure_arguments(p) -> None:
    p.add_argument("--host", help="gateway address (default $GATEWAY_HOST or 127.0.0.1)")
    p.add_argument("--insecure", action="store_true", help="serve a non-loopback address without access control "
                   "(no ACCESS_FILE, no OIDC_ISSUER): anyone who reaches it reads every proposal's data")


def refuse_open_exposure(settings: Settings, insecure: bool) -> None:
    """A gateway without access control serves loopback only, unless the operator says --insecure."""
    from shared.physics.errors import InputError

    if not settings.access_configured and settings.gateway_host not in LOOPBACK and not insecure:
        raise InputError(f"refusing to serve {settings.gateway_host} with no access control: set ACCESS_FILE or "
                         "OIDC_ISSUER, serve 127.0.0.1, or give --insecure")


def settings_from(args, **overrides) -> Settings:
    values = {k: v for k, v in {"redis_url": getattr(args, "redis_url", None),
                                "data_dir": getattr(args, "data_dir", None), **overrides}.items() if v is not None}
    return Settings(**values)


def stop_on_signals() -> threading.Event:
    """An event set by SIGINT/SIGTERM, so loops finish their message and close files."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return stop
