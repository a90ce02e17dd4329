"""The backend seam: what everything above a backend may say to it and hear back.

A backend runs tasks somewhere (worker processes here, a gRPC server, Ray)
and reports what happened as events, from a thread of its own. The callers
(the runtime, and through it the workspace and ``Pending``) never see a
socket, a process or a pickle: only ``TaskSpec`` in, ``BackendEvent`` out.

Every submitted task gets exactly one terminal event, ``Done`` or ``Failed``,
unless it was cancelled by the caller, in which case it may get one
``Failed(kind="cancelled")`` or nothing; callers settle cancelled work
themselves and ignore anything that arrives after.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import field
from typing import Any, Protocol, runtime_checkable

from sperse._core.events import EventSink
from sperse._core.values import value
from sperse._core.work import TaskSpec

__all__ = [
    "Backend",
    "BalancesLoad",
    "CallsBack",
    "LocalOnly",
    "ObjectInfo",
    "ServerInfo",
    "SupportsLogs",
]


@value
class ObjectInfo:
    """A remote object as its server lists it."""

    object_id: str
    server: str
    name: str = ""
    type_name: str = ""
    methods: tuple[str, ...] = ()
    max_concurrency: int = 1
    restart: bool = False
    calls: int = 0
    restarts: int = 0
    pid: int = 0


@value
class ServerInfo:
    name: str
    tags: frozenset[str] = frozenset()
    resources: Mapping[str, float] = field(default_factory=dict)
    workers: int = 0
    busy: int = 0
    address: str = ""


@runtime_checkable
class SupportsLogs(Protocol):
    """A backend whose servers keep what tasks printed (``sperse logs``)."""

    def log_id(self, task_id: str, server: str) -> str | None:
        """The key of the log of task ``task_id`` that ran on ``server``."""

    def logs(self, task: str, timeout: float | None = 10.0) -> Any:
        """What the task of log key ``task`` printed (a ``TaskOutputLog``), or None."""


class Backend(Protocol):
    """Where remote work runs. Events go to the sink given to ``start``."""

    def start(self, sink: EventSink) -> None: ...

    def submit(self, specs: Sequence[TaskSpec]) -> None:
        """Queue tasks. Raises ``SerializationError`` for work that cannot be sent."""
        ...

    def cancel(self, task_id: str) -> None: ...

    def release(self, object_ids: Iterable[str]) -> None:
        """The caller no longer needs these held objects."""
        ...

    def servers(self) -> list[ServerInfo]: ...

    def stats(self) -> dict[str, int]: ...

    def objects(self, name: str = "") -> list[ObjectInfo]:
        """The remote objects the servers hold (only the one called ``name``, if given)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class CallsBack(Protocol):
    """A backend that remote code can call its client back through (``sperse.callback``)."""

    def call_back(
        self,
        session_id: str,
        callback_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        what: str = "a callback",
        timeout: float | None = 30.0,
    ) -> None:
        """Hand ``(args, kwargs)`` to the client of ``session_id``, which runs its callback
        ``callback_id``."""


@runtime_checkable
class LocalOnly(Protocol):
    """A backend whose "servers" are this process or its children (the memory and local
    backends): nothing gains from spreading a flow over them, so flows run in-process."""

    local_only: bool


@runtime_checkable
class BalancesLoad(Protocol):
    """A backend that spreads work over its servers by itself: map/reduce need not pin each
    chunk to a server."""

    balances_load: bool
