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
    ClientGone,
    CycleError,
    EnvUnavailable,
    NoMatchingServer,
    NotReadyError,
    ObjectLost,
    ProtocolError,
    RemoteError,
    SerializationError,
    ServerLost,
    ServerUnavailable,
    SperseError,
    StatementError,
    TaskCancelled,
    TaskTimeout,
    UnknownObject,
    UpstreamError,
    UsageError,
    WorkerDied,
)

if TYPE_CHECKING:
    from sperse._backends.local import LocalBackend
    from sperse._callbacks import Callback, callback
    from sperse._cluster import Cluster, connect, current
    from sperse._mapreduce import MapResult, Reduction, Tracked, map, mapreduce, reduce
    from sperse._objects import ObjectProxy, RemoteClass, get_object, objects
    from sperse._pending import (
        Pending,
        RemoteFunction,
        as_completed,
        gather,
        remote,
        run_on_all,
        wait,
    )
    from sperse._serialize import RemoteValue
    from sperse._state import state, worker_cache
    from sperse._workspace import Cell, CellEvent, Workspace
    from sperse.jobs._job import Job, submit_job

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "Callback",
    "Cell",
    "CellError",
    "CellEvent",
    "ClientGone",
    "Cluster",
    "CycleError",
    "EnvUnavailable",
    "Job",
    "LocalBackend",
    "MapResult",
    "NoMatchingServer",
    "NotReadyError",
    "ObjectLost",
    "ObjectProxy",
    "Pending",
    "ProtocolError",
    "Reduction",
    "RemoteClass",
    "RemoteError",
    "RemoteFunction",
    "RemoteValue",
    "SerializationError",
    "ServerLost",
    "ServerUnavailable",
    "SperseError",
    "StatementError",
    "TaskCancelled",
    "TaskTimeout",
    "Tracked",
    "UnknownObject",
    "UpstreamError",
    "UsageError",
    "WorkerDied",
    "Workspace",
    "as_completed",
    "callback",
    "connect",
    "current",
    "gather",
    "get_object",
    "map",
    "mapreduce",
    "objects",
    "reduce",
    "remote",
    "run_on_all",
    "state",
    "submit_job",
    "wait",
    "worker_cache",
]

_LAZY = {
    "LocalBackend": "sperse._backends.local",
    "Callback": "sperse._callbacks",
    "callback": "sperse._callbacks",
    "Cluster": "sperse._cluster",
    "connect": "sperse._cluster",
    "current": "sperse._cluster",
    "MapResult": "sperse._mapreduce",
    "Reduction": "sperse._mapreduce",
    "Tracked": "sperse._mapreduce",
    "map": "sperse._mapreduce",
    "mapreduce": "sperse._mapreduce",
    "reduce": "sperse._mapreduce",
    "ObjectProxy": "sperse._objects",
    "RemoteClass": "sperse._objects",
    "get_object": "sperse._objects",
    "objects": "sperse._objects",
    "Pending": "sperse._pending",
    "RemoteFunction": "sperse._pending",
    "as_completed": "sperse._pending",
    "gather": "sperse._pending",
    "remote": "sperse._pending",
    "run_on_all": "sperse._pending",
    "wait": "sperse._pending",
    "RemoteValue": "sperse._serialize",
    "state": "sperse._state",
    "worker_cache": "sperse._state",
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
