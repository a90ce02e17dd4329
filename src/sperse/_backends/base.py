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

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from sperse._lang.placement import Placement
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
    "Backend",
    "BackendEvent",
    "CallTask",
    "Done",
    "ErrorInfo",
    "ErrorKind",
    "EventSink",
    "Failed",
    "ObjectCall",
    "ObjectClose",
    "ObjectCreate",
    "ObjectInfo",
    "Output",
    "PickledFunction",
    "ServerInfo",
    "Started",
    "StatementTask",
    "SupportsLogs",
    "TaskSpec",
    "Work",
    "pip_requirements",
]


@dataclass(frozen=True, slots=True)
class StatementTask:
    """A remote statement: source text compiled where it runs, plus its inputs.

    ``first_line`` is the line of the statement in the user's input, so a
    remote traceback points at the line the user typed.
    """

    source: str
    filename: str
    first_line: int
    inputs: Mapping[str, Any]
    defs: tuple[str, ...]
    is_expression: bool


@dataclass(frozen=True, slots=True)
class PickledFunction:
    """A function pickled once and sent with every call; workers cache it by ``key``."""

    key: str
    data: bytes


@dataclass(frozen=True, slots=True)
class CallTask:
    """A call of a function (shipped by value when it was defined at the prompt)."""

    fn: Callable[..., Any] | PickledFunction
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ObjectCreate:
    """Create a remote object: ``cls(*args, **kwargs)``, in a worker process of its own.

    ``object_id`` is chosen by the client (random). ``methods``: the public methods of
    ``cls``, for proxies made elsewhere (from a listing, or unpickled in remote code)."""

    object_id: str
    cls: Callable[..., Any] | PickledFunction
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]
    name: str = ""
    max_concurrency: int = 1
    restart: bool = False
    type_name: str = ""
    methods: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ObjectCall:
    """A call of method ``name`` of a remote object, or (``attribute``) the read of its
    attribute ``name``. Only public names (no leading ``_``) are allowed."""

    object_id: str
    name: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    attribute: bool = False


@dataclass(frozen=True, slots=True)
class ObjectClose:
    """Destroy a remote object now (its pending calls fail with ``ObjectLost``)."""

    object_id: str


Work = StatementTask | CallTask | ObjectCreate | ObjectCall | ObjectClose


@dataclass(frozen=True, slots=True)
class TaskSpec:
    task_id: str
    work: Work
    placement: Placement = field(default_factory=Placement)
    retries: int = 0
    label: str = ""
    pip: tuple[str, ...] = ()  # the pip requirements it runs with (``env={"pip": [...]}``)


def pip_requirements(env: Mapping[str, object] | None) -> tuple[str, ...]:
    """The pip requirements of an ``env=`` option (``{"pip": ["pkg==1.2", ...]}``), checked."""
    if env is None:
        return ()
    if not isinstance(env, Mapping):
        raise TypeError(f'env must be a dict such as {{"pip": ["requests==2.32.3"]}}, not {env!r}')
    unknown = sorted(set(env) - {"pip"})
    if unknown:
        hint = (
            " (your own modules travel with your functions already; send data as arguments)"
            if "files" in unknown
            else ""
        )
        raise ValueError(f"env: unknown key(s) {', '.join(map(repr, unknown))}; only 'pip'{hint}")
    pip = env.get("pip", ())
    if (
        isinstance(pip, str)
        or not isinstance(pip, Iterable)
        or not all(isinstance(r, str) and r.strip() for r in pip)
    ):
        raise TypeError(f'env["pip"] must be a list of requirement strings, not {pip!r}')
    return tuple(sorted({str(r).strip() for r in pip}))


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


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class Started:
    task_id: str
    where: str


@dataclass(frozen=True, slots=True)
class Output:
    task_id: str
    where: str
    stream: Literal["stdout", "stderr"]
    text: str


@dataclass(frozen=True, slots=True)
class Done:
    task_id: str
    where: str
    value: Any


@dataclass(frozen=True, slots=True)
class Failed:
    task_id: str
    where: str
    error: ErrorInfo


BackendEvent = Started | Output | Done | Failed
EventSink = Callable[[BackendEvent], None]


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
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
