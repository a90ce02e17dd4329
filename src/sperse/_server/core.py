"""Sessions, tasks and held objects of a server: the state behind the gRPC streams.

This module knows no gRPC and no protobuf: the stream layer (:mod:`sperse._server.service`)
turns client messages into calls here and the events queued here into server messages.

Threads: everything runs on the server's event loop, except :meth:`ServerCore._on_pool_event`,
which the pool's reader thread calls. It only decodes the worker's result (plain data, see
:mod:`sperse._server.envelope`), appends it to a queue and, if none is pending, schedules one
drain of that queue with ``loop.call_soon_threadsafe``: events that arrive together are
handled together, and their stream sends them in one ``Events`` message.

Invariants:

- The server never unpickles client data. Task envelopes are built from bytes as received.
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
import contextlib
import itertools
import logging
import secrets
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from sperse._pool import PoolEvent, TaskDone, TaskFailed, TaskOutput, TaskStarted, WorkerPool
from sperse._server.config import ServerConfig
from sperse._server.envelope import (
    Envelope,
    PickledBytes,
    ResultFailure,
    ResultValue,
    pack_envelope,
    unpack_result,
)
from sperse._server.logs import log_event

__all__ = [
    "RETAIN_EVENTS",
    "RUNNER",
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


# ---- what goes in ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskRequest:
    """One task of a ``Submit``. ``work`` None: its bytes were refused (``refused`` says why)."""

    task_id: str
    work: PickledBytes | None
    refs: tuple[str, ...] = ()
    retries: int = 0
    inline_limit: int = 0
    label: str = ""
    refused: str = ""


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


@dataclass(frozen=True, slots=True)
class HeldObject:
    """A value kept in the object store: its pickle, never opened by the server."""

    value: PickledBytes
    type_name: str
    repr: str

    @property
    def size(self) -> int:
        return self.value.size


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
    payload: bytes = b""  # kept only while a retry may need it
    pool_id: str = ""
    cancel_requested: bool = False


@dataclass(frozen=True, slots=True)
class _Result:
    """A ``TaskDone`` whose result the pool's thread has already decoded."""

    task_id: str
    result: list[ResultValue] | ResultFailure


