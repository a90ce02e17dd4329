"""Nested work: what remote code submits itself goes back to the cluster that runs it.

Two ways a process learns that cluster, both set from below the cluster layer so that the
executors and backends need not know ``Cluster``:

- a worker of a ``sperse server`` gets the server's address and the cluster token in its
  environment (``WORKER_*_ENV``, set by the server for its pool);
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
    "WORKER_TOKEN_ENV",
    "nested_backend",
    "running_nested",
    "stop_nested",
]

# A server gives its workers its address and the cluster token (WorkerPool's env), so that
# remote code can itself submit work and call remote objects, on that server or another.
WORKER_SERVER_ENV = "SPERSE_WORKER_SERVER"
WORKER_TOKEN_ENV = "SPERSE_WORKER_TOKEN"
WORKER_CA_ENV = "SPERSE_WORKER_CA"  # the server's certificate, when it has TLS

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


def nested_backend() -> BackendFactory | None:
    """The factory ``running_nested`` named for the task running here, if any."""
    return _nested.get()
