"""``sperse server``: the command line of :class:`~sperse._server.server.SperseServer`.

Contract with launchers (the embedded server of ``sperse.connect()``):

- Standard output carries exactly one line, printed and flushed once the port listens::

      sperse server NAME ready at sperse://HOST:PORT

  Everything else (a generated token, logs) goes to standard error.
- ``--print-local-address`` prints, just before that line, the name of the server's same-host
  socket (or nothing, without one), for a launcher that connects there first::

      sperse server NAME local at @sperse-...

- ``--token-stdin`` reads the token from the first line of standard input, so it never shows
  on a command line; the server then keeps reading standard input and stops when it reaches
  end of file: that is how it notices that its parent has died.
- SIGTERM and SIGINT stop it gracefully; the workers exit before it does. Exit status: 0
  after a stop, 2 for a configuration it refuses (with the reason on standard error), which
  includes a coordinator (``--join``) that refuses it or does not answer within 10 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import threading

from sperse._server.config import (
    DEFAULT_MAX_VALUE_SIZE,
    ServerConfig,
    ServerConfigError,
    is_loopback,
)
from sperse._server.logs import log_event
from sperse._server.server import SperseServer
from sperse._tokens import new_token

__all__ = ["build_parser", "main"]


def _resource(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        if not sep or not name:
            raise ValueError
        return name.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not NAME=NUMBER (for example gpu=1 or mem_gb=64)"
        ) from None


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _size(text: str) -> int:
    """Bytes: a number, or one with a binary suffix (``256M``, ``4G``; ``KiB``/``KB`` too)."""
    number = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = number[-1:] if number[-1:] in _UNITS else ""
    try:
        value = int(float(number.removesuffix(unit)) * _UNITS[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size: give bytes, or a number with K, M, G or T (such as 4G)"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a size must be positive")
    return value


def _add_totals(parser: argparse.ArgumentParser) -> None:
    """The options of the server's total bounds on memory (docs/server.md, "Bounds")."""
    parser.add_argument(
        "--max-held-bytes",
        type=_size,
        default=None,
        metavar="SIZE",
        help="results held on this server (those of the inline limit or more), all sessions "
        "together; a result that would pass it fails its task (default: a quarter of the "
        "memory, at most half of /dev/shm)",
    )
    parser.add_argument(
        "--max-unread-bytes",
        type=_size,
        default=None,
        metavar="SIZE",
        help="events a client has not read yet, per session: past it, that session's tasks "
        "that have not started wait until it reads (default 256M)",
    )
    parser.add_argument(
        "--max-unread-total",
        type=_size,
        default=None,
        metavar="SIZE",
        help="events unread, all sessions together: past it, a session holding more than "
        "its share (this over the sessions) waits as above (default 1G)",
    )
    parser.add_argument(
        "--max-blob-bytes",
        type=_size,
        default=None,
        metavar="SIZE",
        help="bytes a client may send on one stream ahead of the message that uses them "
        "(unfinished blobs, or ones no message names yet); past it the stream ends "
        "(default 1G)",
    )
    parser.add_argument(
        "--max-blob-total",
        type=_size,
        default=None,
        metavar="SIZE",
        help="such bytes, all streams together: past it, a stream holding more than its "
        "share (this over the streams) ends (default 2G)",
    )
    parser.add_argument(
        "--max-objects",
        type=int,
        default=None,
        metavar="N",
        help="live remote objects on this server, each a process (default 64)",
    )
    parser.add_argument(
        "--max-session-objects",
        type=int,
        default=None,
        metavar="N",
        help="live remote objects one client session may create (default: half of --max-objects)",
    )
    parser.add_argument(
        "--spare-object-workers",
        type=int,
        default=None,
        metavar="N",
        help="object worker processes kept started, so that creating a remote object does "
        "not wait for one; they count toward --max-objects (default 0: none)",
    )


