"""Run the ingest: receive detector frames over ZeroMQ (native protocol, DECTRIS streams) and EPICS
pvAccess (areaDetector NTNDArray), write them, and queue previews."""

from services.cli.options import add_pva_arguments, pva_config
from services.cli.services_common import add_settings_arguments, settings_from, stop_on_signals
from shared.errors import InputError


def add_arguments(p):
    add_settings_arguments(p)
    p.add_argument("--bind", help="ZeroMQ PULL address (default $INGEST_BIND or tcp://127.0.0.1:5555)")
    p.add_argument("--dectris", metavar="ENDPOINT",
                   help="connect to a DECTRIS detector's stream instead, e.g. tcp://det:31001 (v2) or tcp://det:9999 (v1)")
    p.add_argument("--dectris-version", choices=["auto", "1", "2"], default="auto",
                   help="DECTRIS stream interface: 1 (JSON, legacy), 2 (CBOR) or auto (told apart per message)")
    p.add_argument("--receivers", type=int, metavar="N",
                   help="receivers sharing the stream (default $INGEST_RECEIVERS or 1): start one ingest per "
                        "receiver, each with its --receiver index; natively receiver K binds --bind's port + K")
    p.add_argument("--receiver", type=int, metavar="K", help="this receiver's index, 0 … N-1 (default 0)")
    add_pva_arguments(p)


def run(args):
    from services.ingest.service import serve

    pva = pva_config(args)  # checked before anything starts: a bad option is one line and exit 2
    if (args.receivers is not None and args.receivers < 1) or (args.receiver is not None and args.receiver < 0):
        raise InputError("--receivers must be at least 1 and --receiver at least 0")
    settings = settings_from(args, ingest_bind=args.bind, ingest_receivers=args.receivers,
                             ingest_receiver=args.receiver)
    if settings.ingest_receiver >= settings.ingest_receivers:
        raise InputError(f"--receiver {settings.ingest_receiver} is not one of 0 … {settings.ingest_receivers - 1}")
    if pva and settings.ingest_receivers > 1:
        raise InputError("--pva takes one receiver: a pvAccess monitor is not dealt among several")
    stop = stop_on_signals()
    version = None if args.dectris_version == "auto" else int(args.dectris_version)
    serve(settings, stop, dectris=args.dectris, dectris_version=version, pva=pva)
