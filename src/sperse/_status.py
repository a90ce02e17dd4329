"""``sperse status [URL]``: the servers of a cluster as its coordinator sees them, once.

The coordinator is the URL given, else ``$SPERSE_COORDINATOR``, else the one the running
``sperse up`` recorded (with its token file, unless a token option is given).
A table on a terminal (rich), aligned plain text otherwise, a JSON list with ``--json``.
Then the services whose cards the servers hold, each with its operators, replicas and
request rate: the client that served a service pushes them to its card every second
(:mod:`sperse._flow.cards`), and this reads each card with a short client session to the
server holding it (a service that cannot be read is listed by name alone).
Exit status: 0 with the list (even an empty one), 1 when there is no coordinator to ask
(none given, none recorded), the coordinator refuses the token or nothing answers (one line
on standard error says which, and what to do), 2 for wrong usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sperse.errors import SperseError

if TYPE_CHECKING:
    from sperse._backends.membership import MemberInfo

__all__ = ["build_parser", "main"]

COLUMNS = (
    "server",
    "address",
    "tags",
    "resources",
    "workers",
    "busy",
    "queued",
    "objects",
    "heartbeat",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sperse status",
        description="List the servers of a cluster, as its coordinator sees them: tags, "
        "resources, workers and load, and how long ago each one was heard from.",
    )
    parser.add_argument(
        "url",
        nargs="?",
        default=None,
        metavar="URL",
        help="the coordinator: sperse://HOST:PORT (default: $SPERSE_COORDINATOR, else the "
        "cluster of the running `sperse up`)",
    )
    tokens = parser.add_mutually_exclusive_group()
    tokens.add_argument("--token", help="the cluster token (default: $SPERSE_TOKEN)")
    tokens.add_argument(
        "--token-file", metavar="PATH", help="read the token from this file ($SPERSE_TOKEN_FILE)"
    )
    parser.add_argument("--tls-ca", metavar="PEM", help="the CA of a coordinator that uses TLS")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead")
    parser.add_argument(
        "--timeout", type=float, default=10.0, metavar="SECONDS", help="give up after this"
    )
    return parser


def _size(n: int) -> str:
    from sperse.repl._display import format_size

    return format_size(n)


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)  # the coordinator's clock may be ahead of ours
    if seconds < 60:
        return f"{seconds:.1f} s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _number(value: float) -> str:
    return f"{value:g}"


def rows(members: Sequence[MemberInfo], now: float) -> list[tuple[str, ...]]:
    """The table's cells, one tuple per server, in ``COLUMNS`` order."""
    return [
        (
            member.name,
            member.address + (" (tls)" if member.tls else ""),
            ",".join(sorted(member.tags)) or "-",
            ",".join(f"{k}={_number(v)}" for k, v in sorted(member.resources.items())) or "-",
            str(member.workers),
            str(member.busy),
            str(member.queued),
            f"{member.objects} ({_size(member.object_bytes)})",
            _age(now - member.last_heartbeat),
        )
        for member in members
    ]


Details = Mapping[str, Mapping[str, Any]]  # service name -> what its card says


def as_json(
    members: Sequence[MemberInfo], details: Details | None = None
) -> list[dict[str, object]]:
    """One dict per server; ``services``: the names of the services whose card it holds,
    ``service_stats``: the same services with what their cards say (``flow``, ``state``,
    ``requests`` and their ``rate`` per second, ``operators`` each with its ``name``,
    ``kind``, ``replicas``, ``servers``, ``items_in`` and ``rate``, and ``age``: seconds
    since the card heard), or only ``name`` when it could not be read."""
    details = details or {}
    return [
        {
            "name": m.name,
            "address": m.address,
            "tags": sorted(m.tags),
            "resources": dict(m.resources),
            "workers": m.workers,
            "busy": m.busy,
            "queued": m.queued,
            "objects": m.objects,
            "object_bytes": m.object_bytes,
            "sessions": m.sessions,
            "joined": m.joined,
            "last_heartbeat": m.last_heartbeat,
            "tls": m.tls,
            "services": services_on(m),
            "service_stats": [{"name": n, **details.get(n, {})} for n in services_on(m)],
        }
        for m in members
    ]


def services_on(member: MemberInfo) -> list[str]:
    """The services whose card this server holds (one server holds each service's: the
    named remote object ``Flow.serve`` registers)."""
    from sperse._flow.serving import SERVICE_CARD

    card = SERVICE_CARD
    return sorted(n.removeprefix(card) for n in member.named if n.startswith(card))


