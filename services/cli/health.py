"""Health probe for containers: exit 0 when this machine's service of a kind is alive, else 1.

gateway: GET /health answers; ingest, infer, refine: a heartbeat of a process on
this host is fresh in Redis (workers beat every 2 s, the key lives 15 s).
"""

from __future__ import annotations

import socket
import sys
import urllib.request

from services.cli.services_common import add_settings_arguments, settings_from


def add_arguments(p):
    add_settings_arguments(p)
    p.add_argument("kind", choices=["gateway", "ingest", "infer", "refine"])


def run(args):
    settings = settings_from(args)
    try:
        if args.kind == "gateway":
            with urllib.request.urlopen(f"http://127.0.0.1:{settings.gateway_port}/health", timeout=3):
                return 0
        from shared.state.store import Store

        host = socket.gethostname()
        alive = [w for w in Store(settings).live_workers(args.kind) if w.startswith(f"{host}-")]
        if alive:
            return 0
        print(f"no fresh {args.kind} heartbeat from {host}", file=sys.stderr)
    except Exception as exc:  # any failure is simply 'unhealthy' for the orchestrator
        print(f"{args.kind} unhealthy: {exc}", file=sys.stderr)
    return 1