class Session:
    """One client's tasks, objects and undelivered events; outlives its streams."""

    def __init__(self, session_id: str, client_name: str, peer: str) -> None:
        self.session_id = session_id
        self.client_name = client_name
        self.peer = peer
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
        self._inbox: collections.deque[PoolEvent | _Result] = collections.deque()
        self._inbox_lock = threading.Lock()
        self._inbox_scheduled = False
        self._attempt_ids = itertools.count(1)
        self._closing = False
        self.tasks_done = 0
        self.tasks_failed = 0

    # ---- life cycle ------------------------------------------------------------------

    def start(self) -> None:
        """Start the workers in the background: tasks wait (in the pool) until they are ready."""
        self._pool_started = self._loop.create_task(self._start_pool())

    async def _start_pool(self) -> None:
        try:
            pool = await asyncio.to_thread(
                WorkerPool,
                self.config.worker_count,
                RUNNER,
                self._on_pool_event,
                name=self.name,
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
        """End every session, stop the workers (and wait for them to exit)."""
        self._closing = True
        for session in list(self._sessions.values()):
            self.close_session(session, "session_closed", reason="server_stopping")
        if self._pool_started is not None:
            await self._pool_started
        if self._pool is not None:
            await asyncio.to_thread(self._pool.close)

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
        session = Session(secrets.token_urlsafe(16), client_name, peer)
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
                self._pool.cancel(task.pool_id)
        log_event(
            logging.INFO,
            event,
            session=session.session_id,
            reason=reason,
            tasks_cancelled=cancelled,
            objects_freed=len(session.objects),
            bytes_freed=session.object_bytes,
        )
        session.tasks.clear()
        session.objects.clear()
        session.object_bytes = 0
        session.outbox.clear()
        session.finished.clear()

    # ---- requests ----------------------------------------------------------------------

    def submit(self, session: Session, requests: Sequence[TaskRequest]) -> None:
        for request in requests:
            self._submit_one(session, request)

    def _submit_one(self, session: Session, request: TaskRequest) -> None:
        task_id = request.task_id
        if task_id in session.tasks:
            return  # running: its events will come
        known = session.finished.get(task_id)
        if known is not None:
            session.emit(known)
            return
        what = f"task {request.label!r}" if request.label else f"task {task_id}"
        if request.work is None:
            self._fail_early(
                session, task_id, "serialization", "SerializationError", request.refused
            )
            return
        if not request.work.data:
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
            self._fail_early(
                session,
                task_id,
                "internal",
                "UnknownObject",
                f"{what} uses object {missing[0]!r}, which server {self.name!r} does not hold "
                "(it was released, or its session expired): compute it again",
            )
            return
        limit = request.inline_limit or self.config.inline_limit
        payload = pack_envelope(
            Envelope(
                task_id=task_id,
                label=request.label,
                server=self.name,
                inline_limit=limit,
                work=request.work,
                objects={ref: session.objects[ref].value for ref in refs},
            )
        )
        task = _Task(session, task_id, request.label, limit, request.retries, request.retries)
        session.tasks[task_id] = task
        self._dispatch(task, payload)

    def _dispatch(self, task: _Task, payload: bytes) -> None:
        pool_id = f"{task.session.session_id}/{next(self._attempt_ids)}"
        task.pool_id = pool_id
        task.payload = payload if task.retries_left > 0 else b""
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

    # ---- events from the pool ------------------------------------------------------------

    def _on_pool_event(self, event: PoolEvent) -> None:
        """Called by the pool's reader thread: queue the event for the loop."""
        item: PoolEvent | _Result = event
        if isinstance(event, TaskDone):
            try:
                item = _Result(event.task_id, unpack_result(event.result))
            except ValueError as exc:
                item = _Result(event.task_id, ResultFailure("internal", "RunnerError", str(exc)))
        with self._inbox_lock:
            self._inbox.append(item)
            if self._inbox_scheduled:
                return
            self._inbox_scheduled = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server is gone
            self._loop.call_soon_threadsafe(self._drain_inbox)

    def _drain_inbox(self) -> None:
        with self._inbox_lock:
            items = list(self._inbox)
            self._inbox.clear()
            self._inbox_scheduled = False
        for item in items:
            self._on_event(item)

    def _on_event(self, item: PoolEvent | _Result) -> None:
        task = self._attempts.get(item.task_id)
        if task is None:
            return  # its session has ended
        session = task.session
        if isinstance(item, TaskStarted):
            session.emit(Started(task.task_id, item.worker))
        elif isinstance(item, TaskOutput):
            text = item.text
            for start in range(0, len(text), OUTPUT_CHUNK):
                session.emit(Output(task.task_id, item.stream, text[start : start + OUTPUT_CHUNK]))
        elif isinstance(item, _Result):
            del self._attempts[item.task_id]
            if isinstance(item.result, ResultFailure):
                f = item.result
                self._finish(
                    task, Failed(task.task_id, f.kind, f.type_name, f.message, f.traceback)
                )
            else:
                self._finish(task, Done(task.task_id, self._keep(task, item.result)))
        elif isinstance(item, TaskFailed):
            self._on_failed(task, item)

    def _on_failed(self, task: _Task, event: TaskFailed) -> None:
        del self._attempts[event.task_id]
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
                self._dispatch(task, task.payload)
                return
            if task.retries:
                message += f" (the last of {task.retries + 1} attempts)"
            failed = Failed(task.task_id, "worker_died", "WorkerDied", message)
        elif event.reason == "cancelled":
            failed = Failed(task.task_id, "cancelled", "TaskCancelled", message)
        else:
            failed = Failed(task.task_id, "internal", "RunnerError", message, event.traceback)
        self._finish(task, failed)

    def _keep(self, task: _Task, values: list[ResultValue]) -> tuple[InlineValue | HeldValue, ...]:
        """Values of at least the task's inline limit go to the object store."""
        session = task.session
        out: list[InlineValue | HeldValue] = []
        for v in values:
            size = v.value.size
            if size < task.inline_limit:
                out.append(InlineValue(v.name, v.value))
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

    def _finish(self, task: _Task, event: Done | Failed) -> None:
        task.payload = b""
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
