"""The ``sperse`` command.

    sperse [--connect URL [--token T]] [--workers N] [--local]   the REPL
    sperse run [-i] [-q] [--connect URL ...] script.py [args...]   a script, as the REPL runs it
    sperse server ...                                             a server (`sperse server --help`)
    sperse demo                                                   a guided tour

Imports stay light at the top: worker processes re-import the main module,
and ``sperse --version`` should not load the client.
"""

from __future__ import annotations

import argparse
import sys

import sperse


def _cluster_options(parser: argparse.ArgumentParser, *, nested: bool = False) -> None:
    # In a subcommand the defaults are suppressed, so that options given before the
    # subcommand (`sperse --connect URL run x.py`) are not reset by it.
    default = argparse.SUPPRESS if nested else None
    group = parser.add_argument_group("where remote work runs (default: an embedded server)")
    group.add_argument(
        "--connect", metavar="URL", default=default, help="a running server: sperse://HOST:PORT"
    )
    group.add_argument(
        "--token",
        default=default,
        help="its token (default: $SPERSE_TOKEN or the file $SPERSE_TOKEN_FILE)",
    )
    group.add_argument(
        "--workers",
        type=int,
        metavar="N",
        default=default,
        help="worker processes of the embedded server (default: one per core)",
    )
    group.add_argument(
        "--local",
        action="store_true",
        default=argparse.SUPPRESS if nested else False,
        help="run remote work in local worker processes, without a server",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sperse",
        description="Interactive, reactive, remote and distributed Python. "
        "With no command: the interactive prompt.",
    )
    parser.add_argument("--version", action="version", version=f"sperse {sperse.__version__}")
    _cluster_options(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run a script as the prompt would: remote statements, arrivals, then wait",
        description="Run a Python file statement by statement in a reactive workspace, "
        "print arrivals as they come, and wait for all pending work at the end.",
    )
    run.add_argument("-i", dest="interactive", action="store_true", help="then the prompt")
    run.add_argument(
        "-q", "--quiet", action="store_true", help="do not print cells that finish later"
    )
    _cluster_options(run, nested=True)
    run.add_argument("script", help="the Python file")
    run.add_argument("args", nargs=argparse.REMAINDER, help="its arguments (sys.argv[1:])")
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

    from sperse.repl._main import ClusterOptions, main_repl, main_run

    if args.token is not None and args.connect is None:
        parser.error("--token goes with --connect URL")
    if args.local and args.connect is not None:
        parser.error("--local and --connect exclude each other")
    options = ClusterOptions(args.connect, args.token, args.workers, args.local)
    if args.command == "run":
        return main_run(
            options, args.script, args.args, interactive=args.interactive, quiet=args.quiet
        )
    return main_repl(options)


if __name__ == "__main__":
    sys.exit(main())
