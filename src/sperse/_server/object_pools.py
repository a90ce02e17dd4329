"""The one-worker pools of remote objects: the I/O side of :mod:`sperse._server.remote`.

Takes the machine's ``StartObject``, ``SubmitToObject``, ``CancelObjectCall`` and
``StopObject`` actions, and reports what the pools tell (their events, their worker's
death, a pool that cannot start) through the callbacks it is given. What is submitted while
a pool starts waits here, in order (a create first, a rebuild at the front).

While a pool delivers a batch of its events, the calls those events let start (a finished
call makes room for the next of its session) are kept, in order, and each object's handed
to its pool in one call when the batch ends; any other request (a start, a cancel, a stop,
a client's calls) hands them over first. As :mod:`sperse._server.task_pools` does.

A create takes a spare pool when there is one fit for it (:mod:`sperse._server.spares`), and
starts one of its own otherwise; the spares are refilled when an object is gone and when
the server is idle (see there).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from sperse._core import BackendEvent, ErrorInfo
from sperse._pool.events import Reported
from sperse._pool.forking import objects_forkserver_ready, start_objects_forkserver
from sperse._pool.pool import WorkerPool
from sperse._server.actions import CancelObjectCall, StartObject, StopObject, SubmitToObject
from sperse._server.config import ServerConfig
from sperse._server.logs import log_event
from sperse._server.model import ACTOR_RUNNER
from sperse._server.spares import Binding, Environment, SpareWorkers

__all__ = ["OBJECT_STOP_TIMEOUT", "ObjectPools"]

OBJECT_STOP_TIMEOUT = 1.0  # seconds a destroyed object's worker gets to exit


@dataclass(slots=True, eq=False)
class _ObjectPool:
    early: dict[str, bytes] = field(default_factory=dict)  # pool id -> payload, till it starts
    pool: WorkerPool | None = None
    stopped: bool = False


class ObjectPools:
    """``on_event(object_id, event)``, ``on_exit(object_id, pid, how)``, ``on_report(object_id,
    report)`` (calls its client sent the worker directly): what the pools say;
    ``failed(object_id, error)``: a pool cannot start; ``fail(pool_id, error)``: an attempt
    cannot run (cancelled while queued, or its pool is closed)."""

    def __init__(
        self,
        config: ServerConfig,
        server: str,
        loop: asyncio.AbstractEventLoop,
        *,
        on_event: Callable[[str, BackendEvent], None],
        on_exit: Callable[[str, int, str], None],
        on_report: Callable[[str, Reported], None],
        on_delivered: Callable[[], None],
        failed: Callable[[str, str], None],
        fail: Callable[[str, ErrorInfo], None],
        env: Callable[[], Mapping[str, str]],
        token: Callable[[], str],
        idle: Callable[[], bool],
    ) -> None:
        self._server = server
        self._max_objects = config.max_objects
        self._loop = loop
        self._on_event = on_event
        self._on_exit = on_exit
        self._on_report = on_report
        self._on_delivered = on_delivered
        self._failed = failed
        self._fail = fail
        self._env = env
        self._token = token
        self._pools: dict[str, _ObjectPool] = {}  # by object id: of live objects
        self.tasks: set[asyncio.Task[None]] = set()  # pools starting, or stopping
        self._in_batch = False  # a pool is delivering its events
        self._deferred: list[tuple[SubmitToObject, Callable[[], str]]] = []
        self.spares = SpareWorkers(
            config.spare_object_workers,
            loop,
            make=self._new_pool,
            environment=lambda: Environment.now(self._env(), self._token()),
            idle=idle,
            room=lambda: config.max_objects - len(self._pools),
            close_pool=self._close_pool,
            own=self._own,
        )

    def start_spares(self) -> None:
        """Start the forkserver that forks the objects' workers, and the spare pools (in the
        background): once the server's task workers are."""
        if self._max_objects > 0:
            self._own(self._loop.create_task(self._start_forkserver()))
        self.spares.refill()

    async def _start_forkserver(self) -> None:
        try:
            await asyncio.to_thread(start_objects_forkserver)
        except Exception as exc:  # objects' workers are then forked by the tasks' forkserver
            log_event(logging.WARNING, "forkserver_failed", error=exc)

    async def close(self) -> None:
        """The server stops (its objects are stopped): close the spares, and wait till every
        worker is gone."""
        self.spares.close()
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)

    def _new_pool(
        self, binding: Binding, label: str, environment: Environment, concurrency: int = 1
    ) -> WorkerPool:
        """A one-worker pool for an object (or a spare: ``label`` "spare", concurrency 1
        until it is taken). Blocks: spawning takes milliseconds."""
        return WorkerPool(
            1,
            ACTOR_RUNNER,
            binding.event,
            name=self._pool_name(label),
            loop=self._loop,
            cancel_grace=math.inf,  # a cancel never kills the object's worker
            concurrency=concurrency,
            on_events_delivered=self._batch_delivered,
            on_worker_exit=binding.exit,
            on_report=binding.report,
            env=dict(environment.env),
            token=environment.token,
            # Milliseconds (a flow starts one per operator replica). Until the objects'
            # forkserver has imported what objects and flows need, the tasks' forks it: it
            # imports the objects' runner (tens of ms) rather than wait for the rest.
            start_method="forkserver" if objects_forkserver_ready() else "forkserver-tasks",
        )

    def _pool_name(self, label: str) -> str:
        return f"{self._server}/object/{label}"

    def _close_pool(self, pool: WorkerPool) -> None:
        pool.close(OBJECT_STOP_TIMEOUT)  # on the loop: returns at once, its tasks end now
        # ... and this waits till its worker is gone.
        self._own(self._loop.create_task(asyncio.to_thread(pool.close, OBJECT_STOP_TIMEOUT)))

    def _batch_event(self, object_id: str, event: BackendEvent) -> None:
        self._in_batch = True
        self._on_event(object_id, event)

    def _batch_delivered(self) -> None:
        self._in_batch = False
        self._hand_over()
        self._on_delivered()

    def _hand_over(self) -> None:
        """Give each pool the calls kept while a pool delivered its events: consecutive
        calls of one object in one call."""
        if not self._deferred:
            return
        deferred, self._deferred = self._deferred, []
        run: list[SubmitToObject] = []
        run_gone = deferred[0][1]  # why the run's object is gone
        for action, gone in deferred:
            if run and (action.object_id, action.front) != (run[0].object_id, run[0].front):
                self._submit_now(run, run_gone)
                run = []
            if not run:
                run_gone = gone
            run.append(action)
        self._submit_now(run, run_gone)

    def start(self, action: StartObject) -> None:
        self._hand_over()
        record = self._pools.setdefault(action.object_id, _ObjectPool())
        # The create first, before the calls sent while it waited for a pull.
        record.early = {action.pool_id: action.payload, **record.early}
        pool = self.spares.take(
            action.object_id,
            self._pool_name(action.label),
            action.max_concurrency,
            self._batch_event,
            self._on_exit,
            self._on_report,
        )
        if pool is not None:
            self._started(record, pool)
        else:
            self._own(self._loop.create_task(self._start(action, record)))

    def _own(self, task: asyncio.Task[None]) -> None:
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _start(self, action: StartObject, record: _ObjectPool) -> None:
        """Start the object's worker (in a thread: spawning takes milliseconds), then send
        what waits for it."""
        object_id = action.object_id
        binding = Binding(object_id, self._on_exit, self._batch_event, self._on_report)
        environment = Environment.now(self._env(), self._token())
        try:
            pool = await asyncio.to_thread(
                self._new_pool, binding, action.label, environment, action.max_concurrency
            )
        except Exception as exc:
            self._failed(object_id, str(exc))
            return
        self._started(record, pool)

    def _started(self, record: _ObjectPool, pool: WorkerPool) -> None:
        if record.stopped:  # destroyed meanwhile
            self._close_pool(pool)
            return
        record.pool = pool
        early, record.early = record.early, {}
        for pool_id, payload in early.items():
            pool.submit(pool_id, payload)

    def submit(self, action: SubmitToObject, gone: Callable[[], str]) -> None:
        """``gone``: why the object is gone, asked only if its pool turns out closed."""
        if self._in_batch:
            self._deferred.append((action, gone))  # handed over when the batch ends
            return
        self._hand_over()
        self._submit_one(action, gone)

    def _submit_one(self, action: SubmitToObject, gone: Callable[[], str]) -> None:
        record = self._pools.setdefault(action.object_id, _ObjectPool())
        if record.pool is None:
            if action.front:
                record.early = {action.pool_id: action.payload, **record.early}
            else:
                record.early[action.pool_id] = action.payload
            return
        try:
            record.pool.submit(action.pool_id, action.payload, front=action.front)
        except RuntimeError:  # pragma: no cover - closed only once the object is gone
            self._fail(action.pool_id, ErrorInfo("object_lost", "ObjectLost", gone()))

    def submit_many(self, actions: list[SubmitToObject], gone: Callable[[], str]) -> None:
        """``submit`` each, in order: calls of one object (``front`` alike), to its pool in
        one call when it runs."""
        self._hand_over()
        self._submit_now(actions, gone)

    def _submit_now(self, actions: list[SubmitToObject], gone: Callable[[], str]) -> None:
        record = self._pools.get(actions[0].object_id)
        if record is None or record.pool is None:
            for action in actions:
                self._submit_one(action, gone)
            return
        try:
            tasks = [(a.pool_id, a.payload) for a in actions]
            record.pool.submit_many(tasks, front=actions[0].front)
        except RuntimeError:  # pragma: no cover - closed only once the object is gone
            for action in actions:
                self._fail(action.pool_id, ErrorInfo("object_lost", "ObjectLost", gone()))

    def cancel(self, action: CancelObjectCall) -> None:
        self._hand_over()
        record = self._pools.get(action.object_id)
        if record is None:
            return
        if record.early.pop(action.pool_id, None) is not None:
            self._fail(
                action.pool_id, ErrorInfo("cancelled", "TaskCancelled", "cancelled while queued")
            )
        elif record.pool is not None:
            record.pool.cancel(action.pool_id)  # never kills the object's worker

    def stop(self, action: StopObject) -> None:
        self._hand_over()
        record = self._pools.pop(action.object_id, None)
        if record is None:
            return
        record.stopped = True
        record.early.clear()
        pool, record.pool = record.pool, None
        if pool is not None:
            self._close_pool(pool)
        self.spares.refill()  # there is room for one again

    def pid(self, object_id: str) -> int:
        """Of the object's worker; 0 while it starts."""
        record = self._pools.get(object_id)
        workers = record.pool.stats().workers if record and record.pool is not None else ()
        return workers[0] if workers else 0

    def spare_pids(self) -> tuple[int, ...]:
        return self.spares.pids()

    def worker_pids(self) -> tuple[int, ...]:
        return tuple(
            pid
            for record in self._pools.values()
            if record.pool is not None
            for pid in record.pool.stats().workers
        )
