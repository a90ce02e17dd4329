"""What happens to a task: ``Started``, ``Output``, then exactly one of ``Done`` or
``Failed``, whose ``ErrorInfo`` is an error as data.

The one vocabulary of a task's outcome, from the worker pool to ``Pending``: the pool
reports in it to its owner (``where``: the pool's name; ``Done.value``: the runner's result,
bytes), a server's state machine to its sessions (``where``: the server's name;
``Done.value``: the task's values, inline or held: ``sperse._server.model.Values``), and
every backend to the client (``where``: the server that ran the task, as the client names
it; ``Done.value``: the task's value).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from sperse._core.values import value
from sperse.errors import (
    EnvUnavailable,
    NoMatchingServer,
    ObjectLost,
    RemoteError,
    SerializationError,
    ServerLost,
    SperseError,
    TaskCancelled,
    WorkerDied,
)

__all__ = [
    "BackendEvent",
    "Done",
    "ErrorInfo",
    "ErrorKind",
    "EventSink",
    "Failed",
    "Output",
    "Started",
]


ErrorKind = Literal[
    "raised",
    "worker_died",
    "cancelled",
    "serialization",
    "missing_module",
    "server_lost",
    "no_server",
    "object_lost",
    "environment",
    "internal",
]


@value
class ErrorInfo:
    """An error as data: it crosses processes and networks without pickling exceptions."""

    kind: ErrorKind
    type_name: str
    message: str
    traceback: str = ""

    def to_exception(self, label: str = "", where: str = "") -> SperseError:
        """The local exception a user sees for this error."""
        # The label once: a message made where the task was known may carry it already.
        context = f"{label}: " if label and not self.message.startswith(f"{label}: ") else ""
        if self.kind == "raised":
            return RemoteError.of(
                f"{context}{self.type_name}: {self.message}",
                type_name=self.type_name,
                remote_traceback=self.traceback,
                where=where,
            )
        if self.kind == "worker_died":
            return WorkerDied(f"{context}{self.message}")
        if self.kind == "cancelled":
            return TaskCancelled(f"{context}{self.message}")
        if self.kind in ("serialization", "missing_module"):
            return SerializationError(f"{context}{self.message}")
        if self.kind == "server_lost":
            return ServerLost(f"{context}{self.message}")
        if self.kind == "no_server":
            return NoMatchingServer(f"{context}{self.message}")
        if self.kind == "object_lost":
            return ObjectLost(f"{context}{self.message}")
        if self.kind == "environment":
            return EnvUnavailable(f"{context}{self.message}")
        return SperseError(f"{context}{self.type_name}: {self.message}")


@value
class Started:
    """The task reached a worker; ``worker`` is that process's pid where known, else 0."""

    task_id: str
    where: str
    worker: int = 0


@value
class Output:
    task_id: str
    where: str
    stream: Literal["stdout", "stderr"]
    text: str


@value
class Done:
    task_id: str
    where: str
    value: Any


@value
class Failed:
    task_id: str
    where: str
    error: ErrorInfo


BackendEvent = Started | Output | Done | Failed
EventSink = Callable[[BackendEvent], None]