def service_details(
    members: Sequence[MemberInfo], token: str, tls_ca: bytes | None, timeout: float
) -> dict[str, Mapping[str, Any]]:
    """What the cards of the services on ``members`` say, by service name: one short client
    session per server that holds cards (a server that cannot be reached is skipped)."""
    from sperse._cluster.connect import look
    from sperse._flow.cards import read_cards

    out: dict[str, Mapping[str, Any]] = {}
    for member in members:
        names = services_on(member)
        if not names:
            continue
        try:
            with look(member.url, token, tls_ca=tls_ca, timeout=timeout) as cluster:
                out.update(read_cards(cluster, names, timeout))
        except SperseError as exc:
            print(
                f"sperse status: cannot read the services on {member.name}: {exc}", file=sys.stderr
            )
    return out


def services_text(members: Sequence[MemberInfo], details: Details) -> str:
    """The services line, then each service that its card describes: its requests and their
    rate, and a row per operator."""
    from sperse.repl._display import servers_table

    served = [f"{name} (on {m.name})" for m in members for name in services_on(m)]
    lines = [f"services: {', '.join(served)}"]
    for name in sorted({n for m in members for n in services_on(m)}):
        card = details.get(name)
        if card is None:
            lines.append(f"service {name!r}: no summary from the client that served it yet")
            continue
        lines.append(
            f"service {name!r} (flow {card['flow']!r}): {card['state']}, "
            f"{card['requests']:,} requests ({card['rate']:,.0f}/s) from every client, "
            f"as of {card['age']:.1f} s ago"
        )
        rows = [
            {
                "operator": op["name"],
                "kind": op["kind"],
                "replicas": str(op["replicas"]),
                "servers": ", ".join(f"{s} ({n})" if n > 1 else s for s, n in op["servers"].items())
                or "-",
                "in": f"{op['items_in']:,}",
                "rate/s": f"{op['rate']:,.0f}",
                "in flight": f"{op.get('in_flight', 0):,}" if op["kind"] == "map_async" else "",
            }
            for op in card["operators"]
        ]
        columns = ["operator", "kind", "replicas", "servers", "in", "rate/s"]
        if any(op["kind"] == "map_async" for op in card["operators"]):
            columns.append("in flight")  # an async operator's calls
        table = servers_table(rows, columns)
        lines += ["  " + line for line in table.splitlines()]
    return "\n".join(lines)


def plain_table(table: Sequence[tuple[str, ...]]) -> str:
    lines = [COLUMNS, *table]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _print_table(url: str, table: list[tuple[str, ...]]) -> None:
    if not sys.stdout.isatty():
        print(plain_table(table))
        return
    from rich import box
    from rich.console import Console
    from rich.table import Table

    # Narrow terminals: no side borders, and no column that says "-" for every server.
    shown = [i for i in range(len(COLUMNS)) if i < 2 or any(row[i] != "-" for row in table)]
    view = Table(
        title=f"servers of {url}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    for i in shown:
        numeric = COLUMNS[i] in ("workers", "busy", "queued")
        view.add_column(COLUMNS[i], justify="right" if numeric else "left", no_wrap=i < 2)
    for row in table:
        view.add_row(*(row[i] for i in shown))
    Console().print(view)


def _fail(message: str) -> int:
    print(f"sperse status: error: {message}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from sperse._backends.membership import members
    from sperse._cluster.connect import _token_from
    from sperse._up import ClusterRecord, recorded_cluster
    from sperse._wire.urls import parse_url

    url = args.url or os.environ.get("SPERSE_COORDINATOR")
    token_file = args.token_file
    record: ClusterRecord | None = None
    if not url:
        try:
            record = recorded_cluster(
                or_else="give the coordinator's URL (sperse status sperse://HOST:PORT) or set "
                "SPERSE_COORDINATOR"
            )
        except SperseError as exc:
            return _fail(str(exc))
        url = record.url
        if args.token is None and token_file is None:
            token_file = record.token_file
    try:
        parse_url(url)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        token = args.token or _token_from(token_file)
        tls_ca = Path(args.tls_ca).read_bytes() if args.tls_ca else None
    except OSError as exc:
        return _fail(f"cannot read {exc.filename!r}: {exc.strerror}")
    except SperseError:  # no token anywhere
        return _fail(
            "no token: pass --token or --token-file, or set SPERSE_TOKEN or SPERSE_TOKEN_FILE "
            "(the cluster token: the one the coordinator was started with)"
        )
    try:
        found = members(url, token, tls_ca=tls_ca, timeout=args.timeout)
    except SperseError as exc:
        where = f" (the cluster of {record.describe()})" if record is not None else ""
        return _fail(f"{exc}{where}")
    details = service_details(found, token, tls_ca, args.timeout)
    if args.json:
        print(json.dumps(as_json(found, details), indent=2))
    elif not found:
        print(f"no server has joined the coordinator at {url}")
    else:
        _print_table(url, rows(found, time.time()))
        if any(services_on(m) for m in found):
            print(services_text(found, details))
    return 0
