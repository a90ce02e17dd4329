"""Sperse: interactive, reactive, remote and distributed Python.

The public API. Everything else lives in private modules (``sperse._*``)
whose names may change; ``sperse.errors`` is public too.
"""

from __future__ import annotations

from sperse._backends.local import LocalBackend
from sperse._cluster import Cluster, connect, current
from sperse._pending import Pending, RemoteFunction, as_completed, gather, remote, wait
from sperse._workspace import Cell, CellEvent, Workspace
from sperse.errors import (
    CellError,
    CycleError,
    NotReadyError,
    RemoteError,
    SerializationError,
    SperseError,
    StatementError,
    TaskCancelled,
    UpstreamError,
    WorkerDied,
)

__version__ = "0.1.0"

__all__ = [
    "Cell",
    "CellError",
    "CellEvent",
    "Cluster",
    "CycleError",
    "LocalBackend",
    "NotReadyError",
    "Pending",
    "RemoteError",
    "RemoteFunction",
    "SerializationError",
    "SperseError",
    "StatementError",
    "TaskCancelled",
    "UpstreamError",
    "WorkerDied",
    "Workspace",
    "as_completed",
    "connect",
    "current",
    "gather",
    "remote",
    "wait",
]
