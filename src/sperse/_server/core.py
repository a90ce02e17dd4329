"""Sessions, tasks and held objects of a server: the state behind the session streams.

Structure: the decisions are a pure state machine, :class:`sperse._server.state.ServerState`
(events in, actions out; no clock, no file, no pool, no task), split by concern into
:mod:`~sperse._server.sessions`, :mod:`~sperse._server.held`, :mod:`~sperse._server.pulls`,
:mod:`~sperse._server.remote` and :mod:`~sperse._server.holdback`. :class:`ServerCore`, here,
is its driver: it feeds it what streams, pools, peers and timers say, and takes its actions
(:mod:`~sperse._server.actions`); :mod:`~sperse._server.object_pools` runs the remote
objects' pools. The invariants below are the machine's, and its tests check them.

This module knows no gRPC and no protobuf: the stream layer (:mod:`sperse._server.stream`)
turns client messages into calls here and the events queued here into server messages.

Threads: everything runs on the server's event loop, the worker pool too (it watches its
workers' pipes on this loop). Events that arrive together go out in one ``Events`` message.

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
  objects excepted: any session that has an object's id may call it, see below).
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
  the create is dispatched, a pool of one worker running :mod:`sperse._server.actor_runner`
  starts for it (``concurrency`` = its ``max_concurrency``); the create runs first there,
  and the calls sent meanwhile queue behind it in order. A "call" task names the object by
  id from any session (the id, 128 random bits, is the capability: a listing shows only the
  named objects and the session's own); its events go to the caller's session, its values
  are kept like a task's. Calls are never retried; a session that ends does not cancel its
  calls of another's object: they run, their results are dropped.
- An object is destroyed by "close" (from its owner, or any session if it is named: else
  ``PermissionError``), by a ``Release`` of its id from its owner session, when that ends,
  when its constructor fails, when its worker dies (unless ``restart``), or when the server
  stops. Then its queued and running calls fail with ``object_lost`` saying why, later
  calls too (the reason is remembered for the last ``GONE_KEPT`` objects), and its pool
  is closed without blocking the loop (the server's ``close`` waits for those workers).
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
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sperse._core import BackendEvent, Done, ErrorInfo, Failed, Output, Started
from sperse._serialize import shm
from sperse._server.actions import (
    Action,
    Cancel,
    CancelObjectCall,
    CancelPull,
    Emit,
    EndSession,
    EndTaskLog,
    Log,
    SetAnnounceTimer,
    SetExpiry,
    StartObject,
    StartPull,
    StopObject,
    Submit,
    SubmitToObject,
    Sweep,
    TaskLogOutput,
    Unlink,
    pool_of,
)
from sperse._server.blobs import BlobTotal
from sperse._server.config import ServerConfig
from sperse._server.envelope import PickledBytes
from sperse._server.files import Files, read_inlines, unpack
from sperse._server.logs import log_event
from sperse._server.model import (
    ACTOR_RUNNER,
    GONE_KEPT,
    RETAIN_EVENTS,
    RUNNER,
    STARTED_HOLD,
    HeldObject,
    HeldValue,
    InlineValue,
    Listener,
    ObjectOp,
    PeerRef,
    Peers,
    Pulled,
    PullFailed,
    PutInfo,
    RemoteObjectInfo,
    ServerStats,
    TaskRequest,
    Values,
)
from sperse._server.object_pools import ObjectPools
from sperse._server.outgoing import Session, UnreadTotal
from sperse._server.pull_runner import PullRunner
from sperse._server.remote import REBUILD
from sperse._server.state import SESSION_END, ServerState
from sperse._server.task_feed import TaskFeed
from sperse._server.task_logs import TaskLogs
from sperse._server.task_pools import TaskPools

__all__ = [
    "ACTOR_RUNNER",
    "GONE_KEPT",
    "RETAIN_EVENTS",
    "RUNNER",
    "STARTED_HOLD",
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
    "ServerCore",
    "ServerStats",
    "Session",
    "TaskRequest",
    "Values",
]


class ServerCore:
    """The driver of one server's :class:`~sperse._server.state.ServerState`: feeds it what
    the streams, the pools, the peers and the timers say, and takes the actions it returns.
    Call from the event loop only. ``clock``: the machine's (the loop's monotonic one)."""

    def __init__(
        self,
        config: ServerConfig,
        name: str,
        loop: asyncio.AbstractEventLoop,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.name = name
        self._loop = loop
        self._clock = clock
        self.shm_prefix = shm.server_prefix()  # of every shared memory file of this server
        self.state = ServerState(config, name, self.shm_prefix, lambda: secrets.token_hex(16))
        self._sessions: dict[str, Session] = {}
        self._unread = UnreadTotal(config.max_unread_total, config.max_unread_bytes)
        self.blob_total = BlobTotal(config.max_blob_total)  # the streams' (stream_in)
        self.task_logs = TaskLogs()  # what tasks printed, for a while after (sperse logs)
        self._pools = TaskPools(
            config,
            name,
            loop,
            on_event=self._on_pool_event,
            on_delivered=self._after_pool_events,
            fail=self._fail_attempt,
            env=lambda: self.worker_env,
            token=lambda: self.worker_token,
        )
        self._objects = ObjectPools(
            config,
            name,
            loop,
            on_event=self._on_object_event,
            on_report=lambda oid, r: self._perform(self.state.objects.calls_reported(oid, r)),
            on_exit=self._on_object_worker_exit,
            on_delivered=self._after_pool_events,
            failed=self._object_pool_failed,
            fail=self._fail_attempt,
            env=lambda: self.worker_env,
            token=lambda: self.worker_token,
            idle=lambda: not self.state.tasks.attempts,
        )
        self._announce_timer: asyncio.TimerHandle | None = None
        self._files = Files(loop)
        self.after_pool_events: Callable[[], None] | None = None  # the streams': flush now
        self.in_pool_batch = False  # events of the pool are being delivered
        # For every worker (set once the server listens): how remote code reaches it, its token.
        self.worker_env: dict[str, str] = {}
        self.worker_token = ""
        self._peers: Peers | None = None
        self._pulls = PullRunner(loop, clock, self.state, self._perform)
        self._doers = self._action_doers()
        self.objects_served = 0  # counted by the stream layer, which serves them
        self.bytes_served = 0
        # Set by the joiner while the coordinator shows tasks (sperse._server.task_feed).
        self.task_feed: TaskFeed | None = None

    @property
    def peers(self) -> Peers | None:
        """Set by the stream layer: how objects held by other servers are pulled."""
        return self._peers

    @peers.setter
    def peers(self, peers: Peers | None) -> None:
        self._peers = peers
        self.state.can_pull = peers is not None

    @property
    def tasks_done(self) -> int:
        return self.state.tasks.tasks_done

    @property
    def tasks_failed(self) -> int:
        return self.state.tasks.tasks_failed

    # ---- life cycle ------------------------------------------------------------------

    def start(self) -> None:
        """Start the workers in the background: tasks wait (in the pool) until they are ready."""
        if self.config.shm:
            shm.sweep_dead_servers()
        self._pools.start(then=self._objects.start_spares)  # spares once the workers are

    async def close(self) -> None:
        """End every session, stop the workers (and wait for them to exit), sweep the
        shared memory files left."""
        for session in list(self._sessions.values()):
            self.close_session(session, "session_closed", reason="server_stopping")
        # None should be left (their sessions ended, and their objects with them).
        why = f"was destroyed: {SESSION_END['server_stopping']}"
        self._perform(self.state.destroy_objects(why))
        await self._objects.close()  # and the spares: their workers are gone after this
        await self._pulls.close()
        if self._peers is not None:
            await self._peers.close()
        await self._pools.close()
        if self._announce_timer is not None:
            self._announce_timer.cancel()
            self._announce_timer = None
        self._files.close()
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
        state = self.state.open_session(secrets.token_urlsafe(16))
        prefix = f"{self.shm_prefix}s{secrets.token_hex(8)}-"
        session = Session(state, client_name, peer, prefix, self._unread)
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
        self._perform(self.state.attached(session.session_id))
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
        self._perform(self.state.detached(session.session_id, self._clock()))

    def _expire(self, session: Session) -> None:
        session.expiry = None
        self._perform(self.state.expire(session.session_id))

    def close_session(self, session: Session, event: str, *, reason: str) -> None:
        """End ``session``: cancel its tasks (no more events), free its objects."""
        self._perform(self.state.close_session(session.session_id, event, reason))
        if self.config.shm:
            self._files.sweep_standbys_soon()  # its client's, if the client died

    # ---- requests ----------------------------------------------------------------------

    def submit(self, session: Session, requests: Sequence[TaskRequest]) -> None:
        """The tasks of one message: the machine decides on each, then the actions are
        taken in order, the tasks for the server's pool handed to it in one call."""
        if self.task_feed is not None:
            self.task_feed.submitted(session.session_id, session.client_name, requests)
        actions: list[Action] = []
        for request in requests:
            actions += self.state.submit(session.session_id, request)
        run: list[Any] = []  # consecutive submits to one pool, not yet handed over
        run_pool: tuple[str, ...] | None = None
        for action in actions:
            pool = pool_of(action)
            if run and pool != run_pool:
                self._submit_run(run)
                run = []
            if pool is None:
                self._perform((action,))
            else:
                run.append(action)
                run_pool = pool
        if run:
            self._submit_run(run)

    def _submit_run(self, run: list[Any]) -> None:
        if isinstance(run[0], Submit):
            self._pools.submit_many(run)
        else:
            self._objects.submit_many(run, self._why_gone(run[0].object_id))

    def _why_gone(self, object_id: str) -> Callable[[], str]:
        """Why the remote object is gone, asked only if its pool turns out closed."""
        return lambda: self.state.objects.lost("", object_id).error.message

    def taken(self, session: Session) -> None:
        """A stream took events of ``session`` to send: its waiting tasks may start again."""
        if session.under_again():
            self._perform(self.state.tasks.let_go(session.state, session.unread))

    def cancel(self, session: Session, task_ids: Iterable[str]) -> None:
        for task_id in task_ids:
            self._perform(self.state.cancel(session.session_id, task_id))

    def fetch(self, session: Session, object_id: str) -> HeldObject | None:
        return session.state.objects.get(object_id)

    def find(self, object_id: str) -> HeldObject | None:
        """The object of any session (for another server that pulls it)."""
        return self.state.find(object_id)

    def pin(self, held: HeldObject) -> None:
        """Keep ``held``'s files while it is read (a release meanwhile waits for ``unpin``)."""
        self.state.held.use(held)

    def unpin(self, held: HeldObject) -> None:
        self._perform(self.state.held.unpin(held))

    def release(self, session: Session, object_ids: Iterable[str]) -> None:
        """Held values of ``session``, and remote objects it created (destroyed now)."""
        for object_id in object_ids:
            self._perform(self.state.release(session.session_id, object_id))

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

    def stats(self, session: Session | None = None) -> ServerStats:
        state = self.state
        sessions = list(self._sessions.values())
        objects_total = sum(len(s.state.objects) for s in sessions)
        bytes_total = sum(s.state.object_bytes for s in sessions)
        pool = self._pools.stats()
        replicas = state.held.replicas
        return ServerStats(
            sessions=len(sessions),
            attached=sum(1 for s in sessions if s.listener is not None),
            objects=len(session.state.objects) if session is not None else objects_total,
            object_bytes=session.state.object_bytes if session is not None else bytes_total,
            objects_total=objects_total,
            object_bytes_total=bytes_total,
            tasks_active=len(state.tasks.attempts),
            tasks_done=state.tasks.tasks_done,
            tasks_failed=state.tasks.tasks_failed,
            workers=self.config.worker_count,
            worker_pids=pool.workers if pool is not None else (),
            busy=pool.busy if pool is not None else 0,
            queued=(pool.queued if pool is not None else 0)
            + len(self._pools.early)
            + state.pulls.waiting_tasks
            + sum(len(s.state.ready) for s in sessions)
            + sum(len(q) for o in state.objects.alive.values() for q in o.waiting_calls.values()),
            workers_replaced=pool.workers_replaced if pool is not None else 0,
            objects_pulled=state.pulls.objects_pulled,
            bytes_pulled=state.pulls.bytes_pulled,
            objects_served=self.objects_served,
            bytes_served=self.bytes_served,
            replicas=len(replicas),
            replica_bytes=sum(held.size for held in replicas.values()),
            remote_objects=len(state.objects.alive),
            object_worker_pids=self._objects.worker_pids(),
            spare_object_pids=self._objects.spare_pids(),
            unread_bytes=sum(s.unread for s in sessions),
            unread_peak=max((s.unread_peak for s in sessions), default=0),
        )

    def remote_objects(self, name: str = "", of: Session | None = None) -> list[RemoteObjectInfo]:
        """The live remote objects (``name``: that one) session ``of`` sees (None: all)."""
        return self.state.objects.infos(name, self._objects.pid, of.state if of else None)

    # ---- events of the pools (on the loop) -----------------------------------------------

    def _on_pool_event(self, event: BackendEvent) -> None:
        self.in_pool_batch = True  # until _after_pool_events: streams flush then
        tasks = self.state.tasks
        if isinstance(event, Done):
            result = unpack(event.value)
            limit = tasks.inline_limit(event.task_id)
            if limit is not None and not isinstance(result, ErrorInfo):
                result = read_inlines(result, limit)
            actions = tasks.done(event.task_id, result)
        elif isinstance(event, Started):
            actions = tasks.started(event.task_id, event.worker, self._clock())
        elif isinstance(event, Output):
            actions = tasks.output(event.task_id, event.stream, event.text)
        else:
            actions = tasks.failed(event.task_id, event.error)
        if actions:
            self._perform(actions)

    def _after_pool_events(self) -> None:
        self.in_pool_batch = False
        if self._objects.spares.short and not self.state.tasks.attempts:  # idle: spares start
            self._objects.spares.refill()
        if self.after_pool_events is not None:
            self.after_pool_events()

    def _on_object_event(self, object_id: str, event: BackendEvent) -> None:
        if not event.task_id.startswith(REBUILD):
            self._on_pool_event(event)
        elif isinstance(event, Done):
            self._perform(self.state.rebuilt(object_id, event.task_id, unpack(event.value)))
        elif isinstance(event, Failed):  # (a constructor's result writes no file)
            self._perform(self.state.rebuild_failed(object_id, event.task_id, event.error))

    def _on_object_worker_exit(self, object_id: str, pid: int, how: str) -> None:
        self._perform(self.state.object_worker_exited(object_id, pid, how))

    def _object_pool_failed(self, object_id: str, error: str) -> None:
        log_event(logging.ERROR, "object_pool_failed", object=object_id, error=error)
        self._perform(self.state.object_start_failed(object_id, error))

    def _fail_attempt(self, pool_id: str, error: ErrorInfo) -> None:
        self._perform(self.state.tasks.attempt_failed(pool_id, error))

    # ---- actions -------------------------------------------------------------------------

    def _perform(self, actions: Iterable[Action]) -> None:
        """Take the machine's actions, in order (by a table of their types: this runs for
        every event of every task). One that cannot be taken is reported back
        (``ServerState.attempt_failed``) at once, before the next."""
        doers = self._doers
        for action in actions:
            doers[type(action)](action)

    def _action_doers(self) -> dict[type, Callable[[Any], object]]:
        return {
            Emit: self._emit,
            EndSession: self._end_session,
            Log: lambda a: log_event(a.level, a.event, **dict(a.fields)),
            Submit: self._pools.submit,
            Cancel: self._pools.cancel,
            StartObject: self._objects.start,
            SubmitToObject: lambda a: self._objects.submit(a, self._why_gone(a.object_id)),
            CancelObjectCall: self._objects.cancel,
            StopObject: self._objects.stop,
            Unlink: lambda a: self._files.unlink_soon(a.names) if a.soon else shm.unlink(a.names),
            Sweep: lambda a: self._files.sweep_soon(a.prefix),
            StartPull: self._start_pull,
            CancelPull: lambda a: self._pulls.cancel(a.pull_id),
            SetAnnounceTimer: lambda a: self._set_announce_timer(a.at),
            SetExpiry: lambda a: self._set_expiry(a.session_id, a.at),
            TaskLogOutput: lambda a: self.task_logs.add(a.key, a.stream, a.text),
            EndTaskLog: lambda a: self.task_logs.ended(a.key),
        }

    def _emit(self, action: Emit) -> None:
        session = self._sessions.get(action.session_id)
        if session is not None:  # else it has ended: nothing more is sent
            if session.emit(action.event):  # its client does not read: its tasks wait
                self._perform(self.state.tasks.hold(session.state, session.unread))
            if self.task_feed is not None:
                self.task_feed.event(action.session_id, action.event)

    def _start_pull(self, action: StartPull) -> None:
        assert self._peers is not None  # the machine starts none without
        self._pulls.start(action, self._peers)

    def _end_session(self, action: EndSession) -> None:
        ended = self._sessions.pop(action.session_id, None)
        if ended is not None:
            ended.clear()
            if self.task_feed is not None:
                self.task_feed.session_ended(action.session_id)

    def _set_announce_timer(self, at: float | None) -> None:
        if self._announce_timer is not None:
            self._announce_timer.cancel()
            self._announce_timer = None
        if at is not None:
            delay = max(0.0, at - self._clock())
            self._announce_timer = self._loop.call_later(delay, self._announce)

    def _announce(self) -> None:
        self._announce_timer = None
        self._perform(self.state.tasks.announce(self._clock()))

    def _set_expiry(self, session_id: str, at: float | None) -> None:
        session = self._sessions.get(session_id)
        if session is None:
            return
        if session.expiry is not None:
            session.expiry.cancel()
            session.expiry = None
        if at is not None:
            delay = max(0.0, at - self._clock())
            session.expiry = self._loop.call_later(delay, self._expire, session)
