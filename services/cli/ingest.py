"""Run the ingest: receive detector frames over ZeroMQ (native protocol) and queue previews."""

from services.cli.services_common import add_settings_arguments, settings_from, stop_on_signals


def add_arguments(p):
    add_settings_arguments(p)
    p.add_argument("--bind", help="ZeroMQ PULL address (default $INGEST_BIND or tcp://127.0.0.1:5555)")
    p.add_argument("--dectris", metavar="ENDPOINT", help="connect to a DECTRIS stream (v1) instead, e.g. tcp://det:9999")


def run(args):
    from services.ingest.service import serve

    stop = stop_on_signals()
    serve(settings_from(args, ingest_bind=args.bind), stop, dectris=args.dectris)
