"""The options and configuration file of ``sperse up``, turned into a :class:`Plan`: the
servers to start and the coordinator's port and heartbeat timeout.

Options given on the command line win over the TOML file; a file that lists its servers
(``[[server]]``) refuses ``--servers`` and ``--tags``. Anything wrong is a
:class:`ConfigError` (``sperse up`` exits 2 with its message).
"""

from __future__ import annotations

import argparse
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sperse._tokens import new_token
from sperse._up.cluster import ServerSpec

__all__ = ["ConfigError", "Plan", "build_parser", "read_plan", "read_token"]


class ConfigError(Exception):
    """Wrong options or configuration: exit 2 with this message."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sperse up",
        description="Start a local cluster: a coordinator and servers on 127.0.0.1, as child "
        "processes, until Ctrl-C. Prints the coordinator's URL and how to connect, and records "
        "both in $XDG_RUNTIME_DIR/sperse/cluster.json (else ~/.local/state/sperse/) for "
        "`sperse status` and `sperse run --up`.",
    )
    parser.add_argument(
        "--servers",
        type=int,
        default=None,
        metavar="N",
        help="how many servers (default 2, or one per --tags entry)",
    )
    parser.add_argument(
        "--workers", type=int, default=None, metavar="W", help="worker processes per server (1)"
    )
    parser.add_argument(
        "--tags",
        default=None,
        metavar="LIST",
        help="the servers' tags, one comma-separated entry per server, '+' joining several: "
        "'gpu+fast,db,' = server 1 gpu and fast, server 2 db, server 3 none",
    )
    parser.add_argument(
        "--name-prefix", default=None, metavar="PREFIX", help="server names (default server-)"
    )
    parser.add_argument(
        "--port", type=int, default=None, help="the coordinator's port (default 0: any free one)"
    )
    dashboard = parser.add_mutually_exclusive_group()
    dashboard.add_argument(
        "--dashboard-port",
        type=int,
        default=0,
        metavar="PORT",
        help="the web dashboard's port on 127.0.0.1 (default 0: any free one; printed)",
    )
    dashboard.add_argument(
        "--no-dashboard",
        dest="dashboard_port",
        action="store_const",
        const=None,
        help="serve no dashboard",
    )
    parser.add_argument(
        "--heartbeat-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="a server silent this long is dropped (default 5)",
    )
    parser.add_argument(
        "--token-file",
        metavar="PATH",
        help="the cluster token: read from PATH, or a new one written there (mode 0600); "
        "default: a new one in a 0600 file beside the cluster's record",
    )
    parser.add_argument(
        "--config",
        metavar="FILE.toml",
        help="[coordinator] port, heartbeat_timeout; [[server]] name, tags, resources, "
        "workers, cwd (relative to the file)",
    )
    return parser


def read_token(path: str | None) -> tuple[str, str]:
    """The token, and a note on where it came from (for stderr; empty: none)."""
    if path is None:
        return new_token(), ""
    if os.path.exists(path):
        try:
            token = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the token file {path!r}: {exc.strerror}") from exc
        if not token:
            raise ConfigError(f"the token file {path!r} is empty: delete it to get a new token")
        return token, ""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot create the token file {path!r}: {exc.strerror}") from exc
    token = new_token()
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        os.fchmod(file.fileno(), 0o600)  # exactly 0600, whatever the umask
        file.write(token + "\n")
    return token, f"wrote a new cluster token to {path} (mode 0600)"


def _split_tags(text: str) -> list[frozenset[str]]:
    return [
        frozenset(t.strip() for t in entry.split("+") if t.strip()) for entry in text.split(",")
    ]


_SERVER_KEYS = {"name", "tags", "resources", "workers", "cwd"}
_COORDINATOR_KEYS = {"port", "heartbeat_timeout"}


def _load_config(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"cannot read {path!r}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc


def _server_spec(entry: object, index: int, base: Path, prefix: str, workers: int) -> ServerSpec:
    where = f"[[server]] number {index + 1}"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} is not a table")
    unknown = set(entry) - _SERVER_KEYS
    if unknown:
        raise ConfigError(
            f"{where}: unknown keys {sorted(unknown)}; a server has {sorted(_SERVER_KEYS)}"
        )
    name = entry.get("name", f"{prefix}{index + 1}")
    tags = entry.get("tags", [])
    resources = entry.get("resources", {})
    count = entry.get("workers", workers)
    cwd = entry.get("cwd")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: name must be a non-empty string")
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ConfigError(f"{where} ({name}): tags must be a list of strings")
    if not isinstance(resources, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in resources.values()
    ):
        raise ConfigError(f"{where} ({name}): resources must be a table of numbers")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ConfigError(f"{where} ({name}): workers must be a whole number, at least 1")
    if cwd is not None and not isinstance(cwd, str):
        raise ConfigError(f"{where} ({name}): cwd must be a string (a directory)")
    directory = None if cwd is None else str((base / cwd).resolve())
    return ServerSpec(name, frozenset(tags), resources, count, directory)


@dataclass(frozen=True, slots=True)
class Plan:
    specs: list[ServerSpec]
    port: int
    heartbeat_timeout: float
    dashboard_port: int | None = 0


def read_plan(args: argparse.Namespace) -> Plan:
    """What to start, from the options and the TOML file (options given win)."""
    config = _load_config(args.config) if args.config else {}
    unknown = set(config) - {"coordinator", "server"}
    if unknown:
        raise ConfigError(f"{args.config}: unknown tables {sorted(unknown)}")
    coordinator = config.get("coordinator", {})
    if not isinstance(coordinator, dict) or set(coordinator) - _COORDINATOR_KEYS:
        raise ConfigError(f"{args.config}: [coordinator] takes only {sorted(_COORDINATOR_KEYS)}")
    port = args.port if args.port is not None else coordinator.get("port", 0)
    timeout = args.heartbeat_timeout
    if timeout is None:
        timeout = coordinator.get("heartbeat_timeout", 5.0)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ConfigError(f"the coordinator's port must be between 0 and 65535, not {port!r}")
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not timeout > 0:
        raise ConfigError(f"heartbeat_timeout must be a positive number, not {timeout!r}")
    workers = args.workers if args.workers is not None else 1
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, not {workers}")
    prefix = args.name_prefix if args.name_prefix is not None else "server-"
    entries = config.get("server", [])
    if entries:
        if args.servers is not None or args.tags is not None:
            raise ConfigError(
                f"{args.config} lists its servers ([[server]]): --servers and --tags do not "
                "apply; change the file instead"
            )
        if not isinstance(entries, list):
            raise ConfigError(f"{args.config}: server must be an array of tables: [[server]]")
        base = Path(args.config).resolve().parent
        specs = [_server_spec(e, i, base, prefix, workers) for i, e in enumerate(entries)]
    else:
        tags = _split_tags(args.tags) if args.tags is not None else []
        count = args.servers if args.servers is not None else max(2, len(tags))
        if count < 1:
            raise ConfigError(f"--servers must be at least 1, not {count}")
        if len(tags) > count:
            raise ConfigError(
                f"--tags has {len(tags)} entries for {count} servers: give one entry per "
                f"server (an empty one for no tags), or --servers {len(tags)}"
            )
        tags += [frozenset()] * (count - len(tags))
        specs = [ServerSpec(f"{prefix}{i + 1}", tags[i], workers=workers) for i in range(count)]
    names = [spec.name for spec in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"two servers are named {', '.join(duplicates)}: names must differ")
    dashboard_port = getattr(args, "dashboard_port", 0)
    if dashboard_port is not None and not 0 <= dashboard_port <= 65535:
        raise ConfigError(f"--dashboard-port must be between 0 and 65535, not {dashboard_port}")
    return Plan(specs, port, float(timeout), dashboard_port)
