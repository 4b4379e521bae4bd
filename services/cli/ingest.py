"""Run the ingest: receive detector frames over ZeroMQ (native protocol, DECTRIS streams) and EPICS
pvAccess (areaDetector NTNDArray), write them, and queue previews."""

from services.cli.options import add_pva_arguments, pva_config
from services.cli.services_common import add_settings_arguments, settings_from, stop_on_signals


def add_arguments(p):
    add_settings_arguments(p)
    p.add_argument("--bind", help="ZeroMQ PULL address (default $INGEST_BIND or tcp://127.0.0.1:5555)")
    p.add_argument("--dectris", metavar="ENDPOINT",
                   help="connect to a DECTRIS detector's stream instead, e.g. tcp://det:31001 (v2) or tcp://det:9999 (v1)")
    p.add_argument("--dectris-version", choices=["auto", "1", "2"], default="auto",
                   help="DECTRIS stream interface: 1 (JSON, legacy), 2 (CBOR) or auto (told apart per message)")
    add_pva_arguments(p)


def run(args):
    from services.ingest.service import serve

    pva = pva_config(args)  # checked before anything starts: a bad option is one line and exit 2
    stop = stop_on_signals()
    version = None if args.dectris_version == "auto" else int(args.dectris_version)
    serve(settings_from(args, ingest_bind=args.bind), stop, dectris=args.dectris, dectris_version=version, pva=pva)