def _totals(args: argparse.Namespace) -> dict[str, int]:
    """The ``ServerConfig`` fields of the options given (the others keep their defaults)."""
    names = (
        "max_held_bytes",
        "max_unread_bytes",
        "max_unread_total",
        "max_blob_bytes",
        "max_blob_total",
        "max_objects",
        "max_session_objects",
        "spare_object_workers",
    )
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sperse server",
        description="Run a sperse server: remote work for sperse clients, on worker processes.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port (0: any free port; printed)")
    parser.add_argument(
        "--workers", type=int, default=None, help="worker processes (default: cores)"
    )
    parser.add_argument("--name", default="", help="server name (default: HOSTNAME-PORT)")
    parser.add_argument("--tag", action="append", default=[], help="a tag tasks can ask for")
    parser.add_argument(
        "--resource",
        action="append",
        default=[],
        type=_resource,
        metavar="NAME=NUMBER",
        help="a resource tasks can ask for, such as gpu=1",
    )
    tokens = parser.add_mutually_exclusive_group()
    tokens.add_argument("--token", help="the secret clients must give (default: a random one)")
    tokens.add_argument("--token-file", metavar="PATH", help="read the token from this file")
    tokens.add_argument(
        "--token-stdin",
        action="store_true",
        help="read the token from the first line of stdin; stop when stdin closes",
    )
    parser.add_argument(
        "--print-local-address",
        action="store_true",
        help="print the same-host socket's name before the ready line (for launchers)",
    )
    parser.add_argument("--tls-cert", metavar="PEM", help="TLS certificate chain")
    parser.add_argument("--tls-key", metavar="PEM", help="TLS private key")
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow listening beyond loopback without TLS (trusted networks only)",
    )
    parser.add_argument(
        "--env-dir",
        default="",
        metavar="DIR",
        help="where the pip environments tasks ask for (env=) are installed, one folder each "
        "(default $XDG_CACHE_HOME/sperse/envs)",
    )
    parser.add_argument(
        "--env-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="an environment whose pip install takes longer fails its tasks (default 600)",
    )
    parser.add_argument(
        "--session-grace",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long a disconnected client's session waits to be resumed (default 30)",
    )
    parser.add_argument(
        "--max-value-size",
        type=int,
        default=DEFAULT_MAX_VALUE_SIZE,
        metavar="BYTES",
        help="the largest value a client may send",
    )
    _add_totals(parser)
    parser.add_argument(
        "--no-shm",
        action="store_true",
        help="never move big values through shared memory files, even with clients on this host",
    )
    parser.add_argument(
        "--join",
        default="",
        metavar="HOST:PORT",
        help="register with the coordinator there (this server's token is the cluster token)",
    )
    parser.add_argument(
        "--advertise",
        default="",
        metavar="HOST:PORT",
        help="the address to register with --join (default: --host, or this host's name for "
        "0.0.0.0, and the port it listens on)",
    )
    parser.add_argument(
        "--join-ca", metavar="PEM", help="the CA of a coordinator that uses TLS (with --join)"
    )
    parser.add_argument(
        "--log-level", default="info", help="debug, info, warning or error (default info)"
    )
    return parser


def _read_token_line() -> str:
    """The first line of stdin, read without buffering (the rest is watched for EOF)."""
    chunks: list[bytes] = []
    while True:
        byte = os.read(0, 1)
        if not byte or byte == b"\n":
            break
        chunks.append(byte)
    return b"".join(chunks).decode().strip()


def _token(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[str, bool]:
    """The token, and whether it was generated here."""
    if args.token is not None:
        token = str(args.token).strip()
    elif args.token_file is not None:
        try:
            with open(args.token_file, encoding="utf-8") as file:
                token = file.read().strip()
        except OSError as exc:
            parser.error(f"cannot read the token file {args.token_file!r}: {exc.strerror}")
    elif args.token_stdin:
        token = _read_token_line()
    else:
        return new_token(), True
    if not token:
        parser.error("the token is empty: give a non-empty secret")
    return token, False


def _log_to_stderr(log_level: str) -> str:
    """Log lines to standard error from ``log_level`` up (INFO for a name it does not
    know: the config check says so); the level's name, upper case."""
    level = str(log_level).upper()
    logging.basicConfig(
        level=level if isinstance(logging.getLevelName(level), int) else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    return level


def _watch_stdin(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Stop the server when stdin reaches EOF (the parent that holds its other end died)."""
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    with contextlib.suppress(RuntimeError):  # the loop has finished already
        loop.call_soon_threadsafe(stop.set)


def _public_host(host: str) -> str:
    if host in ("", "0.0.0.0", "::", "[::]"):
        return socket.gethostname()
    return f"[{host}]" if ":" in host else host


async def _serve(
    config: ServerConfig, generated: bool, watch_stdin: bool, print_local: bool
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with SperseServer(config) as server:
        url = f"sperse://{_public_host(config.host)}:{server.port}"
        if generated:
            print(
                f"sperse server: no token given; clients connect with this one:\n"
                f"    sperse.connect({url!r}, token={server.token!r})\n"
                "  (or set SPERSE_TOKEN; use --token-file to choose the token)",
                file=sys.stderr,
                flush=True,
            )
        if print_local and server.local_address:
            print(f"sperse server {server.name} local at {server.local_address}")
        print(f"sperse server {server.name} ready at {url}", flush=True)
        if watch_stdin:
            threading.Thread(
                target=_watch_stdin, args=(loop, stop), name="stdin-watch", daemon=True
            ).start()
        await stop.wait()
        log_event(logging.INFO, "server_stopping", name=server.name)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    token, generated = _token(args, parser)
    level = _log_to_stderr(args.log_level)
    config = ServerConfig(
        host=args.host,
        port=args.port,
        name=args.name,
        tags=frozenset(args.tag),
        resources=dict(args.resource),
        workers=args.workers,
        token=token,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        insecure=args.insecure,
        session_grace=args.session_grace,
        env_dir=args.env_dir,
        env_timeout=args.env_timeout,
        max_value_size=args.max_value_size,
        log_level=level,
        shm=not args.no_shm,
        join=args.join,
        advertise=args.advertise,
        join_tls_ca=args.join_ca,
        **_totals(args),
    )
    if not is_loopback(config.host) and config.insecure and not config.tls:
        print(
            f"sperse server: WARNING: listening on {config.host} without TLS (--insecure): "
            "tokens and data cross the network in clear text",
            file=sys.stderr,
        )
    try:
        asyncio.run(_serve(config, generated, args.token_stdin, args.print_local_address))
    except ServerConfigError as exc:
        print(f"sperse server: error: {exc}", file=sys.stderr)
        return 2
    return 0
