"""A backend in this process for the job's flow-control and retry tests: it runs each task
on one of ``workers`` threads, can make a worker "die" under a task, and counts how many
tasks were in flight at most."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import cloudpickle

from sperse._core import (
    CallTask,
    Done,
    ErrorInfo,
    EventSink,
    Failed,
    PickledFunction,
    ServerInfo,
    Started,
    TaskSpec,
)


class FakeBackend:
    def __init__(
        self,
        workers: int = 2,
        *,
        name: str = "fake",
        dies: Callable[[list[bytes]], bool] = lambda units: False,
        lost_after: int | None = None,
    ) -> None:
        """``dies(units)``: whether the worker dies under that batch. ``lost_after``: after
        that many tasks, the server is "lost": the next task fails with ``server_lost`` and
        every later one is never answered (as a client that missed the news would see)."""
        self.name = name
        self._lost_after = lost_after
        self.started = 0
        self.swallowed = 0
        self.workers = workers
        self._dies = dies
        self._sink: EventSink | None = None
        self._queue: queue.Queue[TaskSpec | None] = queue.Queue()
        self._lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.tasks = 0
        self.deaths = 0
        self._threads = [threading.Thread(target=self._work, daemon=True) for _ in range(workers)]

    def start(self, sink: EventSink) -> None:
        self._sink = sink
        for thread in self._threads:
            thread.start()

    def submit(self, specs: Sequence[TaskSpec]) -> None:
        with self._lock:
            self.in_flight += len(specs)
            self.tasks += len(specs)
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        for spec in specs:
            self._queue.put(spec)

    def _work(self) -> None:
        while (spec := self._queue.get()) is not None:
            assert self._sink is not None and isinstance(spec.work, CallTask)
            self._sink(Started(spec.task_id, self.name))
            fn: Any = spec.work.fn
            if isinstance(fn, PickledFunction):
                fn = cloudpickle.loads(fn.data)
            units = spec.work.args[0]
            with self._lock:
                self.in_flight -= 1
                self.started += 1
                started = self.started
            if self._lost_after is not None and started > self._lost_after:
                if started == self._lost_after + 1:
                    info = ErrorInfo("server_lost", "ServerLost", "the server went away")
                    self._sink(Failed(spec.task_id, self.name, info))
                else:
                    self.swallowed += 1
                continue
            if self._dies(units):
                with self._lock:
                    self.deaths += 1
                info = ErrorInfo("worker_died", "WorkerDied", "the worker process died")
                self._sink(Failed(spec.task_id, self.name, info))
                continue
            self._sink(Done(spec.task_id, self.name, fn(*spec.work.args, **spec.work.kwargs)))

    def cancel(self, task_id: str) -> None:
        pass

    def release(self, object_ids: Iterable[str]) -> None:
        pass

    def servers(self) -> list[ServerInfo]:
        return [ServerInfo(self.name, workers=self.workers)]

    def stats(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(5)
