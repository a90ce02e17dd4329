"""Sessions, tasks and held objects of a server: the state behind the session streams.

This module knows no gRPC and no protobuf: the stream layer (:mod:`sperse._server.service`)
turns client messages into calls here and the events queued here into server messages.

Threads: everything runs on the server's event loop, the worker pool too (it watches its
workers' pipes on this loop, so a result reaches a session without a thread in between).
Events that arrive together are handled together, and their stream sends them in one
``Events`` message.

Invariants:

- The server never unpickles client data. Task envelopes are built from bytes as received,
  and from the names of shared memory files, which the server never opens (it only
  ``stat``s an upload, for its size).
- Shared memory files (see :mod:`sperse._serialize.shm`) each have one owner that unlinks
  them. A client's upload (``Session.shm_prefix`` + random) is its task's from the moment
  the ``Submit`` is read: unlinked when the task ends (retries need it till then), or at
  once when the task is refused or already known. A result's files (a worker names them
  ``sperse-<server pid>-a<attempt>-...``) are the object store's once the result arrives:
  unlinked when the object is released, or its session ends, but not before the last
  queued or running task that uses the object ends. An attempt that ends without its
  result arriving (its worker died, it was cancelled) has the files of its prefix swept.
  When the server stops, every file ``sperse-<server pid>-...`` is swept; when one starts,
  the files of servers whose process is gone are. Unlinking waits for the loop's next turn,
  so that the events queued meanwhile (a task's ``Done``) are not held up by the freeing
  of a big file's pages.
- ``Started`` is held back for ``STARTED_HOLD`` seconds: a task that ends sooner has its
  ``Started`` and its ``Done`` sent together, in one message; one that prints first has
  its ``Started`` sent before its first ``Output``.
- A session owns its tasks and its objects; a session never reaches another's (remote
  objects excepted: any session may call or close one, see below).
- Every task a session submits gets exactly one terminal event (``Done`` or ``Failed``) in
  that session's outbox, after its ``Started`` and ``Output`` events; except a task the
  client cancelled (at most one ``Failed(kind="cancelled")``) and the tasks of a session that
  has ended (nothing more). A task retried after its worker died gets ``Started`` again.
- Each attempt of a task has its own pool task id, so a late event of an earlier attempt is
  never taken for the current one. Events whose task is no longer known are dropped.
- A session whose stream went away keeps running its tasks and buffering their events for
  ``session_grace`` seconds; a stream that names it in ``Hello`` takes it over (a stream
  still attached is kicked out). After the grace period it ends: tasks cancelled, objects
  freed. ``Goodbye`` ends it at once.
- A task id the session already knows is never run twice: a resubmission of a running task
  is ignored, and one of a recently finished task (the last ``RETAIN_EVENTS``) gets its
  terminal event again. A client may use this after a resume to recover events lost in
  flight.
- A task's refs that its session does not hold but another server of the cluster does
  (``TaskRequest.peer_refs``) are pulled from that server (through ``ServerCore.peers``)
  before the task is dispatched; meanwhile the task waits, others go on. One pull per
  object is in flight, whichever tasks wait for it. A pulled copy is a *replica*: no session
  owns it (the holder's client releases the original there); it is kept in a server-wide
  table while tasks use it, and freed (its files unlinked) when the last of them ends. A
  pull that fails fails its waiting tasks (``ObjectUnavailable``); one no task waits for
  any more is cancelled.

Remote objects (actors; ``Task.object``):

- A "create" task registers the object at once, server-wide, by its id (and its name, unique
  among the live objects of this server), with the session that sent it as its owner. When
  the create is dispatched, a pool of one worker running
  :mod:`sperse._server.actor_runner` starts for it (``concurrency`` = its
  ``max_concurrency``); the create runs first there, and the calls sent meanwhile queue
  behind it in order. A "call" task names the object by id from any session (the id, 128
  random bits, is the capability, as for a held value); its events go to the caller's
  session, its values are kept like a task's. Calls are never retried, and a session that
  ends does not cancel its calls of another's object: they run, their results are dropped.
- An object is destroyed by "close" (any session), by a ``Release`` of its id from its owner
  session, when that session ends, when its constructor fails, when its worker dies (unless
  ``restart``), or when the server stops. Then its queued and running calls fail with
  ``object_lost`` saying why, later calls too (the reason is remembered for the last
  ``GONE_KEPT`` objects), and its pool is closed without blocking the loop (the server's
  ``close`` waits for those workers).
- A ``restart`` object whose worker dies is rebuilt: its create envelope (kept, with the
  uploads and held values it names) goes to the front of its pool's queue, the calls that
  were running fail with ``object_lost`` (its state was reset), the queued ones run on the
  rebuilt object. A worker that dies while the constructor runs is not retried.
- The pool tells of a worker's death (``on_worker_exit``) before the failures of its tasks,
  and before its replacement takes a task, so an idle worker's death is seen too. A cancel
  of a running call interrupts it (concurrency 1) or drops its answer; it never kills the
  object's worker.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import logging
import math
import os
import pickle
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from sperse._pool import PoolEvent, TaskDone, TaskFailed, TaskOutput, TaskStarted, WorkerPool
from sperse._serialize import shm
from sperse._server.config import ServerConfig
from sperse._server.envelope import (
    Envelope,
    PickledBytes,
    ResultFailure,
    ResultValue,
    ShmBuffer,
    pack_envelope,
    unpack_result,
)
from sperse._server.envs import PipEnvs
from sperse._server.logs import log_event
from sperse._server.task_logs import TaskLogs

__all__ = [
    "ACTOR_RUNNER",
    "GONE_KEPT",
    "RETAIN_EVENTS",
    "RUNNER",
    "STARTED_HOLD",
    "Done",
    "Failed",
    "HeldObject",
    "HeldValue",
    "InlineValue",
    "Listener",
    "ObjectOp",
    "Output",
    "PeerRef",
    "Peers",
    "PullFailed",
    "Pulled",
    "RemoteObjectInfo",
    "ServerCore",
    "ServerStats",
    "Session",
    "Started",
    "TaskEvent",
    "TaskRequest",
]

RUNNER = "sperse._server.runner:run"
ACTOR_RUNNER = "sperse._server.actor_runner:run"
GONE_KEPT = 4096  # destroyed remote objects whose end is remembered, for later calls
_OBJECT_STOP_TIMEOUT = 1.0  # seconds a destroyed object's worker gets to exit
_NONE = PickledBytes(pickle.dumps(None, protocol=5))  # the value of a create or a close
_REBUILD = "rebuild/"  # the pool ids of rebuilds start so (those of tasks: session/attempt)
_SESSION_END = {
    "goodbye": "its client ended the session",
    "no_client": "its client went away and did not resume the session in time",
    "server_stopping": "the server is stopping",
}
RETAIN_EVENTS = 1024  # terminal events kept per session for resubmissions after a resume
_RETAIN_BYTES = 32 << 20  # ... and at most this many inline bytes of them
OUTPUT_CHUNK = 256 << 10  # characters of one Output event (at most 1 MiB in UTF-8)
TEXT_MAX = 64 << 10  # characters kept of a failure's message and of its traceback
STARTED_HOLD = 0.005  # seconds a Started event waits for its task's end, to share a message


# ---- what goes in ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerRef:
    """An object another server of the cluster holds: ``server`` (its name) at ``address``."""

    object_id: str
    server: str
    address: str


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class TaskRequest:
    """One task of a ``Submit``. ``work`` None: its bytes were refused (``refused`` says why).
    ``uploads``: the shared memory files its work names (the task owns them from now on).
    ``peer_refs``: where the refs this server may not hold are (it pulls them from there)."""

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


# ---- what comes out ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Started:
    task_id: str
    worker: int


@dataclass(frozen=True, slots=True)
class Output:
    task_id: str
    stream: Literal["stdout", "stderr"]
    text: str


@dataclass(frozen=True, slots=True)
class InlineValue:
    name: str
    value: PickledBytes


@dataclass(frozen=True, slots=True)
class HeldValue:
    name: str
    object_id: str
    type_name: str
    size: int
    repr: str


@dataclass(frozen=True, slots=True)
class Done:
    task_id: str
    values: tuple[InlineValue | HeldValue, ...]

    @property
    def inline_bytes(self) -> int:
        return sum(v.value.size for v in self.values if isinstance(v, InlineValue))


@dataclass(frozen=True, slots=True)
class Failed:
    task_id: str
    kind: str
    type_name: str
    message: str
    traceback: str = ""


TaskEvent = Started | Output | Done | Failed


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


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
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


# ---- state ---------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Task:
    session: Session
    task_id: str
    label: str
    inline_limit: int
    retries_left: int
    retries: int
    work: PickledBytes | None  # kept only while a retry may need it
    objects: dict[str, HeldObject] = field(default_factory=dict)  # used: pinned till the end
    uploads: tuple[str, ...] = ()  # its shared memory files
    pool_id: str = ""
    cancel_requested: bool = False
    worker: int = 0  # of the current attempt, once it started
    announced: bool = True  # its Started was emitted (or there is none to emit)
    waiting: dict[str, PeerRef] = field(default_factory=dict)  # pulls it waits for
    obj: _RemoteObject | None = None  # the remote object it creates or calls
    creates: bool = False
    pip: tuple[str, ...] = ()  # runs in that pip environment's pool


@dataclass(slots=True, eq=False)
class _RemoteObject:
    """A remote object: its pool (one worker), and what its listing and a rebuild need."""

    object_id: str
    owner: Session
    name: str
    type_name: str
    methods: tuple[str, ...]
    max_concurrency: int
    restart: bool
    pool: WorkerPool | None = None  # started when its create is dispatched
    early: dict[str, bytes] = field(default_factory=dict)  # pool id -> payload, till then
    create_payload: bytes = b""  # restart only: the create's envelope, for a rebuild ...
    pinned: dict[str, HeldObject] = field(default_factory=dict)  # ... the values it names
    uploads: tuple[str, ...] = ()  # ... and its uploads
    alive: bool = True
    built: bool = False  # its constructor returned in its current worker
    calls: int = 0  # that ended
    restarts: int = 0
    rebuild_id: str = ""  # pool id of the rebuild in flight
    rebuilt_after: str = ""  # how the worker it was rebuilt after died


@dataclass(slots=True, eq=False)
class _Pull:
    """One pull in flight, and the tasks that wait for it."""

    ref: PeerRef
    waiters: dict[_Task, None] = field(default_factory=dict)  # in arrival order
    task: asyncio.Task[None] | None = None


class Session:
    """One client's tasks, objects and undelivered events; outlives its streams."""

    def __init__(self, session_id: str, client_name: str, peer: str, shm_prefix: str) -> None:
        self.session_id = session_id
        self.client_name = client_name
        self.peer = peer
        self.shm_prefix = shm_prefix  # of the files its client uploads
        self.tasks: dict[str, _Task] = {}  # by the client's task id: not finished yet
        self.finished: collections.OrderedDict[str, Done | Failed] = collections.OrderedDict()
        self.finished_bytes = 0
        self.objects: dict[str, HeldObject] = {}
        self.object_bytes = 0
        self.remote_objects: dict[str, _RemoteObject] = {}  # it created, alive
        self.outbox: collections.deque[TaskEvent] = collections.deque()
        # Calls of its client's callbacks by remote code: (callback id, pickled arguments).
        self.callbacks: collections.deque[tuple[str, PickledBytes]] = collections.deque()
        self.listener: Listener | None = None
        self.expiry: asyncio.TimerHandle | None = None
        self.closed = False

    def emit(self, event: TaskEvent) -> None:
        self.outbox.append(event)
        if self.listener is not None:
            self.listener.wake()

    def retain(self, event: Done | Failed) -> None:
        size = event.inline_bytes if isinstance(event, Done) else 0
        if size > _RETAIN_BYTES:
            return
        self.finished[event.task_id] = event
        self.finished_bytes += size
        while len(self.finished) > RETAIN_EVENTS or self.finished_bytes > _RETAIN_BYTES:
            _, old = self.finished.popitem(last=False)
            if isinstance(old, Done):
                self.finished_bytes -= old.inline_bytes

    def __repr__(self) -> str:
        return f"<Session {self.session_id} tasks={len(self.tasks)} objects={len(self.objects)}>"


