"""Run the ingest: receive detector frames over ZeroMQ (native protocol, DECTRIS streams) and EPICS
pvAccess (areaDetector NTNDArray), write them, and queue previews."""

from services.cli.options import add_pva_arguments, check_receivers, positive_int, pva_config, whole_number
from services.cli.services_common import add_settings_arguments, settings_from, stop_on_signals


def add_arguments(p):
    add_settings_arguments(p)
    p.add_argument("--bind", help="ZeroMQ PULL address (default $INGEST_BIND or tcp://127.0.0.1:5555)")
    p.add_argument("--dectris", metavar="ENDPOINT",
                   help="connect to a DECTRIS detector's stream instead, e.g. tcp://det:31001 (v2) or tcp://det:9999 (v1)")
    p.add_argument("--dectris-version", choices=["auto", "1", "2"], default="auto",
                   help="DECTRIS stream interface: 1 (JSON, legacy), 2 (CBOR) or auto (told apart per message)")
    p.add_argument("--receivers", type=positive_int, metavar="N",
                   help="receivers sharing the stream (default $INGEST_RECEIVERS or 1): start one ingest per "
                        "receiver, each with its --receiver index; natively receiver K binds --bind's port + K")
    p.add_argument("--receiver", type=whole_number, metavar="K", help="this receiver's index, 0 … N-1 (default 0)")
    add_pva_arguments(p)


def run(args):
    from services.ingest.service import serve

    pva = pva_config(args)  # checked before anything starts: a bad option is one line and exit 2
    settings = settings_from(args, ingest_bind=args.bind, ingest_receivers=args.receivers,
                             ingest_receiver=args.receiver)
    check_receivers(settings, pva)
    stop = stop_on_signals()
    version = None if args.dectris_version == "auto" else int(args.dectris_version)
    serve(settings, stop, dectris=args.dectris, dectris_version=version, pva=pva)
