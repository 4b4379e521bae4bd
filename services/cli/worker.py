"""Run one worker: 'infer' (3D-CDI-NN on preview and final jobs) or 'refine' (AD refinement)."""

from services.cli.services_common import add_settings_arguments, settings_from, stop_on_signals


def add_arguments(p):
    p.add_argument("kind", choices=["infer", "refine"])
    p.add_argument("--name", help="consumer name in the Redis group (default host-pid)")
    add_settings_arguments(p)


def run(args):
    stop = stop_on_signals()
    settings = settings_from(args)
    if args.kind == "infer":
        from services.worker.infer import serve
    else:
        from services.worker.refine import serve
    serve(settings, stop, args.name)
