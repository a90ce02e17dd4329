"""Sperse: interactive, reactive, remote and distributed Python.

The public API. Everything else lives in private modules (``sperse._*``)
whose names may change; ``sperse.errors`` is public too.

Names are imported on first use (PEP 562), so a worker process that only needs
``sperse._exec.runner`` does not pay for the workspace, the graph or the
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
    FlowFailed,
    NoMatchingServer,
    NotReadyError,
    ObjectLost,
    ProtocolError,
    RemoteError,
    SerializationError,
    ServerLost,
    ServerUnavailable,
    ServiceStopped,
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
    from sperse._backends.memory import MemoryBackend
    from sperse._cluster.callbacks import Callback, callback
    from sperse._cluster.cluster import Cluster
    from sperse._cluster.connect import connect, current
    from sperse._cluster.mapreduce import MapResult, Reduction, Tracked, map, mapreduce, reduce
    from sperse._cluster.objects import ObjectProxy, RemoteClass, get_object, objects
    from sperse._cluster.pending import Pending, as_completed, gather, wait
    from sperse._cluster.remote import RemoteFunction, put, remote, run_on_all
    from sperse._core.clock import MockClock
    from sperse._flow.api import Flow
    from sperse._flow.serving import Service, service, services
    from sperse._serialize import RemoteValue
    from sperse._state import shared, state, worker_cache
    from sperse._workspace import Cell, CellEvent, Workspace
    from sperse.jobs._job import Job, submit_job

from sperse._version import __version__ as __version__

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
    "Flow",
    "FlowFailed",
    "Job",
    "LocalBackend",
    "MapResult",
    "MemoryBackend",
    "MockClock",
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
    "Service",
    "ServiceStopped",
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
    "put",
    "reduce",
    "remote",
    "run_on_all",
    "service",
    "services",
    "shared",
    "state",
    "submit_job",
    "wait",
    "worker_cache",
]

_LAZY = {
    "LocalBackend": "sperse._backends.local",
    "MemoryBackend": "sperse._backends.memory",
    "MockClock": "sperse._core.clock",
    "Flow": "sperse._flow.api",
    "Service": "sperse._flow.serving",
    "service": "sperse._flow.serving",
    "services": "sperse._flow.serving",
    "Callback": "sperse._cluster.callbacks",
    "callback": "sperse._cluster.callbacks",
    "Cluster": "sperse._cluster.cluster",
    "connect": "sperse._cluster.connect",
    "current": "sperse._cluster.connect",
    "MapResult": "sperse._cluster.mapreduce",
    "Reduction": "sperse._cluster.mapreduce",
    "Tracked": "sperse._cluster.mapreduce",
    "map": "sperse._cluster.mapreduce",
    "mapreduce": "sperse._cluster.mapreduce",
    "reduce": "sperse._cluster.mapreduce",
    "ObjectProxy": "sperse._cluster.objects",
    "RemoteClass": "sperse._cluster.objects",
    "get_object": "sperse._cluster.objects",
    "objects": "sperse._cluster.objects",
    "Pending": "sperse._cluster.pending",
    "RemoteFunction": "sperse._cluster.remote",
    "as_completed": "sperse._cluster.pending",
    "gather": "sperse._cluster.pending",
    "put": "sperse._cluster.remote",
    "remote": "sperse._cluster.remote",
    "run_on_all": "sperse._cluster.remote",
    "wait": "sperse._cluster.pending",
    "RemoteValue": "sperse._serialize",
    "shared": "sperse._state",
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
