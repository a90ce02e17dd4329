"""Sperse: interactive, reactive, remote and distributed Python.

The public API. Everything else lives in private modules (``sperse._*``)
whose names may change; ``sperse.errors`` is public too.

Names are imported on first use (PEP 562), so a worker process that only needs
``sperse._backends.runner`` does not pay for the workspace, the graph or the
client: it starts in tens of milliseconds.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sperse.errors import (
    AuthenticationError,
    CellError,
    CycleError,
    NoMatchingServer,
    NotReadyError,
    ProtocolError,
    RemoteError,
    SerializationError,
    ServerLost,
    ServerUnavailable,
    SperseError,
    StatementError,
    TaskCancelled,
    UpstreamError,
    UsageError,
    WorkerDied,
)

if TYPE_CHECKING:
    from sperse._backends.local import LocalBackend
    from sperse._cluster import Cluster, connect, current
    from sperse._mapreduce import MapResult, map, mapreduce, reduce
    from sperse._pending import Pending, RemoteFunction, as_completed, gather, remote, wait
    from sperse._serialize import RemoteValue
    from sperse._workspace import Cell, CellEvent, Workspace
    from sperse.jobs._job import Job, submit_job

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "Cell",
    "CellError",
    "CellEvent",
    "Cluster",
    "CycleError",
    "Job",
    "LocalBackend",
    "MapResult",
    "NoMatchingServer",
    "NotReadyError",
    "Pending",
    "ProtocolError",
    "RemoteError",
    "RemoteFunction",
    "RemoteValue",
    "SerializationError",
    "ServerLost",
    "ServerUnavailable",
    "SperseError",
    "StatementError",
    "TaskCancelled",
    "UpstreamError",
    "UsageError",
    "WorkerDied",
    "Workspace",
    "as_completed",
    "connect",
    "current",
    "gather",
    "map",
    "mapreduce",
    "reduce",
    "remote",
    "submit_job",
    "wait",
]

_LAZY = {
    "LocalBackend": "sperse._backends.local",
    "Cluster": "sperse._cluster",
    "connect": "sperse._cluster",
    "current": "sperse._cluster",
    "MapResult": "sperse._mapreduce",
    "map": "sperse._mapreduce",
    "mapreduce": "sperse._mapreduce",
    "reduce": "sperse._mapreduce",
    "Pending": "sperse._pending",
    "RemoteFunction": "sperse._pending",
    "as_completed": "sperse._pending",
    "gather": "sperse._pending",
    "remote": "sperse._pending",
    "wait": "sperse._pending",
    "RemoteValue": "sperse._serialize",
    "Cell": "sperse._workspace",
    "CellEvent": "sperse._workspace",
    "Workspace": "sperse._workspace",
    "Job": "sperse.jobs._job",
    "submit_job": "sperse.jobs._job",
}


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext sperse``: the reactive workspace and ``remote`` syntax in IPython/Jupyter."""
    from sperse.ipython import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from sperse.ipython import unload_ipython_extension as unload

    unload(ipython)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sperse' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
