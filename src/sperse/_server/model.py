"""The values that go in and out of a server's sessions: task requests, the values of a
task's ``Done``, held objects, statistics. Plain data; see :mod:`sperse._server.core` for
what they mean together. A session is sent the task events of :mod:`sperse._core.events`
(``where``: the server's name), whose ``Done.value`` is a task's :data:`Values`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sperse._core import Done
from sperse._core.values import value
from sperse._server.envelope import PickledBytes

__all__ = [
    "ACTOR_RUNNER",
    "GONE_KEPT",
    "OUTPUT_CHUNK",
    "RETAIN_EVENTS",
    "RUNNER",
    "STARTED_HOLD",
    "TEXT_MAX",
    "HeldObject",
    "HeldValue",
    "InlineValue",
    "Listener",
    "ObjectOp",
    "PeerRef",
    "Peers",
    "PullFailed",
    "Pulled",
    "PutInfo",
    "RemoteObjectInfo",
    "ServerStats",
    "TaskRequest",
    "Values",
    "inline_bytes",
]

RUNNER = "sperse._server.runner:run"
ACTOR_RUNNER = "sperse._server.actor_runner:run"
GONE_KEPT = 4096  # destroyed remote objects whose end is remembered, for later calls
RETAIN_EVENTS = 1024  # terminal events kept per session for resubmissions after a resume
OUTPUT_CHUNK = 256 << 10  # characters of one Output event (at most 1 MiB in UTF-8)
TEXT_MAX = 64 << 10  # characters kept of a failure's message and of its traceback
STARTED_HOLD = 0.005  # seconds a Started event waits for its task's end, to share a message


# ---- what goes in ------------------------------------------------------------------------


@value
class PeerRef:
    """An object another server of the cluster holds: ``server`` (its name) at ``address``."""

    object_id: str
    server: str
    address: str


@value
class ObjectOp:
    """What a task does to a remote object (``Task.object``): ``kind`` is "create", "call"
    or "close"; the other fields are the create's."""

    object_id: str
    kind: str
    name: str = ""
    max_concurrency: int = 1
    restart: bool = False
    type_name: str = ""
    methods: tuple[str, ...] = ()


@value
class PutInfo:
    """A ``put`` (``Task.put``): the task's work is a value to hold, of this type and repr."""

    type_name: str
    repr: str


@value
class TaskRequest:
    """One task of a ``Submit``. ``work`` None: its bytes were refused (``refused`` says why).
    ``uploads``: the shared memory files its work names (the task owns them from now on).
    ``peer_refs``: where the refs this server may not hold are (it pulls them from there).
    ``over``: the bound of :mod:`sperse._core.limits` it passes (it fails with that).
    ``put``: set, the work is a value to hold at once (``sperse.put``), not to run."""

    task_id: str
    work: PickledBytes | None
    refs: tuple[str, ...] = ()
    retries: int = 0
    inline_limit: int = 0
    label: str = ""
    refused: str = ""
    uploads: tuple[str, ...] = ()
    peer_refs: tuple[PeerRef, ...] = ()
    object: ObjectOp | None = None
    pip: tuple[str, ...] = ()  # the pip environment it runs in (sperse._server.envs)
    over: str = ""
    put: PutInfo | None = None


# ---- what comes out ----------------------------------------------------------------------


@value
class InlineValue:
    name: str
    value: PickledBytes


@value
class HeldValue:
    name: str
    object_id: str
    type_name: str
    size: int
    repr: str


Values = tuple[InlineValue | HeldValue, ...]
"""What a server's ``Done`` carries: each value the task made (a statement's names, or
``""`` for a call's result), inline or held here."""


def inline_bytes(done: Done) -> int:
    """The bytes of a server's ``Done`` that travel inline (what retaining it costs)."""
    values: Values = done.value
    size = 0
    for v in values:  # (a loop: asked for every task, most often of one value)
        if isinstance(v, InlineValue):
            size += v.value.size
    return size


@dataclass(slots=True, eq=False)
class HeldObject:
    """A value kept in the object store: its pickle, never opened by the server, whose big
    buffers may be shared memory files. ``users``: queued or running tasks that use it."""

    value: PickledBytes
    type_name: str
    repr: str
    users: int = 0
    released: bool = False

    @property
    def size(self) -> int:
        return self.value.size

    @property
    def freed(self) -> bool:
        """Released, and no task uses it: its files go."""
        return self.released and self.users == 0


@value
class ServerStats:
    """A snapshot. ``objects``/``object_bytes``: of one session when asked for one, else all."""

    sessions: int
    attached: int
    objects: int
    object_bytes: int
    objects_total: int
    object_bytes_total: int
    tasks_active: int
    tasks_done: int
    tasks_failed: int
    workers: int
    worker_pids: tuple[int, ...]
    busy: int
    queued: int
    workers_replaced: int
    objects_pulled: int = 0  # from other servers, for tasks here
    bytes_pulled: int = 0
    objects_served: int = 0  # to other servers that pulled them
    bytes_served: int = 0
    replicas: int = 0  # pulled copies that tasks still use
    replica_bytes: int = 0
    remote_objects: int = 0  # alive (or being built), all sessions
    object_worker_pids: tuple[int, ...] = ()  # of the remote objects' workers
    spare_object_pids: tuple[int, ...] = ()  # started for the next objects (sperse._server.spares)
    unread_bytes: int = 0  # of events not sent yet, all sessions (sperse._server.outgoing)
    unread_peak: int = 0  # the most one session has had


@value
class RemoteObjectInfo:
    """A live remote object, as listed (``pid``: of its worker, 0 while it starts)."""

    object_id: str
    name: str
    type_name: str
    methods: tuple[str, ...]
    max_concurrency: int
    restart: bool
    calls: int
    restarts: int
    pid: int


@value
class Pulled:
    """An object pulled from another server: its pickle, buffers as bytes or as shared memory
    files this server now owns."""

    value: PickledBytes
    type_name: str
    repr: str


class PullFailed(Exception):
    """A pull did not bring the object: ``reason`` says why, ``advice`` what to do."""

    def __init__(self, reason: str, advice: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.advice = advice


class Peers(Protocol):
    """The other servers of the cluster, as this server reaches them (the gRPC side is
    :class:`sperse._server.peers.PeerClient`)."""

    async def pull(self, ref: PeerRef, shm_prefix: str) -> Pulled:
        """The object ``ref`` names, or ``PullFailed``. Buffers of at least ``shm.SHM_MIN``
        bytes go to new files named ``shm_prefix`` + random, when it is not empty (none is
        left behind when the pull fails or is cancelled)."""
        ...

    async def close(self) -> None: ...


class Listener(Protocol):
    """The stream attached to a session."""

    def wake(self) -> None:
        """Events are waiting in the session's outbox."""

    def kick(self) -> None:
        """Another stream took the session over: end this one."""
