"""``LocalBackend``: remote work in a pool of local worker processes.

Values are pickled across process boundaries exactly as they would be across a
network, so pending semantics, serialization errors and worker deaths are real
here. Tasks whose worker dies are retried up to their ``retries``; exceptions
raised by user code are not retried (they would fail again).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from sperse._core import (
    BackendEvent,
    Done,
    ErrorInfo,
    EventSink,
    Failed,
    ObjectInfo,
    ServerInfo,
    TaskSpec,
)
from sperse._exec.runner import dumps_work
from sperse._pool.pool import WorkerPool
from sperse._serialize import loads
from sperse._server.config import DEFAULT_MAX_VALUE_SIZE
from sperse._server.store import StateStore, start_state_store
from sperse.errors import EnvUnavailable, SerializationError, SperseError

__all__ = ["LocalBackend"]

RUNNER = "sperse._exec.runner:run"


@dataclass(slots=True)
class _Task:
    spec: TaskSpec
    payload: bytes
    attempts_left: int


class LocalBackend:
    """Runs tasks on ``workers`` local processes (default: one per core).

    It is one server named ``name``, with ``tags`` and ``resources`` for tasks'
    constraints to match (useful to try placements on one machine).
    """

    local_only = True  # flows run in-process (sperse._core.LocalOnly)

    def __init__(
        self,
        workers: int | None = None,
        *,
        name: str = "local",
        tags: Iterable[str] = (),
        resources: Mapping[str, float] | None = None,
    ) -> None:
        self.name = name
        self.tags = frozenset(tags)
        self.resources = dict(resources or {})
        self._size = workers or os.cpu_count() or 1
        self._pool: WorkerPool | None = None
        self._sink: EventSink | None = None
        self._tasks: dict[str, _Task] = {}
        self._lock = threading.Lock()
        self._state: StateStore | None = None  # sperse.state() of its tasks

    def start(self, sink: EventSink) -> None:
        if self._pool is not None:
            raise SperseError("this LocalBackend is already started")
        self._sink = sink
        # Before the pool: its workers inherit the store's address (see _server.store).
        self._state = start_state_store(DEFAULT_MAX_VALUE_SIZE, self._worker_pids)
        try:
            self._pool = WorkerPool(self._size, RUNNER, self._on_pool_event, name=self.name)
        except BaseException:
            self._stop_state()
            raise

    def submit(self, specs: Sequence[TaskSpec]) -> None:
        no_environments(specs, "LocalBackend")
        pool = self._require_pool()
        prepared = [
            _Task(spec, dumps_work(spec.work, spec.label or "the task"), spec.retries)
            for spec in specs
        ]
        with self._lock:
            for task in prepared:
                self._tasks[task.spec.task_id] = task
        for task in prepared:
            pool.submit(task.spec.task_id, task.payload)

    def cancel(self, task_id: str) -> None:
        if self._pool is not None:
            self._pool.cancel(task_id)

    def servers(self) -> list[ServerInfo]:
        busy = self._pool.stats().busy if self._pool is not None else 0
        return [
            ServerInfo(
                self.name,
                self.tags,
                self.resources,
                workers=self._size,
                busy=busy,
                address="local processes",
            )
        ]

    def release(self, object_ids: Iterable[str]) -> None:
        """Nothing to do: every result comes back whole."""

    def stats(self) -> dict[str, int]:
        s = self._require_pool().stats()
        return {
            "workers": len(s.workers),
            "busy": s.busy,
            "tasks_done": s.tasks_done,
            "tasks_failed": s.tasks_failed,
            "workers_replaced": s.workers_replaced,
            **_state_stats(self._state),
        }

    def objects(self, name: str = "") -> list[ObjectInfo]:
        """None: remote objects need a server (this is an in-process pool for unit tests)."""
        return []

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        self._stop_state()

    def _worker_pids(self) -> tuple[int, ...]:
        return self._pool.stats().workers if self._pool is not None else ()  # thread-safe

    def _stop_state(self) -> None:
        store, self._state = self._state, None
        if store is not None:
            store.stop()

    def _require_pool(self) -> WorkerPool:
        if self._pool is None:
            raise SperseError("LocalBackend.start() was not called")
        return self._pool

    def _on_pool_event(self, event: BackendEvent) -> None:
        """The pool's events are this backend's (the pool has its name), but for the end:
        the result bytes are unpickled, a task whose worker died may be run again."""
        sink = self._sink
        assert sink is not None
        match event:
            case Done(task_id=task_id, where=where, value=result):
                with self._lock:
                    self._tasks.pop(task_id, None)
                try:
                    ok, value = loads(result, what="the result")
                except SerializationError as exc:
                    sink(
                        Failed(
                            task_id,
                            where,
                            ErrorInfo("serialization", "SerializationError", str(exc)),
                        )
                    )
                    return
                sink(Done(task_id, where, value) if ok else Failed(task_id, where, value))
            case Failed(task_id=task_id, error=error):
                with self._lock:
                    task = self._tasks.get(task_id)
                    retry = (
                        error.kind == "worker_died" and task is not None and task.attempts_left > 0
                    )
                    if retry and task is not None:
                        task.attempts_left -= 1
                    else:
                        self._tasks.pop(task_id, None)
                if retry and task is not None:
                    self._require_pool().submit(task_id, task.payload)
                    return
                sink(event)
            case _:  # Started, Output
                sink(event)


def _state_stats(store: StateStore | None) -> dict[str, int]:
    if store is None:
        return {}
    s = store.stats()
    return {"state_keys": s.keys, "state_bytes": s.bytes, "state_ops": s.ops}


def no_environments(specs: Sequence[TaskSpec], backend: str) -> None:
    """``env=`` needs sperse servers: say so before anything is sent."""
    for spec in specs:
        if spec.pip:
            raise EnvUnavailable(
                f"{spec.label or spec.task_id}: env={{'pip': [...]}} needs sperse servers "
                f"(sperse.connect()), not {backend}: install {', '.join(spec.pip)} where "
                "it runs, or connect to a server"
            )
