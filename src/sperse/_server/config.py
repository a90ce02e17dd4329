"""The configuration of a ``sperse server`` and the checks made before it listens.

Invariants:

- A ``ServerConfig`` is immutable (its resources are a read-only copy).
- ``check_config`` refuses, before anything binds a port, a server that would listen beyond
  loopback without TLS (unless ``insecure``), half a TLS pair, and unusable numbers. Its
  errors say what is wrong and how to fix it.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from sperse.errors import SperseError

__all__ = [
    "DEFAULT_INLINE_LIMIT",
    "DEFAULT_MAX_BLOB_BYTES",
    "DEFAULT_MAX_BLOB_TOTAL",
    "DEFAULT_MAX_OBJECTS",
    "DEFAULT_MAX_UNREAD_BYTES",
    "DEFAULT_MAX_UNREAD_TOTAL",
    "DEFAULT_MAX_VALUE_SIZE",
    "ServerConfig",
    "ServerConfigError",
    "check_config",
    "default_max_held_bytes",
    "default_name",
    "is_loopback",
]

DEFAULT_INLINE_LIMIT = 1 << 20
DEFAULT_MAX_VALUE_SIZE = 1 << 34  # 16 GiB: a byte string a client may send in one value
DEFAULT_MAX_UNREAD_BYTES = 256 << 20  # of events a session's client has not read
DEFAULT_MAX_UNREAD_TOTAL = 1 << 30  # of events unread, all sessions together
DEFAULT_MAX_BLOB_BYTES = 1 << 30  # of blobs a stream holds, not used by a message yet
DEFAULT_MAX_BLOB_TOTAL = 2 << 30  # of such blobs, all streams together
DEFAULT_MAX_OBJECTS = 64  # live remote objects, each a process (~25 MB)


def default_max_held_bytes() -> int:
    """A quarter of this machine's memory, and at most half of ``/dev/shm`` (where held
    values live when shared memory is on): the server's cap on the results it holds."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):  # not a POSIX system
        memory = 16 << 30
    cap = memory // 4
    try:
        shm = os.statvfs("/dev/shm")
    except OSError:  # no /dev/shm: held values are in the server's memory
        return cap
    return min(cap, shm.f_blocks * shm.f_frsize // 2) or cap


class ServerConfigError(SperseError):
    """The server cannot start with this configuration (the message says how to fix it)."""


def _frozen_resources(resources: Mapping[str, float]) -> Mapping[str, float]:
    return MappingProxyType({str(k): float(v) for k, v in resources.items()})


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """How a server listens, authenticates and runs work.

    ``name`` empty: ``HOSTNAME-PORT`` once the port is known. ``workers`` None: one per core.
    ``token`` empty: the server makes a random one (``SperseServer.token``); there is no
    server without a token. ``inline_limit`` applies to tasks that give none (0). ``shm``
    False: every byte goes through gRPC and the worker pipes, even on one host.
    """

    host: str = "127.0.0.1"
    port: int = 0
    name: str = ""
    tags: frozenset[str] = frozenset()
    resources: Mapping[str, float] = field(default_factory=dict)
    workers: int | None = None
    token: str = field(default="", repr=False)  # a secret: never in logs or reprs
    tls_cert: str | None = None
    tls_key: str | None = None
    insecure: bool = False
    session_grace: float = 30.0
    inline_limit: int = DEFAULT_INLINE_LIMIT
    max_value_size: int = DEFAULT_MAX_VALUE_SIZE
    # Bytes of results held (kept on the server, >= the inline limit) by every session
    # together: a result that would pass it fails its task (sperse._server.held).
    max_held_bytes: int = field(default_factory=default_max_held_bytes)
    # Bytes of events a session's client has not been sent yet (it does not read): past
    # it, the session's tasks that wait for room do not start (sperse._server.outgoing).
    max_unread_bytes: int = DEFAULT_MAX_UNREAD_BYTES
    max_unread_total: int = DEFAULT_MAX_UNREAD_TOTAL
    # Bytes of blobs a stream holds that no message has used yet (unfinished, or not yet
    # named): past it, the stream ends with a protocol error (sperse._server.blobs).
    max_blob_bytes: int = DEFAULT_MAX_BLOB_BYTES
    max_blob_total: int = DEFAULT_MAX_BLOB_TOTAL
    # Live remote objects (a process each) on the server, and created by one session
    # (0: half of max_objects); a create past either fails (sperse._server.remote).
    max_objects: int = DEFAULT_MAX_OBJECTS
    max_session_objects: int = 0
    # One-worker pools kept started for the next remote objects (sperse._server.spares):
    # they count toward max_objects; 0 (the default): every object's worker starts when it
    # is created (docs/decisions.md, "Spare object workers", says why they are off).
    spare_object_workers: int = 0
    log_level: str = "INFO"
    hello_timeout: float = 10.0  # a peer that sends no Hello within this is turned away
    shm: bool = True  # big buffers through shared memory files, with clients on this host
    join: str = ""  # HOST:PORT of a coordinator to register with (sperse._server.join)
    advertise: str = ""  # HOST:PORT to register; empty: the bound host (or host name), port
    join_tls_ca: str | None = None  # PEM of the CA of a coordinator that uses TLS
    # Where pip environments of tasks (env={"pip": [...]}) are installed, one folder each;
    # empty: $XDG_CACHE_HOME/sperse/envs (~/.cache/sperse/envs). See sperse._server.envs.
    env_dir: str = ""
    env_timeout: float = 600.0  # an installation that takes longer is stopped

    def __post_init__(self) -> None:
        object.__setattr__(self, "tags", frozenset(self.tags))
        object.__setattr__(self, "resources", _frozen_resources(self.resources))

    @property
    def env_root(self) -> str:
        if self.env_dir:
            return self.env_dir
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
        return os.path.join(cache, "sperse", "envs")

    @property
    def session_objects_limit(self) -> int:
        """The live remote objects one session may create."""
        return self.max_session_objects or max(1, self.max_objects // 2)

    @property
    def worker_count(self) -> int:
        return self.workers or os.cpu_count() or 1

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert or self.tls_key)


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def default_name(port: int) -> str:
    host = socket.gethostname().split(".")[0]
    return f"{host}-{port}" if host else f"server-{port}"


def check_config(config: ServerConfig) -> None:
    """Raise ``ServerConfigError`` for a configuration the server must not run with."""
    if not is_loopback(config.host) and not config.tls and not config.insecure:
        raise ServerConfigError(
            f"refusing to listen on {config.host!r} without TLS: anyone who can reach the port "
            "could watch the token and the data go by. Give --tls-cert and --tls-key, or listen "
            "on 127.0.0.1 and reach it through a tunnel (ssh -L), or pass --insecure if the "
            "network is private and trusted."
        )
    if bool(config.tls_cert) != bool(config.tls_key):
        given, missing = (
            ("--tls-cert", "--tls-key") if config.tls_cert else ("--tls-key", "--tls-cert")
        )
        raise ServerConfigError(f"{given} was given without {missing}: TLS needs both files")
    for path in (config.tls_cert, config.tls_key):
        if path and not os.path.isfile(path):
            raise ServerConfigError(f"TLS file {path!r} does not exist or is not a file")
    if not 0 <= config.port <= 65535:
        raise ServerConfigError(f"port {config.port} is not between 0 and 65535")
    if config.workers is not None and config.workers < 1:
        raise ServerConfigError(f"--workers must be at least 1, not {config.workers}")
    if config.session_grace < 0:
        raise ServerConfigError(f"--session-grace must be >= 0, not {config.session_grace}")
    if config.inline_limit < 0 or config.max_value_size < 1:
        raise ServerConfigError("the inline limit and the max value size must be positive")
    for option, size in (
        ("--max-held-bytes", config.max_held_bytes),
        ("--max-unread-bytes", config.max_unread_bytes),
        ("--max-unread-total", config.max_unread_total),
        ("--max-blob-bytes", config.max_blob_bytes),
        ("--max-blob-total", config.max_blob_total),
        ("--max-objects", config.max_objects),
    ):
        if size < 1:
            raise ServerConfigError(f"{option} must be positive, not {size}")
    if config.spare_object_workers < 0:
        raise ServerConfigError(
            f"--spare-object-workers must be >= 0 (0: none), not {config.spare_object_workers}"
        )
    if config.max_session_objects < 0:
        raise ServerConfigError(
            f"--max-session-objects must be positive (or 0: half of --max-objects), not "
            f"{config.max_session_objects}"
        )
    if not isinstance(logging.getLevelName(config.log_level.upper()), int):
        raise ServerConfigError(
            f"unknown log level {config.log_level!r}: use debug, info, warning or error"
        )
    for option, address in (("--join", config.join), ("--advertise", config.advertise)):
        host, sep, port = address.removeprefix("sperse://").rpartition(":")
        if address and not (sep and host and port.isdigit() and 0 < int(port) <= 65535):
            raise ServerConfigError(f"{option} {address!r} is not HOST:PORT")
    if config.join_tls_ca and not os.path.isfile(config.join_tls_ca):
        raise ServerConfigError(f"--join-ca {config.join_tls_ca!r} does not exist or is not a file")
