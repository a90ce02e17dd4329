"""The ``sperse`` command.

    sperse [--connect URL [--token T]] [--workers N] [--local]   the REPL
    sperse --up                                                   the REPL, on `sperse up`'s cluster
    sperse --ray ADDRESS                                          the REPL, on a Ray cluster
    sperse run [-i] [-q] [--connect URL ... | --up] script.py ...  a script, as the REPL runs it
    sperse server ...                                             a server (`sperse server --help`)
    sperse coordinator ...                                        a cluster registry
    sperse up [--servers N] [--tags LIST] [--config F.toml]       a local cluster, until Ctrl-C
    sperse status [URL] [--json]                                  the servers of a cluster
    sperse submit (--wasm M | --python F) --input D --output D    a batch job (`sperse submit -h`)
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
        "--connect",
        metavar="URL",
        default=default,
        help="a running server or coordinator: sperse://HOST:PORT (several servers: URL,URL,...)",
    )
    group.add_argument(
        "--up",
        action="store_true",
        default=argparse.SUPPRESS if nested else False,
        help="the cluster of the running `sperse up`: the coordinator and token file it recorded",
    )
    group.add_argument(
        "--token",
        default=default,
        help="its token (default: $SPERSE_TOKEN or the file $SPERSE_TOKEN_FILE)",
    )
    group.add_argument(
        "--token-file",
        metavar="PATH",
        default=default,
        help="read the token from this file (as `sperse up --token-file` writes it)",
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
    group.add_argument(
        "--ray",
        metavar="ADDRESS",
        default=default,
        help="run remote work as Ray tasks on the Ray at ADDRESS: HOST:PORT of its head, "
        "ray://HOST:PORT (Ray Client), auto (the one this machine runs) or local (a new one)",
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
    submit = commands.add_parser(
        "submit",
        help="run a batch job: a WebAssembly module or Python function over a directory",
        description="Run a program over every file of a directory (each file a unit of work) "
        "on the cluster, writing each output under the same name. Units whose output exists "
        "are skipped: run the same command again to finish an interrupted job. Exit code 0 "
        "when every unit has its output, 1 when some failed (see OUTPUT/_failed.jsonl), 2 "
        "when the job could not start.",
    )
    from sperse.jobs._options import add_arguments as submit_arguments

    submit_arguments(submit)
    _cluster_options(submit, nested=True)
    logs = commands.add_parser(
        "logs",
        help="what a task printed, from the server that ran it (kept 10 minutes after)",
        description="Print what a task printed, as its server kept it. LOG_ID is the task's "
        "`Pending.log_id` (SESSION/TASK). Exit code 1 when no server of the cluster has it.",
    )
    logs.add_argument("log_id", metavar="LOG_ID", help="the task's log id (p.log_id)")
    logs.add_argument("--stream", choices=("stdout", "stderr"), help="only this stream")
    _cluster_options(logs, nested=True)
    commands.add_parser("demo", help="a guided tour of the reactive workspace")
    commands.add_parser(
        "server", help="run a sperse server (see `sperse server --help`)", add_help=False
    )
    delegated = {
        "coordinator": "run a cluster registry that servers join (`sperse coordinator --help`)",
        "up": "start a local cluster: a coordinator and servers, until Ctrl-C",
        "status": "list the servers of a cluster, from its coordinator",
    }
    for name, text in delegated.items():
        commands.add_parser(name, help=text, add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "server":
        from sperse.server import main as server

        return server(rest)
    if args.command == "coordinator":
        from sperse._coordinator.cli import main as coordinator

        return coordinator(rest)
    if args.command == "up":
        from sperse._up import main as up

        return up(rest)
    if args.command == "status":
        from sperse._status import main as status

        return status(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "demo":
        from sperse.demo import main as demo

        demo()
        return 0

    from sperse.repl._main import ClusterOptions, main_logs, main_repl, main_run, main_submit

    if args.token is not None and args.connect is None:
        parser.error("--token goes with --connect URL")
    if args.token_file is not None and args.connect is None:
        parser.error("--token-file goes with --connect URL")
    if args.token is not None and args.token_file is not None:
        parser.error("give --token or --token-file, not both")
    if args.local and args.connect is not None:
        parser.error("--local and --connect exclude each other")
    if args.ray is not None and (args.local or args.connect is not None):
        parser.error("--ray excludes --local and --connect")
    if args.up and (args.connect is not None or args.local or args.ray is not None):
        parser.error(
            "--up (the cluster `sperse up` recorded) excludes --connect, --local and --ray"
        )
    url, token_file = args.connect, args.token_file
    if args.up:
        from sperse._up import recorded_cluster
        from sperse.errors import ServerUnavailable

        try:
            record = recorded_cluster(or_else="name one with --connect URL --token-file PATH")
        except ServerUnavailable as exc:
            print(f"sperse: error: {exc}", file=sys.stderr)
            return 1
        url, token_file = record.url, record.token_file
    options = ClusterOptions(url, args.token, args.workers, args.local, args.ray, token_file)
    if args.command == "logs":
        if url is None:
            parser.error("sperse logs needs the cluster: --connect URL (or --up)")
        return main_logs(options, args.log_id, args.stream)
    if args.command == "submit":
        from sperse.jobs._options import request_from

        return main_submit(options, request_from(args))
    if args.command == "run":
        return main_run(
            options, args.script, args.args, interactive=args.interactive, quiet=args.quiet
        )
    return main_repl(options)


if __name__ == "__main__":
    sys.exit(main())
