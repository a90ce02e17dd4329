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
- A session owns its tasks and its objects; a session never reaches another's.
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
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
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
from sperse._server.logs import log_event

__all__ = [
    "RETAIN_EVENTS",
    "RUNNER",
    "STARTED_HOLD",
    "Done",
    "Failed",
    "HeldObject",
    "HeldValue",
    "InlineValue",
    "Listener",
    "Output",
    "ServerCore",
    "ServerStats",
    "Session",
    "Started",
    "TaskEvent",
    "TaskRequest",
]

RUNNER = "sperse._server.runner:run"
RETAIN_EVENTS = 1024  # terminal events kept per session for resubmissions after a resume
_RETAIN_BYTES = 32 << 20  # ... and at most this many inline bytes of them
OUTPUT_CHUNK = 256 << 10  # characters of one Output event (at most 1 MiB in UTF-8)
TEXT_MAX = 64 << 10  # characters kept of a failure's message and of its traceback
STARTED_HOLD = 0.005  # seconds a Started event waits for its task's end, to share a message


# ---- what goes in ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskRequest:
    """One task of a ``Submit``. ``work`` None: its bytes were refused (``refused`` says why).
    ``uploads``: the shared memory files its work names (the task owns them from now on)."""

    task_id: str
    work: PickledBytes | None
    refs: tuple[str, ...] = ()
    retries: int = 0
    inline_limit: int = 0
    label: str = ""
    refused: str = ""
    uploads: tuple[str, ...] = ()


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
        self.outbox: collections.deque[TaskEvent] = collections.deque()
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
        self._pool_error = ""
        self._pool_started: asyncio.Task[None] | None = None
        self._early: dict[str, bytes] = {}  # pool id -> payload, submitted before the pool
        self._attempt_ids = itertools.count(1)
        self._closing = False
        self.shm_prefix = shm.server_prefix()  # of every shared memory file of this server
        self._unannounced: collections.deque[tuple[float, _Task, str]] = collections.deque()
        self._announce_timer: asyncio.TimerHandle | None = None
        self._to_sweep: set[str] = set()
        self._to_unlink: list[str] = []
        # Set by the stream layer: send now what a batch of pool events has produced.
        self.after_pool_events: Callable[[], None] | None = None
        self.tasks_done = 0
        self.tasks_failed = 0

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
        if self._pool_started is not None:
            await self._pool_started
        if self._pool is not None:
            await asyncio.to_thread(self._pool.close)
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
            if self._early.pop(task.pool_id, None) is None and self._pool is not None:
                self._pool.cancel(task.pool_id)  # its files are swept when it ends
            self._release_task(task)
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
        missing = [ref for ref in refs if ref not in session.objects]
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
        objects = {ref: session.objects[ref] for ref in refs}
        for held in objects.values():
            held.users += 1
        task = _Task(
            session,
            task_id,
            request.label,
            request.inline_limit or self.config.inline_limit,
            request.retries,
            request.retries,
            request.work,
            objects,
            request.uploads,
        )
        session.tasks[task_id] = task
        self._dispatch(task)

    def _dispatch(self, task: _Task) -> None:
        work = task.work
        assert work is not None
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
            if self._early.pop(task.pool_id, None) is not None:
                self._fail_attempt(
                    task.pool_id, "cancelled", "TaskCancelled", "cancelled while queued"
                )
            elif self._pool is not None:
                self._pool.cancel(task.pool_id)  # False: its terminal event is on its way

    def fetch(self, session: Session, object_id: str) -> HeldObject | None:
        return session.objects.get(object_id)

    def release(self, session: Session, object_ids: Iterable[str]) -> None:
        for object_id in object_ids:
            held = session.objects.pop(object_id, None)
            if held is not None:
                session.object_bytes -= held.size
                held.released = True
                if held.freed:
                    self._unlink_soon(held.value.shm_names())

    def stats(self, session: Session | None = None) -> ServerStats:
        sessions = list(self._sessions.values())
        objects_total = sum(len(s.objects) for s in sessions)
        bytes_total = sum(s.object_bytes for s in sessions)
        pool = self._pool.stats() if self._pool is not None else None
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
            queued=(pool.queued if pool is not None else 0) + len(self._early),
            workers_replaced=pool.workers_replaced if pool is not None else 0,
        )

    # ---- events from the pool (on the loop) ----------------------------------------------

    def _on_pool_event(self, event: PoolEvent) -> None:
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
        else:
            self._on_failed(task, event)

    def _after_pool_events(self) -> None:
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
        objects, task.objects = task.objects, {}
        for held in objects.values():
            held.users -= 1
            if held.freed:
                self._unlink_soon(held.value.shm_names())

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
        if session.tasks.get(task.task_id) is task:
            del session.tasks[task.task_id]
        self._record(session, event)

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
