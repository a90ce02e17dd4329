"""Nested work: what remote code submits itself goes back to the cluster that runs it.

Two ways a process learns that cluster, both set from below the cluster layer so that the
executors and backends need not know ``Cluster``:

- a worker of a ``sperse server`` gets the server's address in its environment
  (``WORKER_*_ENV``, set by the server for its pool) and the cluster token from its pool at
  start-up, kept in this process only (``worker_token``): never in the environment, where
  every process a task starts would inherit it and ``/proc`` would show it;
- a backend whose workers run a task in-process (Ray) names, while the task runs, a
  factory of the backend nested work goes to (``running_nested``).

``sperse._cluster.connect.current`` reads both.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable

from sperse._core.backend import Backend

__all__ = [
    "WORKER_CA_ENV",
    "WORKER_SERVER_ENV",
    "nested_backend",
    "running_nested",
    "set_worker_token",
    "stop_nested",
    "worker_token",
]

# A server gives its workers its address (WorkerPool's env) and the cluster token
# (WorkerPool's token), so that remote code can itself submit work and call remote objects,
# on that server or another.
WORKER_SERVER_ENV = "SPERSE_WORKER_SERVER"
WORKER_CA_ENV = "SPERSE_WORKER_CA"  # the server's certificate, when it has TLS

_worker_token = ""  # the cluster token, in a worker of a server (set once, at start-up)

BackendFactory = Callable[[], Backend]

_nested: contextvars.ContextVar[BackendFactory | None] = contextvars.ContextVar(
    "sperse_nested_backend", default=None
)


def running_nested(factory: BackendFactory) -> contextvars.Token[BackendFactory | None]:
    """While a task runs here: nested work goes to a backend ``factory`` makes (called
    again only once the cluster around its last backend is closed). Undo with
    ``stop_nested``."""
    return _nested.set(factory)


def stop_nested(token: contextvars.Token[BackendFactory | None]) -> None:
    _nested.reset(token)


def set_worker_token(token: str) -> None:
    """In a worker process, before its runner loads: the token its server gave it."""
    global _worker_token
    _worker_token = token


def worker_token() -> str:
    """The token of the server this process is a worker of ("" anywhere else)."""
    return _worker_token


def nested_backend() -> BackendFactory | None:
    """The factory ``running_nested`` named for the task running here, if any."""
    return _nested.get()
