"""Entry point of ``cdi-live``: builds the parser from the subcommand modules.

Errors the user can fix print one line on stderr and exit with code 2; set
CDI_LIVE_DEBUG=1 to see a traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow start-up chatter off the terminal
import sys

from shared import __version__
from shared.physics.errors import InputError

SUBCOMMANDS = ["simulate", "phase_retrieve", "reconstruct", "train", "evaluate", "up", "ingest", "worker",
               "gateway", "beamline_sim", "demo", "health"]


class OneLineParser(argparse.ArgumentParser):
    """argparse, but usage errors are a single line (exit code 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="cdi-live", description="Real-time Bragg CDI: simulate, phase, reconstruct, serve.")
    parser.add_argument("--version", action="version", version=f"cdi-live {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"services.cli.{name}")
        sub = commands.add_parser(name.replace("_", "-"), help=module.__doc__.strip().splitlines()[0],
                                  description=module.__doc__)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return args.run(args) or 0
    except KeyboardInterrupt:
        print("cdi-live: interrupted", file=sys.stderr)
        return 130
    except (InputError, OSError) as exc:
        if os.environ.get("CDI_LIVE_DEBUG"):
            raise
        print(f"cdi-live {args.command}: error: {exc}".replace("\n", " "), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