def _clip(text: str, limit: int = TEXT_MAX, *, keep_end: bool = False) -> str:
    if len(text) <= limit:
        return text
    cut = len(text) - limit
    if keep_end:
        return f"[{cut} characters cut]\n" + text[-limit:]
    return text[:limit] + f" [{cut} characters cut]"


def _read_inline(value: PickledBytes) -> PickledBytes:
    """``value`` with its shared memory files read into bytes (and unlinked): for a value
    sent inline, whose files nobody would own."""
    names = list(value.shm_names())
    if not names:
        return value
    buffers = []
    try:
        for b in value.buffers:
            if isinstance(b, ShmBuffer):
                fd = shm.open_read(b.name, b.size)
                try:
                    buffers.append(os.pread(fd, b.size, 0))
                finally:
                    os.close(fd)
            else:
                buffers.append(b)
    finally:
        shm.unlink(names)
    return PickledBytes(value.data, tuple(buffers))


class ServerCore:
    """The sessions and the worker pool of one server. Call from the event loop only."""

    def __init__(self, config: ServerConfig, name: str, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.name = name
        self._loop = loop
        self._sessions: dict[str, Session] = {}
        self._attempts: dict[str, _Task] = {}  # by pool task id
        self._pool: WorkerPool | None = None
        self.task_logs = TaskLogs()  # what tasks printed, for a while after (sperse logs)
        self.envs = PipEnvs(
            config.env_root, name, self._env_pool, timeout=config.env_timeout
        )  # the pools of pip environments that tasks ask for
        self._pool_error = ""
        self._pool_started: asyncio.Task[None] | None = None
        self._early: dict[str, bytes] = {}  # pool id -> payload, submitted before the pool
        self._attempt_ids = itertools.count(1)
        self._closing = False
        self._remote: dict[str, _RemoteObject] = {}  # remote objects by id: alive
        self._remote_names: dict[str, _RemoteObject] = {}  # ... by name, those with one
        self._gone: collections.OrderedDict[str, str] = collections.OrderedDict()  # id: why
        self._object_tasks: set[asyncio.Task[None]] = set()  # pools starting, or stopping
        self.shm_prefix = shm.server_prefix()  # of every shared memory file of this server
        self._unannounced: collections.deque[tuple[float, _Task, str]] = collections.deque()
        self._announce_timer: asyncio.TimerHandle | None = None
        self._to_sweep: set[str] = set()
        self._to_unlink: list[str] = []
        # Set by the stream layer: send now what a batch of pool events has produced.
        self.after_pool_events: Callable[[], None] | None = None
        self.in_pool_batch = False  # events of the pool are being delivered
        self.tasks_done = 0
        self.tasks_failed = 0
        # Given to every worker (set by the server once it listens): how remote code reaches
        # this server (nested work, remote objects, callbacks). See sperse._cluster.
        self.worker_env: dict[str, str] = {}
        # Set by the stream layer: how objects held by other servers are pulled.
        self.peers: Peers | None = None
        self._pulls: dict[str, _Pull] = {}  # by object id: in flight
        self._replicas: dict[str, HeldObject] = {}  # by object id: pulled, used by tasks
        self._pull_tasks: set[asyncio.Task[None]] = set()  # running, cancelled ones too
        self._pull_ids = itertools.count(1)
        self.objects_pulled = 0
        self.bytes_pulled = 0
        self.objects_served = 0  # counted by the stream layer, which serves them
        self.bytes_served = 0

    # ---- life cycle ------------------------------------------------------------------

    def start(self) -> None:
        """Start the workers in the background: tasks wait (in the pool) until they are ready."""
        if self.config.shm:
            shm.sweep_dead_servers()
        self._pool_started = self._loop.create_task(self._start_pool())

    async def _start_pool(self) -> None:
        try:
            pool = await asyncio.to_thread(
                WorkerPool,
                self.config.worker_count,
                RUNNER,
                self._on_pool_event,
                name=self.name,
                loop=self._loop,
                on_events_delivered=self._after_pool_events,
                env=self.worker_env,
            )
        except Exception as exc:
            self._pool_error = f"the worker processes of server {self.name!r} cannot start: {exc}"
            log_event(logging.ERROR, "pool_failed", error=exc)
            for pool_id in list(self._early):
                self._fail_attempt(pool_id, "internal", "PoolError", self._pool_error)
            self._early.clear()
            return
        if self._closing:
            await asyncio.to_thread(pool.close)
            return
        self._pool = pool
        early, self._early = self._early, {}
        for pool_id, payload in early.items():
            pool.submit(pool_id, payload)

    async def close(self) -> None:
        """End every session, stop the workers (and wait for them to exit), sweep the
        shared memory files left."""
        self._closing = True
        for session in list(self._sessions.values()):
            self.close_session(session, "session_closed", reason="server_stopping")
        for obj in list(self._remote.values()):  # pragma: no cover - their sessions ended
            self._object_dies(obj, f"was destroyed: {_SESSION_END['server_stopping']}")
        while self._object_tasks:  # their workers are gone after this
            await asyncio.gather(*list(self._object_tasks), return_exceptions=True)
        pulls = list(self._pull_tasks)  # cancelled: no task waits for them any more
        for pull in pulls:
            pull.cancel()
        await asyncio.gather(*pulls, return_exceptions=True)
        if self.peers is not None:
            await self.peers.close()
        if self._pool_started is not None:
            await self._pool_started
        if self._pool is not None:
            await asyncio.to_thread(self._pool.close)
        await self.envs.close()
        if self._announce_timer is not None:
            self._announce_timer.cancel()
            self._announce_timer = None
        self._unlink_pending()
        shm.sweep(self.shm_prefix)

    # ---- sessions --------------------------------------------------------------------

    def open_session(self, resume_id: str, client_name: str, peer: str) -> tuple[Session, bool]:
        """The session named ``resume_id`` (resumed), or a new one when there is none."""
        session = self._sessions.get(resume_id) if resume_id else None
        if session is not None:
            log_event(
                logging.INFO,
                "session_resumed",
                session=session.session_id,
                peer=peer,
                buffered=len(session.outbox),
            )
            session.peer = peer
            return session, True
        session = Session(
            secrets.token_urlsafe(16),
            client_name,
            peer,
            f"{self.shm_prefix}s{secrets.token_hex(8)}-",
        )
        self._sessions[session.session_id] = session
        log_event(
            logging.INFO,
            "session_opened",
            session=session.session_id,
            peer=peer,
            client=client_name or "-",
            asked_to_resume=resume_id or "-",
        )
        return session, False

    def attach(self, session: Session, listener: Listener) -> None:
        if session.expiry is not None:
            session.expiry.cancel()
            session.expiry = None
        previous, session.listener = session.listener, listener
        if previous is not None and previous is not listener:
            previous.kick()
        if session.outbox:
            listener.wake()

    def detach(self, session: Session, listener: Listener) -> None:
        """``listener``'s stream has ended: start the grace period (unless it was replaced)."""
        if session.listener is not listener:
            return
        session.listener = None
        if session.closed:
            return
        grace = self.config.session_grace
        log_event(
            logging.INFO,
            "session_detached",
            session=session.session_id,
            grace=f"{grace:g}s",
            tasks=len(session.tasks),
            objects=len(session.objects),
        )
        session.expiry = self._loop.call_later(grace, self._expire, session)

    def _expire(self, session: Session) -> None:
        session.expiry = None
        if session.listener is None and not session.closed:
            self.close_session(session, "session_expired", reason="no_client")

    def close_session(self, session: Session, event: str, *, reason: str) -> None:
        """End ``session``: cancel its tasks (no more events), free its objects."""
        if session.closed:
            return
        session.closed = True
        if session.expiry is not None:
            session.expiry.cancel()
            session.expiry = None
        self._sessions.pop(session.session_id, None)
        cancelled = len(session.tasks)
        for task in session.tasks.values():
            self._attempts.pop(task.pool_id, None)
            if task.obj is not None:
                pass  # a call runs on (others use the object), its result is dropped
            elif task.pip:
                self.envs.cancel(task.pip, task.pool_id)
            elif self._early.pop(task.pool_id, None) is None and self._pool is not None:
                self._pool.cancel(task.pool_id)  # its files are swept when it ends
            self._release_task(task)
        for obj in list(session.remote_objects.values()):
            self._object_dies(
                obj,
                "was destroyed: the session that created it ended "
                f"({_SESSION_END.get(reason, reason)})",
                event="object_destroyed",
            )
        log_event(
            logging.INFO,
            event,
            session=session.session_id,
            reason=reason,
            tasks_cancelled=cancelled,
            objects_freed=len(session.objects),
            bytes_freed=session.object_bytes,
        )
        for held in session.objects.values():
            held.released = True
            if held.freed:
                self._unlink_soon(held.value.shm_names())
        session.tasks.clear()
        session.objects.clear()
        session.object_bytes = 0
        session.outbox.clear()
        session.finished.clear()

    # ---- requests ----------------------------------------------------------------------

    def submit(self, session: Session, requests: Sequence[TaskRequest]) -> None:
        if session.closed:  # it ended while its stream read on
            shm.unlink(name for request in requests for name in request.uploads)
            return
        for request in requests:
            self._submit_one(session, request)

    def _submit_one(self, session: Session, request: TaskRequest) -> None:
        task_id = request.task_id
        running = session.tasks.get(task_id)
        if running is not None:  # its events will come; new files are not needed
            shm.unlink(n for n in request.uploads if n not in running.uploads)
            return
        known = session.finished.get(task_id)
        if known is not None:
            shm.unlink(request.uploads)
            session.emit(known)
            return
        op = request.object
        if op is not None and op.kind == "close":
            shm.unlink(request.uploads)
            self._close_object(session, task_id, op.object_id)
            return
        what = f"task {request.label!r}" if request.label else f"task {task_id}"
        if request.work is None:
            shm.unlink(request.uploads)
            self._fail_early(
                session, task_id, "serialization", "SerializationError", request.refused
            )
            return
        if not request.work.data:
            shm.unlink(request.uploads)
            self._fail_early(
                session,
                task_id,
                "internal",
                "UnknownTask",
                f"{what} is not known to server {self.name!r} and came without work: it "
                "finished too long ago to be remembered, or its session was lost",
            )
            return
        refs = list(dict.fromkeys(request.refs))
        elsewhere = {p.object_id: p for p in request.peer_refs}
        missing = [ref for ref in refs if ref not in session.objects and ref not in elsewhere]
        if missing:
            shm.unlink(request.uploads)
            self._fail_early(
                session,
                task_id,
                "internal",
                "UnknownObject",
                f"{what} uses object {missing[0]!r}, which server {self.name!r} does not hold "
                "(it was released, or its session expired): compute it again",
            )
            return
        obj: _RemoteObject | None = None
        if op is not None:
            obj = self._object_for(session, task_id, op, what)
            if obj is None:
                shm.unlink(request.uploads)
                return
        objects: dict[str, HeldObject] = {}
        waiting: dict[str, PeerRef] = {}
        for ref in refs:
            held = session.objects.get(ref) or self._replicas.get(ref)
            if held is None:
                waiting[ref] = elsewhere[ref]
            else:
                objects[ref] = held
                held.users += 1
        retries = 0 if obj is not None else request.retries  # a call is never run twice
        task = _Task(
            session,
            task_id,
            request.label,
            request.inline_limit or self.config.inline_limit,
            retries,
            retries,
            request.work,
            objects,
            request.uploads,
            waiting=waiting,
            obj=obj,
            creates=op is not None and op.kind == "create",
            pip=request.pip if obj is None else (),
        )
        session.tasks[task_id] = task
        if not waiting:
            self._dispatch(task)
            return
        for peer_ref in list(waiting.values()):
            pull = self._pulls.get(peer_ref.object_id)
            if pull is None:
                pull = self._pulls[peer_ref.object_id] = _Pull(peer_ref)
                pull.waiters[task] = None
                self._start_pull(pull)
            else:
                pull.waiters[task] = None
            if task.task_id not in session.tasks:
                return  # failed at once (this server reaches no other)

    # ---- objects held by other servers -------------------------------------------------

    def _start_pull(self, pull: _Pull) -> None:
        if self.peers is None:
            self._pull_failed(
                pull,
                PullFailed(
                    "this server has no way to reach other servers",
                    "run the task where the value is (pin it to that server)",
                ),
            )
            return
        prefix = f"{self.shm_prefix}r{next(self._pull_ids)}-" if self.config.shm else ""
        pull.task = self._loop.create_task(self._pull(pull, self.peers, prefix))
        self._pull_tasks.add(pull.task)
        pull.task.add_done_callback(self._pull_tasks.discard)

    async def _pull(self, pull: _Pull, peers: Peers, shm_prefix: str) -> None:
        """Pull the object, then hand it to the tasks that wait (or fail them). Cancelled
        when no task waits any more; ``peers.pull`` then leaves no file behind."""
        ref = pull.ref
        log_event(logging.DEBUG, "pull_started", object=ref.object_id, holder=ref.server)
        started = time.monotonic()
        try:
            pulled = await peers.pull(ref, shm_prefix)
        except PullFailed as exc:
            self._pull_failed(pull, exc)
            return
        except Exception as exc:  # a bug of ours: the tasks fail rather than wait forever
            log_event(logging.ERROR, "pull_error", exc_info=True, object=ref.object_id)
            self._pull_failed(
                pull, PullFailed(f"{type(exc).__name__}: {exc}", "report this as a bug")
            )
            return
        size = pulled.value.size
        self.objects_pulled += 1
        self.bytes_pulled += size
        log_event(
            logging.INFO,
            "object_pulled",
            object=ref.object_id,
            holder=ref.server,
            bytes=size,
            seconds=f"{time.monotonic() - started:.3f}",
            tasks=len(pull.waiters),
        )
        if self._pulls.get(ref.object_id) is pull:
            del self._pulls[ref.object_id]
        # No session owns a replica: it goes when the last task using it ends.
        held = HeldObject(pulled.value, pulled.type_name, pulled.repr, released=True)
        waiters = list(pull.waiters)
        pull.waiters.clear()
        if not waiters:  # pragma: no cover - the pull is cancelled when the last one goes
            self._unlink_soon(held.value.shm_names())
            return
        self._replicas[ref.object_id] = held
        for task in waiters:
            del task.waiting[ref.object_id]
            task.objects[ref.object_id] = held
            held.users += 1
            if not task.waiting:
                self._dispatch(task)

    def _pull_failed(self, pull: _Pull, exc: PullFailed) -> None:
        ref = pull.ref
        if self._pulls.get(ref.object_id) is pull:
            del self._pulls[ref.object_id]
        log_event(
            logging.WARNING,
            "pull_failed",
            object=ref.object_id,
            holder=ref.server,
            address=ref.address,
            reason=exc.reason,
        )
        waiters = list(pull.waiters)
        pull.waiters.clear()
        for task in waiters:
            what = f"task {task.label!r}" if task.label else f"task {task.task_id}"
            message = (
                f"{what} uses object {ref.object_id!r}, held by server {ref.server!r} at "
                f"{ref.address or '(no address)'}, which server {self.name!r} could not pull: "
                f"{exc.reason}; {exc.advice}"
            )
            task.waiting.pop(ref.object_id, None)
            self._finish(task, Failed(task.task_id, "internal", "ObjectUnavailable", message))

    def _stop_waiting(self, task: _Task) -> None:
        """The task has ended before the pulls it waits for: a pull no task waits for any
        more is cancelled."""
        waiting, task.waiting = task.waiting, {}
        for object_id in waiting:
            pull = self._pulls.get(object_id)
            if pull is None or task not in pull.waiters:
                continue
            del pull.waiters[task]
            if not pull.waiters:
                del self._pulls[object_id]
                if pull.task is not None:
                    pull.task.cancel()

    def _dispatch(self, task: _Task) -> None:
        work = task.work
        assert work is not None
        obj = task.obj
        if obj is not None and not obj.alive:  # destroyed while the task waited for a pull
            self._finish(task, self._object_lost(task.task_id, obj.object_id))
            return
        attempt = next(self._attempt_ids)
        pool_id = f"{task.session.session_id}/{attempt}"
        payload = pack_envelope(
            Envelope(
                task_id=task.task_id,
                label=task.label,
                server=self.name,
                inline_limit=task.inline_limit,
                work=work,
                objects={ref: held.value for ref, held in task.objects.items()},
                shm_prefix=f"{self.shm_prefix}a{attempt}-" if self.config.shm else "",
            )
        )
        task.pool_id = pool_id
        if task.retries_left == 0:
            task.work = None
        self._attempts[pool_id] = task
        if obj is not None:
            self._submit_to_object(obj, task, pool_id, payload)
            return
        if task.pip:
            self.envs.submit(task.pip, pool_id, payload, self._env_failed)
            return
        if self._pool is not None:
            try:
                self._pool.submit(pool_id, payload)
            except RuntimeError:  # closed: the server is stopping
                self._fail_attempt(pool_id, "internal", "ServerStopping", "the server is stopping")
        elif self._pool_error:
            self._fail_attempt(pool_id, "internal", "PoolError", self._pool_error)
        else:
            self._early[pool_id] = payload

    def cancel(self, session: Session, task_ids: Iterable[str]) -> None:
        for task_id in task_ids:
            task = session.tasks.get(task_id)
            if task is None or task.cancel_requested:
                continue  # unknown or finished: nothing to do (its terminal event is sent)
            task.cancel_requested = True
            if task.waiting:  # for a pull: not queued in the pool yet
                self._finish(
                    task,
                    Failed(task.task_id, "cancelled", "TaskCancelled", "cancelled while queued"),
                )
            elif task.obj is not None:
                obj = task.obj
                if obj.early.pop(task.pool_id, None) is not None:
                    self._fail_attempt(
                        task.pool_id, "cancelled", "TaskCancelled", "cancelled while queued"
                    )
                elif obj.pool is not None:
                    obj.pool.cancel(task.pool_id)  # never kills the object's worker
            elif task.pip:
                if self.envs.cancel(task.pip, task.pool_id):  # still waiting for pip
                    self._fail_attempt(
                        task.pool_id, "cancelled", "TaskCancelled", "cancelled while queued"
                    )
            elif self._early.pop(task.pool_id, None) is not None:
                self._fail_attempt(
                    task.pool_id, "cancelled", "TaskCancelled", "cancelled while queued"
                )
            elif self._pool is not None:
                self._pool.cancel(task.pool_id)  # False: its terminal event is on its way

    def fetch(self, session: Session, object_id: str) -> HeldObject | None:
        return session.objects.get(object_id)

    def find(self, object_id: str) -> HeldObject | None:
        """The object of any session (for another server that pulls it: the id, 128 random
        bits, is the capability, as it is for a session's own client)."""
        for session in self._sessions.values():
            held = session.objects.get(object_id)
            if held is not None:
                return held
        return None

    def pin(self, held: HeldObject) -> None:
        """Keep ``held``'s files while it is read (a release meanwhile waits for ``unpin``)."""
        held.users += 1

    def unpin(self, held: HeldObject) -> None:
        held.users -= 1
        if held.freed:
            self._unlink_soon(held.value.shm_names())

    def release(self, session: Session, object_ids: Iterable[str]) -> None:
        """Held values of ``session``, and remote objects it created (destroyed now)."""
        for object_id in object_ids:
            held = session.objects.pop(object_id, None)
            if held is not None:
                session.object_bytes -= held.size
                held.released = True
                if held.freed:
                    self._unlink_soon(held.value.shm_names())
            elif object_id in session.remote_objects:
                self._object_dies(
                    session.remote_objects[object_id],
                    "was destroyed: its last proxy was released",
                    event="object_released",
                )

    def stats(self, session: Session | None = None) -> ServerStats:
        sessions = list(self._sessions.values())
        objects_total = sum(len(s.objects) for s in sessions)
        bytes_total = sum(s.object_bytes for s in sessions)
        pool = self._pool.stats() if self._pool is not None else None
        waiting = len({task for pull in self._pulls.values() for task in pull.waiters})
        return ServerStats(
            sessions=len(sessions),
            attached=sum(1 for s in sessions if s.listener is not None),
            objects=len(session.objects) if session is not None else objects_total,
            object_bytes=session.object_bytes if session is not None else bytes_total,
            objects_total=objects_total,
            object_bytes_total=bytes_total,
            tasks_active=len(self._attempts),
            tasks_done=self.tasks_done,
            tasks_failed=self.tasks_failed,
            workers=self.config.worker_count,
            worker_pids=pool.workers if pool is not None else (),
            busy=pool.busy if pool is not None else 0,
            queued=(pool.queued if pool is not None else 0) + len(self._early) + waiting,
            workers_replaced=pool.workers_replaced if pool is not None else 0,
            objects_pulled=self.objects_pulled,
            bytes_pulled=self.bytes_pulled,
            objects_served=self.objects_served,
            bytes_served=self.bytes_served,
            replicas=len(self._replicas),
            replica_bytes=sum(held.size for held in self._replicas.values()),
            remote_objects=len(self._remote),
            object_worker_pids=tuple(
                pid
                for obj in self._remote.values()
                if obj.pool is not None
                for pid in obj.pool.stats().workers
            ),
        )

    # ---- remote objects ------------------------------------------------------------------

    def call_back(self, session_id: str, callback_id: str, args: PickledBytes) -> str:
        """Hand the arguments of a callback call to the session ``session_id`` (its client
        runs the callback). Returns why it could not ("" if handed over or queued for a
        client that is reconnecting)."""
        target = self._sessions.get(session_id)
        if target is None or target.closed:
            return (
                f"the client that made this callback has gone (its session on server "
                f"{self.name!r} ended): nothing can be called back"
            )
        target.callbacks.append((callback_id, args))
        if target.listener is not None:
            target.listener.wake()
        return ""

    def remote_objects(self, name: str = "") -> list[RemoteObjectInfo]:
        """The live remote objects of this server (``name``: only the one of that name)."""
        if name:
            named = self._remote_names.get(name)
            objects = [named] if named is not None else []
        else:
            objects = list(self._remote.values())
        listing = []
        for obj in objects:
            workers = obj.pool.stats().workers if obj.pool is not None else ()
            listing.append(
                RemoteObjectInfo(
                    obj.object_id,
                    obj.name,
                    obj.type_name,
                    obj.methods,
                    obj.max_concurrency,
                    obj.restart,
                    obj.calls,
                    obj.restarts,
                    workers[0] if workers else 0,
                )
            )
        return listing

    def _object_for(
        self, session: Session, task_id: str, op: ObjectOp, what: str
    ) -> _RemoteObject | None:
        """The object a "create" registers or a "call" names; None: the task has failed."""
        object_id = op.object_id
        if op.kind == "call":
            obj = self._remote.get(object_id)
            if obj is None:
                self._record(session, self._object_lost(task_id, object_id))
            return obj
        if op.kind != "create":
            self._fail_early(
                session,
                task_id,
                "internal",
                "UnknownObjectOp",
                f"{what}: {op.kind!r} is not an operation on remote objects this server knows "
                "(create, call, close): install the same sperse version on both sides",
            )
            return None
        if not object_id or object_id in self._remote or object_id in self._gone:
            self._fail_early(
                session,
                task_id,
                "internal",
                "DuplicateObject",
                f"{what}: remote object id {object_id!r} is empty or was used before on server "
                f"{self.name!r}: every remote object needs an id of its own",
            )
            return None
        if op.name and op.name in self._remote_names:
            self._fail_early(
                session,
                task_id,
                "raised",
                "ValueError",
                f"a remote object named {op.name!r} exists on server {self.name!r} already: "
                f"pick another name, or reach that one with sperse.get_object({op.name!r})",
            )
            return None
        obj = _RemoteObject(
            object_id,
            session,
            op.name,
            op.type_name,
            op.methods,
            max(1, op.max_concurrency),
            op.restart,
        )
        self._remote[object_id] = obj
        if obj.name:
            self._remote_names[obj.name] = obj
        session.remote_objects[object_id] = obj
        log_event(
            logging.INFO,
            "object_created",
            session=session.session_id,
            object=object_id,
            name=obj.name or "-",
            type=obj.type_name or "-",
            max_concurrency=obj.max_concurrency,
            restart=obj.restart,
        )
        return obj

    def _submit_to_object(
        self, obj: _RemoteObject, task: _Task, pool_id: str, payload: bytes
    ) -> None:
        if task.creates:
            if obj.restart:  # kept for a rebuild, with what it names
                obj.create_payload = payload
                obj.pinned = dict(task.objects)
                for held in obj.pinned.values():
                    held.users += 1
                obj.uploads, task.uploads = task.uploads, ()
            # First, before calls sent while it waited for a pull; its pool starts now.
            obj.early = {pool_id: payload, **obj.early}
            self._start_object_pool(obj)
            return
        if obj.pool is None:
            obj.early[pool_id] = payload
            return
        try:
            obj.pool.submit(pool_id, payload)
        except RuntimeError:  # pragma: no cover - closed only once the object is gone
            self._fail_attempt(pool_id, "object_lost", "ObjectLost", self._gone_reason(obj))

    def _env_pool(self, label: str, folder: str) -> WorkerPool:
        """The worker pool of a pip environment: its folder first on the workers' path."""
        return WorkerPool(
            self.config.worker_count,
            RUNNER,
            self._on_pool_event,
            name=f"{self.name}/env/{label}",
            loop=self._loop,
            on_events_delivered=self._after_pool_events,
            env={**self.worker_env, "PYTHONPATH": folder},
        )

    def _env_failed(self, pool_id: str, message: str) -> None:
        self._fail_attempt(pool_id, "environment", "EnvUnavailable", message)

    def _start_object_pool(self, obj: _RemoteObject) -> None:
        started = self._loop.create_task(self._object_pool(obj))
        self._object_tasks.add(started)
        started.add_done_callback(self._object_tasks.discard)

    async def _object_pool(self, obj: _RemoteObject) -> None:
        """Start the object's worker (in a thread: spawning takes milliseconds), then send
        what waits for it."""
        label = obj.name or obj.object_id[:12]
        try:
            pool = await asyncio.to_thread(
                WorkerPool,
                1,
                ACTOR_RUNNER,
                functools.partial(self._on_object_event, obj),
                name=f"{self.name}/object/{label}",
                loop=self._loop,
                cancel_grace=math.inf,  # a cancel never kills the object's worker
                concurrency=obj.max_concurrency,
                on_events_delivered=self._after_pool_events,
                on_worker_exit=functools.partial(self._on_object_worker_exit, obj),
                env=self.worker_env,
            )
        except Exception as exc:
            log_event(logging.ERROR, "object_pool_failed", object=obj.object_id, error=exc)
            self._object_dies(obj, f"could not be created: its worker cannot start: {exc}")
            return
        if not obj.alive:  # destroyed meanwhile
            await asyncio.to_thread(pool.close, _OBJECT_STOP_TIMEOUT)
            return
        obj.pool = pool
        early, obj.early = obj.early, {}
        for pool_id, payload in early.items():
            pool.submit(pool_id, payload)

    def _on_object_event(self, obj: _RemoteObject, event: PoolEvent) -> None:
        if not event.task_id.startswith(_REBUILD):
            self._on_pool_event(event)
        elif event.task_id == obj.rebuild_id:
            self._on_rebuild_event(obj, event)

    def _on_object_worker_exit(self, obj: _RemoteObject, pid: int, how: str) -> None:
        """The object's worker has died; the failures of the calls it ran come next."""
        if not obj.alive:
            return
        died = f"its worker (pid {pid}) died ({how})"
        if not obj.built:  # the constructor runs (or was about to): not retried
            when = (
                f"while it was rebuilt after {obj.rebuilt_after}"
                if obj.restarts
                else "before it was built"
            )
            self._object_dies(obj, f"is lost: {died} {when}", event="object_lost")
            return
        if not obj.restart:
            self._object_dies(
                obj,
                f"is lost: {died}. Create it again; created with restart=True, an object is "
                "rebuilt when its worker dies",
                event="object_lost",
            )
            return
        assert obj.pool is not None
        obj.built = False
        obj.restarts += 1
        obj.rebuilt_after = died
        obj.rebuild_id = f"{_REBUILD}{obj.object_id}/{obj.restarts}"
        log_event(
            logging.WARNING,
            "object_rebuilding",
            object=obj.object_id,
            name=obj.name or "-",
            reason=died,
            restarts=obj.restarts,
        )
        obj.pool.submit(obj.rebuild_id, obj.create_payload, front=True)

    def _on_rebuild_event(self, obj: _RemoteObject, event: PoolEvent) -> None:
        if isinstance(event, TaskDone):
            obj.rebuild_id = ""
            try:
                result = unpack_result(event.result)
            except ValueError as exc:
                result = ResultFailure("internal", "RunnerError", str(exc))
            if isinstance(result, ResultFailure):
                self._object_dies(
                    obj,
                    f"is lost: it was rebuilt after {obj.rebuilt_after}, and its constructor "
                    f"raised {result.type_name}: {result.message}",
                    event="object_lost",
                )
            else:
                shm.unlink(name for v in result for name in v.value.shm_names())
                obj.built = True
                log_event(logging.INFO, "object_rebuilt", object=obj.object_id)
        elif isinstance(event, TaskFailed):  # (a constructor's result writes no file)
            obj.rebuild_id = ""
            if event.reason != "worker_died":  # that one: see _on_object_worker_exit
                self._object_dies(
                    obj,
                    f"is lost: rebuilding it after {obj.rebuilt_after} failed: {event.message}",
                    event="object_lost",
                )

    def _object_task_ended(self, obj: _RemoteObject, task: _Task, event: Done | Failed) -> None:
        if not obj.alive:
            return
        if not task.creates:
            obj.calls += 1
        elif isinstance(event, Done):
            obj.built = True
        elif event.kind == "raised":
            self._object_dies(
                obj, f"was never built: its constructor raised {event.type_name}: {event.message}"
            )
        elif event.kind == "cancelled":
            self._object_dies(obj, "was never built: its creation was cancelled")
        else:
            self._object_dies(obj, f"was never built: {event.message}")

    def _close_object(self, session: Session, task_id: str, object_id: str) -> None:
        """A "close" task: destroy the object now (if it is still alive), and succeed."""
        obj = self._remote.get(object_id)
        if obj is not None:
            self._object_dies(
                obj, "was closed (proxy.close()): create a new one", event="object_closed"
            )
        self._record(session, Done(task_id, (InlineValue("", _NONE),)))

    def _object_dies(self, obj: _RemoteObject, why: str, *, event: str = "object_lost") -> None:
        """Destroy ``obj``: its calls fail, ``why`` is remembered, its worker stops."""
        if not obj.alive:
            return
        obj.alive = False
        object_id = obj.object_id
        self._remote.pop(object_id, None)
        if obj.name and self._remote_names.get(obj.name) is obj:
            del self._remote_names[obj.name]
        obj.owner.remote_objects.pop(object_id, None)
        self._gone[object_id] = f"{self._object_label(obj)} {why}"
        while len(self._gone) > GONE_KEPT:
            self._gone.popitem(last=False)
        log_event(
            logging.WARNING if event == "object_lost" else logging.INFO,
            event,
            object=object_id,
            name=obj.name or "-",
            type=obj.type_name or "-",
            calls=obj.calls,
            reason=why,
        )
        for pool_id, task in list(self._attempts.items()):
            if task.obj is obj:
                del self._attempts[pool_id]
                self._announce_now(task)
                self._finish(task, self._object_lost(task.task_id, object_id))
        pinned, obj.pinned = obj.pinned, {}
        for held_id, held in pinned.items():
            self._unuse(held_id, held)
        if obj.uploads:
            self._unlink_soon(obj.uploads)
            obj.uploads = ()
        obj.create_payload = b""
        obj.early.clear()
        pool, obj.pool = obj.pool, None
        if pool is not None:
            pool.close(_OBJECT_STOP_TIMEOUT)  # on the loop: returns at once, its tasks end now
            stopped = self._loop.create_task(
                asyncio.to_thread(pool.close, _OBJECT_STOP_TIMEOUT)  # waits till it is gone
            )
            self._object_tasks.add(stopped)
            stopped.add_done_callback(self._object_tasks.discard)

    def _object_label(self, obj: _RemoteObject) -> str:
        named = f"remote object {obj.name!r}" if obj.name else "remote object"
        kind = obj.type_name or "of unknown type"
        return f"{named} ({kind}, id {obj.object_id}) on server {self.name!r}"

    def _gone_reason(self, obj: _RemoteObject) -> str:
        return self._gone.get(obj.object_id, f"{self._object_label(obj)} is gone")

    def _object_lost(self, task_id: str, object_id: str) -> Failed:
        """The failure of a call of an object that is not alive here."""
        message = self._gone.get(object_id) or (
            f"server {self.name!r} has no remote object {object_id!r}: it never existed here, "
            "or was destroyed long ago (a proxy reaches its object on the server that created "
            "it)"
        )
        return Failed(task_id, "object_lost", "ObjectLost", message)

    # ---- events from the pool (on the loop) ----------------------------------------------

    def _on_pool_event(self, event: PoolEvent) -> None:
        self.in_pool_batch = True  # until _after_pool_events: streams flush then
        task = self._attempts.get(event.task_id)
        if task is None:  # its session has ended
            if isinstance(event, TaskDone):
                self._discard_result(event.result)
            elif isinstance(event, TaskFailed):
                self._sweep_attempt(event.task_id)
            return
        session = task.session
        if isinstance(event, TaskStarted):
            task.worker = event.worker
            task.announced = False
            self._unannounced.append((time.monotonic() + STARTED_HOLD, task, event.task_id))
            if self._announce_timer is None:
                self._announce_timer = self._loop.call_later(STARTED_HOLD, self._announce)
        elif isinstance(event, TaskOutput):
            self._announce_now(task)
            text = event.text
            self.task_logs.add(f"{session.session_id}/{task.task_id}", event.stream, text)
            for start in range(0, len(text), OUTPUT_CHUNK):
                session.emit(Output(task.task_id, event.stream, text[start : start + OUTPUT_CHUNK]))
        elif isinstance(event, TaskDone):
            del self._attempts[event.task_id]
            self._announce_now(task)
            try:
                result = unpack_result(event.result)
            except ValueError as exc:
                result = ResultFailure("internal", "RunnerError", str(exc))
            if isinstance(result, ResultFailure):
                self._finish(
                    task,
                    Failed(
                        task.task_id,
                        result.kind,
                        result.type_name,
                        result.message,
                        result.traceback,
                    ),
                )
            else:
                try:
                    values = self._keep(task, result)
                except OSError as exc:  # a file of an inline value could not be read
                    self._finish(
                        task, Failed(task.task_id, "internal", "SharedMemoryError", str(exc))
                    )
                else:
                    self._finish(task, Done(task.task_id, values))
            self._forget_announced()
        else:
            self._on_failed(task, event)
            self._forget_announced()

    def _forget_announced(self) -> None:
        """Drop the held-back Started events of tasks that ended; no entry left, no timer
        (a short task must not cost a wake-up of the loop 5 ms later)."""
        queue = self._unannounced
        while queue:
            _, task, pool_id = queue[0]
            running = task.pool_id == pool_id and self._attempts.get(pool_id) is task
            if running and not task.announced:
                break
            queue.popleft()
        if not queue and self._announce_timer is not None:
            self._announce_timer.cancel()
            self._announce_timer = None

    def _after_pool_events(self) -> None:
        self.in_pool_batch = False
        if self.after_pool_events is not None:
            self.after_pool_events()

    def _announce_now(self, task: _Task) -> None:
        if not task.announced:
            task.announced = True
            task.session.emit(Started(task.task_id, task.worker))

    def _announce(self) -> None:
        """Emit the Started events held back for ``STARTED_HOLD`` whose tasks still run."""
        self._announce_timer = None
        now = time.monotonic()
        queue = self._unannounced
        while queue:
            due, task, pool_id = queue[0]
            running = task.pool_id == pool_id and self._attempts.get(pool_id) is task
            if running and not task.announced and due > now:
                break  # the first one still to announce: the timer waits for it
            queue.popleft()
            if running:
                self._announce_now(task)
        if queue:
            self._announce_timer = self._loop.call_later(queue[0][0] - now, self._announce)

    def _discard_result(self, payload: bytes) -> None:
        """A result nobody will own (its session has ended): its files go."""
        try:
            result = unpack_result(payload)
        except ValueError:
            return
        if not isinstance(result, ResultFailure):
            shm.unlink(name for v in result for name in v.value.shm_names())

    def _sweep_attempt(self, pool_id: str) -> None:
        """An attempt ended without its result: sweep the files its worker may have written
        (soon, in one pass over the directory for all attempts that end together)."""
        if not self.config.shm:
            return
        if not self._to_sweep:
            self._loop.call_soon(self._sweep)
        self._to_sweep.add(f"{self.shm_prefix}a{pool_id.rpartition('/')[2]}-")

    def _sweep(self) -> None:
        prefixes, self._to_sweep = self._to_sweep, set()
        shm.sweep(*prefixes)

    def _on_failed(self, task: _Task, event: TaskFailed) -> None:
        del self._attempts[event.task_id]
        self._sweep_attempt(event.task_id)
        # The pool names its own task id; the client knows the task by its id or label.
        message = event.message.replace(event.task_id, task.label or task.task_id)
        if task.obj is not None and event.reason == "worker_died":
            obj = task.obj
            if obj.alive and obj.rebuilt_after:  # see _on_object_worker_exit
                message = (
                    f"{self._object_label(obj)} was rebuilt after {obj.rebuilt_after}: its "
                    "state was reset, and this call did not complete"
                )
                failed = Failed(task.task_id, "object_lost", "ObjectLost", message)
            else:
                failed = self._object_lost(task.task_id, obj.object_id)
            self._announce_now(task)
            self._finish(task, failed)
            return
        if event.reason == "worker_died":
            log_event(logging.WARNING, "worker_replaced", task=task.task_id, reason=message)
            if task.retries_left > 0 and not task.cancel_requested:
                task.retries_left -= 1
                log_event(
                    logging.WARNING,
                    "task_retried",
                    session=task.session.session_id,
                    task=task.task_id,
                    retries_left=task.retries_left,
                )
                self._announce_now(task)  # each attempt has a Started of its own
                self._dispatch(task)
                return
            if task.retries:
                message += f" (the last of {task.retries + 1} attempts)"
            failed = Failed(task.task_id, "worker_died", "WorkerDied", message)
        elif event.reason == "cancelled":
            failed = Failed(task.task_id, "cancelled", "TaskCancelled", message)
        else:
            failed = Failed(task.task_id, "internal", "RunnerError", message, event.traceback)
        self._announce_now(task)
        self._finish(task, failed)

    def _keep(self, task: _Task, values: list[ResultValue]) -> tuple[InlineValue | HeldValue, ...]:
        """Values of at least the task's inline limit go to the object store."""
        session = task.session
        out: list[InlineValue | HeldValue] = []
        for v in values:
            size = v.value.size
            if size < task.inline_limit:
                out.append(InlineValue(v.name, _read_inline(v.value)))
                continue
            object_id = secrets.token_hex(16)
            while object_id in session.objects:  # pragma: no cover - 128 random bits
                object_id = secrets.token_hex(16)
            session.objects[object_id] = HeldObject(v.value, v.type_name, v.repr)
            session.object_bytes += size
            out.append(HeldValue(v.name, object_id, v.type_name, size, v.repr))
        return tuple(out)

    def _fail_attempt(self, pool_id: str, kind: str, type_name: str, message: str) -> None:
        task = self._attempts.pop(pool_id, None)
        if task is not None:
            self._finish(task, Failed(task.task_id, kind, type_name, message))

    def _fail_early(
        self, session: Session, task_id: str, kind: str, type_name: str, message: str
    ) -> None:
        """A task refused before it was queued."""
        self._record(session, Failed(task_id, kind, type_name, message))

    def _release_task(self, task: _Task) -> None:
        """The task has ended: its uploads go, the objects it used may go."""
        task.work = None
        if task.uploads:
            self._unlink_soon(task.uploads)
            task.uploads = ()
        if task.waiting:
            self._stop_waiting(task)
        objects, task.objects = task.objects, {}
        for object_id, held in objects.items():
            self._unuse(object_id, held)

    def _unuse(self, object_id: str, held: HeldObject) -> None:
        """A task (or a remote object's rebuild) no longer uses ``held``: it may go."""
        held.users -= 1
        if held.freed:
            self._unlink_soon(held.value.shm_names())
            if self._replicas.get(object_id) is held:
                del self._replicas[object_id]

    def _unlink_soon(self, names: Iterable[str]) -> None:
        """Unlink these files once the events queued now are on their way: freeing the pages
        of a big file takes milliseconds, which the reply should not wait for."""
        if not self._to_unlink:
            self._loop.call_soon(self._unlink_pending)
        self._to_unlink.extend(names)

    def _unlink_pending(self) -> None:
        names, self._to_unlink = self._to_unlink, []
        shm.unlink(names)

    def _finish(self, task: _Task, event: Done | Failed) -> None:
        self._release_task(task)
        session = task.session
        self.task_logs.ended(f"{session.session_id}/{task.task_id}")
        if session.tasks.get(task.task_id) is task:
            del session.tasks[task.task_id]
        self._record(session, event)
        if task.obj is not None:
            self._object_task_ended(task.obj, task, event)

    def _record(self, session: Session, event: Done | Failed) -> None:
        if isinstance(event, Failed):
            event = Failed(
                event.task_id,
                event.kind,
                event.type_name,
                _clip(event.message),
                _clip(event.traceback, keep_end=True),
            )
            self.tasks_failed += 1
            log_event(
                logging.INFO if event.kind in ("raised", "cancelled") else logging.WARNING,
                "task_failed",
                session=session.session_id,
                task=event.task_id,
                kind=event.kind,
                type=event.type_name,
                message=_clip(event.message, 200),
            )
        else:
            self.tasks_done += 1
        session.retain(event)
        session.emit(event)
