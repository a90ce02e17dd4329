"""The ``sperse`` command."""

from __future__ import annotations

import argparse
import sys

import sperse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sperse",
        description="Interactive, reactive, remote and distributed Python.",
        epilog="The interactive REPL, `sperse run` and `sperse server` are not built yet; "
        "see README.md for what works today.",
    )
    parser.add_argument("--version", action="version", version=f"sperse {sperse.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("demo", help="a guided tour of the reactive workspace")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from sperse.demo import main as demo

        demo()
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
