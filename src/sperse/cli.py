"""The ``sperse`` command."""

from __future__ import annotations

import argparse
import sys

import sperse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sperse",
        description="Interactive, reactive, remote and distributed Python.",
        epilog="The interactive REPL and `sperse run` are not built yet; "
        "see README.md for what works today.",
    )
    parser.add_argument("--version", action="version", version=f"sperse {sperse.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("demo", help="a guided tour of the reactive workspace")
    commands.add_parser(
        "server", help="run a sperse server (see `sperse server --help`)", add_help=False
    )
    args, rest = parser.parse_known_args(argv)
    if args.command == "server":
        from sperse.server import main as server

        return server(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "demo":
        from sperse.demo import main as demo

        demo()
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
