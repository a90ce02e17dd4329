"""``sperse coordinator``: the command line of
:class:`~sperse._coordinator.service.CoordinatorServer` (also ``python -m sperse._coordinator``).

Contract with launchers (``sperse up``), the same as ``sperse server``'s:

- Standard output carries exactly one line, printed and flushed once the port listens::

      sperse coordinator ready at sperse://HOST:PORT

  With ``--dashboard-port``, one line before it gives the dashboard's address, token
  included (it logs in, as Jupyter's URL does)::

      sperse coordinator dashboard at http://127.0.0.1:PORT/?token=TOKEN

  Everything else (a generated token, logs) goes to standard error.
- ``--token-stdin`` reads the token from the first line of standard input; the coordinator
  then stops when standard input reaches end of file (its parent has died).
- SIGTERM and SIGINT stop it. Exit status: 0 after a stop, 2 for a configuration it refuses
  (with the reason on standard error).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import threading

from sperse._coordinator.service import (
    CoordinatorConfig,
    CoordinatorConfigError,
    CoordinatorServer,
    log_event,
)
from sperse._server.cli import _log_to_stderr, _public_host, _token, _watch_stdin
from sperse._server.config import is_loopback

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sperse coordinator",
        description="Run a sperse coordinator: the registry of a cluster. Servers join it "
        "(sperse server --join HOST:PORT) with the cluster token as their token; clients "
        "watch which servers are there (sperse status URL).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port (0: any free port; printed)")
    tokens = parser.add_mutually_exclusive_group()
    tokens.add_argument(
        "--token", help="the cluster token servers and clients must give (default: a random one)"
    )
    tokens.add_argument("--token-file", metavar="PATH", help="read the token from this file")
    tokens.add_argument(
        "--token-stdin",
        action="store_true",
        help="read the token from the first line of stdin; stop when stdin closes",
    )
    parser.add_argument("--tls-cert", metavar="PEM", help="TLS certificate chain")
    parser.add_argument("--tls-key", metavar="PEM", help="TLS private key")
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow listening beyond loopback without TLS (trusted networks only)",
    )
    parser.add_argument(
        "--heartbeat-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="a server silent this long is removed (default 5; servers heartbeat 5 times as often)",
    )
    parser.add_argument(
        "--dashboard-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve the web dashboard on this port (0: any free one; its URL is printed)",
    )
    parser.add_argument(
        "--dashboard-host",
        default="127.0.0.1",
        metavar="HOST",
        help="the dashboard's address (default 127.0.0.1; elsewhere only with TLS or --insecure)",
    )
    parser.add_argument(
        "--log-level", default="info", help="debug, info, warning or error (default info)"
    )
    return parser


async def _serve(config: CoordinatorConfig, generated: bool, watch_stdin: bool) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with CoordinatorServer(config) as coordinator:
        url = f"sperse://{_public_host(config.host)}:{coordinator.port}"
        if generated:
            print(
                "sperse coordinator: no token given; the cluster token is\n"
                f"    {coordinator.token}\n"
                "  Servers join with it as their own token (sperse server --join "
                f"{url.removeprefix('sperse://')} --token-file FILE); clients pass it too "
                f"(sperse status {url} --token-file FILE, or SPERSE_TOKEN). Use --token-file "
                "to choose the token.",
                file=sys.stderr,
                flush=True,
            )
        if coordinator.dashboard_url:
            print(f"sperse coordinator dashboard at {coordinator.dashboard_url}", flush=True)
        print(f"sperse coordinator ready at {url}", flush=True)
        if watch_stdin:
            threading.Thread(
                target=_watch_stdin, args=(loop, stop), name="stdin-watch", daemon=True
            ).start()
        await stop.wait()
        log_event(logging.INFO, "coordinator_stopping", address=coordinator.address)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    token, generated = _token(args, parser)
    level = _log_to_stderr(args.log_level)
    config = CoordinatorConfig(
        host=args.host,
        port=args.port,
        token=token,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        insecure=args.insecure,
        heartbeat_timeout=args.heartbeat_timeout,
        log_level=level,
        dashboard_port=args.dashboard_port,
        dashboard_host=args.dashboard_host,
    )
    if not is_loopback(config.host) and config.insecure and not config.tls:
        print(
            f"sperse coordinator: WARNING: listening on {config.host} without TLS (--insecure): "
            "the cluster token crosses the network in clear text",
            file=sys.stderr,
        )
    try:
        asyncio.run(_serve(config, generated, args.token_stdin))
    except CoordinatorConfigError as exc:
        print(f"sperse coordinator: error: {exc}", file=sys.stderr)
        return 2
    return 0
