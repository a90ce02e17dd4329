"""The worker pool's policy: a pure state machine, ``handle(event, now) -> list[Action]``.

It decides which worker runs which task and when, how many tasks a worker holds at once
(pipelining, concurrency), what a cancel does, when a worker has missed a deadline and is
killed, when a dead worker is replaced, and when the pool gives up (it is "broken"). It
reads no clock (``now`` is an argument), does no I/O, starts no process and no asyncio task:
:class:`sperse._pool.pool.WorkerPool` feeds it what happened (a frame from a worker, a
worker's exit, a call of the owner, a timer) and carries out the actions it returns (start
a worker, write a frame, signal or kill a process, deliver an event, set a timer). The
semantics are documented in :mod:`sperse._pool.pool`.

Invariants
----------
- Every submitted task id gets exactly one terminal action (``Done`` or ``Failed``); a task
  that reached a worker gets ``Started`` first, once. These are the task events of
  :mod:`sperse._core.events`, with the pool's name as ``where``.
- A worker holds at most ``concurrency`` tasks (N > 1), else at most ``pipeline`` tasks while
  tasks are short and one otherwise. Within one worker, tasks are sent in the order they were
  queued; the queue is first in, first out (``front`` puts a task before every queued one).
- Assigning costs O(workers + tasks assigned) (times a log), whatever ``concurrency`` or
  ``pipeline`` is: a worker's free room is never walked slot by slot.
- Nothing happens to a worker after its :class:`Exited`; events about unknown workers and
  answers to unknown or ended tasks are ignored (a late answer is dropped).
"""

from __future__ import annotations

import collections
import heapq
import logging
import math
import signal
from dataclasses import dataclass, field, replace

from sperse._core.events import Done, ErrorInfo, Failed, Output, Started
from sperse._core.values import value
from sperse._pool.events import (
    Action,
    Cancel,
    Close,
    Event,
    Exited,
    Hangup,
    InitFailed,
    Interrupt,
    Interrupted,
    Kill,
    Log,
    Malformed,
    Open,
    PoolStats,
    Printed,
    Ready,
    Reported,
    Result,
    RunnerRaised,
    Send,
    SendCancel,
    SetTimer,
    Spawned,
    SpawnFailed,
    StartWorker,
    Stopped,
    Submit,
    Tick,
    WorkerExited,
    WorkerId,
    WriteFailed,
    cancelled,
    runner_error,
    worker_died,
)

__all__ = [
    "MAX_START_FAILURES",
    "PIPELINE",
    "PIPELINE_TASK_MAX",
    "PolicyConfig",
    "PoolPolicy",
    "describe_exit",
    "reconfigure",
]

PIPELINE = 4  # tasks a worker may hold at once while tasks are short
PIPELINE_TASK_MAX = 0.002  # seconds: "short"
PIPELINE_SAMPLES = 8  # tasks measured before pipelining starts
_EMA = 0.2
MAX_START_FAILURES = 3  # consecutive workers lost before READY: the pool is broken


@value
class PolicyConfig:
    name: str = "pool"
    runner: str = "runner:run"
    size: int = 1
    concurrency: int = 1
    pipeline: int = PIPELINE
    cancel_grace: float = 1.0
    start_timeout: float = 30.0


@dataclass(slots=True, eq=False)
class _Task:
    task_id: str
    payload: bytes  # kept until answered: a task sent ahead may be sent again
    seq: int = 0  # of its dispatch; 0 while queued
    worker: WorkerId | None = None  # that holds it, while seq != 0
    announced: bool = False  # Started was emitted
    ended: bool = False  # its terminal event was emitted; a late answer is dropped
    cancel_requested: bool = False
    kill_deadline: float | None = None


@dataclass(slots=True, eq=False)
class _Worker:
    id: WorkerId
    pid: int
    start_deadline: float
    ready: bool = False
    killed: bool = False  # by the policy; it is gone as soon as its Exited comes
    hung_up: bool = False
    inflight: dict[int, _Task] = field(default_factory=dict)  # by seq, in the order sent
    head_since: float = 0.0  # when the first of `inflight` became first

    def head(self) -> _Task | None:
        return next(iter(self.inflight.values()), None)


def describe_exit(code: int | None) -> str:
    """``"killed by SIGKILL"``, ``"exit code 1"``."""
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class PoolPolicy:
    """The pool's decisions (see the module docstring). Not thread-safe: the shell holds a
    lock around every call."""

    def __init__(self, config: PolicyConfig) -> None:
        self._config = config
        self._name = config.name  # where its events happen
        self._concurrency = max(1, config.concurrency)
        self._pipeline = max(1, config.pipeline)
        self._queue: collections.deque[_Task] = collections.deque()
        self._tasks: dict[str, _Task] = {}  # every task without a terminal event yet
        self._workers: dict[WorkerId, _Worker] = {}  # in the order they started
        self._last_worker = 0
        self._next_seq = 1
        self._broken: ErrorInfo | None = None  # the error of every task once workers cannot start
        self._closing = False
        self._average: float | None = None  # seconds per task, a moving average
        self._samples = 0
        self._done = 0
        self._failed = 0
        self._replaced = 0
        self._start_failures = 0  # consecutive
        # Deadlines: none can pass while ``_quiet`` (the last check found no worker still
        # starting, and no worker has started since) and no task awaits a kill
        # (``_kill_pending``: tasks with a ``kill_deadline`` and no terminal event yet).
        self._quiet = False
        self._kill_pending = 0

    # -- queries -------------------------------------------------------------------------

    @property
    def closing(self) -> bool:
        return self._closing

    def pending(self, task_id: str) -> bool:
        """The task is queued or running and has no terminal event yet."""
        return task_id in self._tasks

    def is_ready(self, worker: WorkerId) -> bool:
        w = self._workers.get(worker)
        return w is not None and w.ready

    def head_seq(self, worker: WorkerId) -> int | None:
        """The sequence number of the first task the worker holds (ended or not)."""
        w = self._workers.get(worker)
        head = w.head() if w is not None else None
        return head.seq if head is not None else None

    def stats(self) -> PoolStats:
        return PoolStats(
            workers=tuple(w.pid for w in self._workers.values()),
            busy=sum(1 for w in self._workers.values() if w.inflight),
            queued=len(self._queue),
            tasks_done=self._done,
            tasks_failed=self._failed,
            workers_replaced=self._replaced,
        )

    # -- events --------------------------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Action]:
        """Apply ``event``, then assign queued tasks and check deadlines.

        Raises ``RuntimeError`` for :class:`Submit` once closing, ``ValueError`` for a
        :class:`Submit` of an id still in use; the state is then unchanged."""
        return self.handle_all([event], now)

    def handle_all(self, events: list[Event], now: float) -> list[Action]:
        """Apply ``events`` in order, then assign and check deadlines once."""
        out: list[Action] = []
        for event in events:
            self._apply(event, now, out)
        if not self._closing:
            self._assign(now, out)
            if not self._quiet or self._kill_pending:
                self._check_deadlines(now, out)
        return out

    def submit_all(self, submits: list[Submit], now: float) -> list[Action]:
        """``handle_all`` for many tasks at once, all or none: raises as :meth:`handle` does,
        before any is queued."""
        if self._closing:
            raise RuntimeError(
                f"pool {self._config.name!r} is closed; no more tasks can be submitted"
            )
        ids = {s.task_id for s in submits}
        if len(ids) < len(submits) or not self._tasks.keys().isdisjoint(ids):
            taken = [s.task_id for s in submits if s.task_id in self._tasks] or sorted(ids)
            raise ValueError(f"task {taken[0]!r} is already queued or running in this pool")
        return self.handle_all(list(submits), now)

    def _apply(self, event: Event, now: float, out: list[Action]) -> None:
        match event:
            case Result() | Interrupted() | RunnerRaised():
                w = self._workers.get(event.worker)
                if w is not None:
                    self._answer(w, event, now, out)
            case Submit():
                self._submit(event, out)
            case Cancel(task_id):
                self._cancel(task_id, now, out)
            case Reported():
                out.append(event)
            case Printed(worker, seq, stream, text):
                w = self._workers.get(worker)
                task = w.inflight.get(seq) if w is not None else None
                if task is not None and not task.ended:
                    out.append(Output(task.task_id, self._name, stream, text))
            case Ready(worker):
                w = self._workers.get(worker)
                if w is not None:
                    w.ready = True
                    self._start_failures = 0
            case Exited(worker, code):
                w = self._workers.pop(worker, None)
                if w is not None:
                    self._exited(w, describe_exit(code), out)
            case _:
                self._quiet = False
                self._apply_rare(event, now, out)

    def _apply_rare(self, event: Event, now: float, out: list[Action]) -> None:
        match event:
            case Open():
                for _ in range(self._config.size):
                    out.append(StartWorker(self._new_worker_id()))
            case Spawned(worker, pid):
                self._workers[worker] = _Worker(worker, pid, now + self._config.start_timeout)
            case SpawnFailed(_, message):
                self._break(worker_died(f"cannot start a worker: {message}"), out)
            case InitFailed(_, message, traceback):
                runner = self._config.runner
                failure = f"runner {runner!r} failed to load: {message}"
                self._break(runner_error(failure, traceback), out)
            case Malformed(worker):
                w = self._workers.get(worker)
                if w is not None and not w.killed:
                    out.append(
                        Log(
                            logging.ERROR,
                            f"{self._who} worker {w.pid} sent an unknown frame; killing it",
                        )
                    )
                    self._kill(w, out)
            case WriteFailed(worker):
                w = self._workers.get(worker)
                if w is not None and not w.killed:
                    self._kill(w, out)
            case Hangup(worker):
                w = self._workers.get(worker)
                if w is not None:
                    w.hung_up = True
            case Close():
                self._closing = True
                for task in list(self._tasks.values()):
                    self._finish(task, cancelled("pool closed"), out)
                self._queue.clear()
            case Stopped():
                self._workers.clear()
            case Tick():
                pass  # deadlines are checked after every event

    @property
    def _who(self) -> str:
        return f"pool {self._config.name!r}:"

    def _new_worker_id(self) -> WorkerId:
        self._last_worker += 1
        return WorkerId(self._last_worker)

    # -- the owner's requests ------------------------------------------------------------

    def _submit(self, event: Submit, out: list[Action]) -> None:
        task_id = event.task_id
        if self._closing:
            raise RuntimeError(
                f"pool {self._config.name!r} is closed; no more tasks can be submitted"
            )
        if task_id in self._tasks:
            raise ValueError(f"task {task_id!r} is already queued or running in this pool")
        broken = self._broken
        if broken is not None:
            self._failed += 1
            out.append(Failed(task_id, self._name, broken))
            return
        task = _Task(task_id, event.payload)
        self._tasks[task_id] = task
        if event.front:
            self._queue.appendleft(task)
        else:
            self._queue.append(task)

    def _cancel(self, task_id: str, now: float, out: list[Action]) -> None:
        task = self._tasks.get(task_id)
        if task is None:
            return
        holder = self._workers.get(task.worker) if task.worker is not None else None
        if not task.seq:  # queued
            self._queue.remove(task)
            self._finish(task, cancelled("cancelled while queued"), out)
        elif holder is not None and self._concurrency > 1:  # never interrupted
            self._finish(task, cancelled("cancelled while running"), out)
            out.append(SendCancel(holder.id, task.seq))
        elif holder is not None and holder.head() is not task:  # sent ahead
            self._finish(task, cancelled("cancelled before it started"), out)
            out.append(SendCancel(holder.id, task.seq))
        elif not task.cancel_requested:
            task.cancel_requested = True
            task.kill_deadline = now + self._config.cancel_grace
            self._kill_pending += 1
            if holder is not None and not holder.killed:
                out.append(Interrupt(holder.id, task.seq))

    # -- assignment ----------------------------------------------------------------------

    def _pipelining(self) -> bool:
        average = self._average
        return (
            self._pipeline > 1
            and self._samples >= PIPELINE_SAMPLES
            and average is not None
            and average < PIPELINE_TASK_MAX
        )

    def _assign(self, now: float, out: list[Action]) -> None:
        """Send queued tasks to workers, first in first out, idle workers first, then (when
        pipelining, or for concurrent workers) level by level: every able worker holding
        one task gets a second before any gets a third, in the order the workers started.

        A heap of (tasks held, start order) yields exactly that order, so the cost is in
        the workers and the tasks assigned, not in ``concurrency`` (which a client may set
        to 2**32-1)."""
        queue = self._queue
        if not queue:
            return
        concurrent = self._concurrency > 1
        depth = self._concurrency if concurrent else self._pipeline if self._pipelining() else 1
        if len(self._workers) == 1:  # a remote object's pool: no order among workers to keep
            (w,) = self._workers.values()
            if w.ready and not w.killed and not w.hung_up:
                held = len(w.inflight)
                if held and not concurrent and now - w.head_since > PIPELINE_TASK_MAX:
                    return
                while queue and held < depth:
                    self._send(queue.popleft(), w, now, out)
                    held += 1
            return
        room: list[tuple[int, int, _Worker]] = []
        for position, w in enumerate(self._workers.values()):
            if not w.ready or w.killed or w.hung_up:
                continue
            held = len(w.inflight)
            if held >= depth:
                continue
            if held and not concurrent and now - w.head_since > PIPELINE_TASK_MAX:
                continue  # busy with a long task: keep the rest for the others
            room.append((held, position, w))
        heapq.heapify(room)
        while queue and room:
            held, position, w = room[0]
            self._send(queue.popleft(), w, now, out)
            if held + 1 < depth:
                heapq.heapreplace(room, (held + 1, position, w))
            else:
                heapq.heappop(room)

    def _send(self, task: _Task, w: _Worker, now: float, out: list[Action]) -> None:
        task.seq = self._next_seq
        self._next_seq += 1
        task.worker = w.id
        if not w.inflight:
            w.head_since = now
        w.inflight[task.seq] = task
        if not task.announced:
            task.announced = True
            out.append(Started(task.task_id, self._name, w.pid))
        out.append(Send(w.id, task.seq, task.payload))

    # -- answers, deadlines, exits -------------------------------------------------------

    def _answer(
        self, w: _Worker, event: Result | Interrupted | RunnerRaised, now: float, out: list[Action]
    ) -> None:
        task = w.inflight.pop(event.seq, None)
        if task is None:
            return
        if not w.inflight or task.seq < next(iter(w.inflight)):  # it was the first
            if isinstance(event, Result) and self._concurrency == 1:
                spent = now - w.head_since
                self._samples += 1
                average = self._average
                self._average = spent if average is None else average + _EMA * (spent - average)
            w.head_since = now
        task.payload = b""
        task.worker = None
        if task.ended:
            return  # it ended already (cancelled, or the pool closed)
        if task.cancel_requested or isinstance(event, Interrupted):
            self._finish(task, cancelled("cancelled while running"), out)
        elif isinstance(event, Result):
            self._finish(task, event.result, out)
        else:
            self._finish(task, runner_error(event.message, event.traceback), out)

    def _finish(self, task: _Task, end: bytes | ErrorInfo, out: list[Action]) -> None:
        """Emit the terminal event of ``task``, ``Done`` with the runner's result or
        ``Failed`` with the error: the only place that emits one."""
        del self._tasks[task.task_id]
        task.ended = True
        if task.kill_deadline is not None:
            self._kill_pending -= 1
        if isinstance(end, ErrorInfo):
            self._failed += 1
            out.append(Failed(task.task_id, self._name, end))
        else:
            self._done += 1
            out.append(Done(task.task_id, self._name, end))

    def _kill(self, w: _Worker, out: list[Action]) -> None:
        w.killed = True
        out.append(Kill(w.id))

    def _check_deadlines(self, now: float, out: list[Action]) -> None:
        """Kill workers past their deadline; set a timer for the next deadline."""
        next_deadline = math.inf
        for w in self._workers.values():
            if w.killed:
                continue
            if not w.ready:
                if now >= w.start_deadline:
                    timeout = self._config.start_timeout
                    out.append(
                        Log(
                            logging.WARNING,
                            f"{self._who} worker {w.pid} not ready after {timeout:.1f}s; "
                            "killing it",
                        )
                    )
                    self._kill(w, out)
                    continue
                next_deadline = min(next_deadline, w.start_deadline)
            task = w.head()
            if task is not None and not task.ended and task.kill_deadline is not None:
                if now >= task.kill_deadline:
                    self._kill(w, out)
                    grace = self._config.cancel_grace
                    message = (
                        f"cancelled; worker {w.pid} did not stop within {grace:g}s and was killed"
                    )
                    self._finish(task, cancelled(message), out)
                else:
                    next_deadline = min(next_deadline, task.kill_deadline)
        self._quiet = next_deadline == math.inf
        if next_deadline < math.inf:
            out.append(SetTimer(next_deadline))

    def _exited(self, w: _Worker, how: str, out: list[Action]) -> None:
        """Fail the task ``w`` ran, requeue those sent ahead, replace it."""
        if not self._closing:
            out.append(WorkerExited(w.pid, how))
        ahead: list[_Task] = []
        for position, task in enumerate(w.inflight.values()):
            task.worker = None
            if task.ended:
                continue
            if position > 0 and not self._closing and self._concurrency == 1:
                task.seq = 0
                ahead.append(task)
            elif task.cancel_requested:
                self._finish(task, cancelled("cancelled while running"), out)
            else:
                message = f"worker {w.pid} died ({how}) while running task {task.task_id}"
                self._finish(task, worker_died(message), out)
        w.inflight.clear()
        self._queue.extendleft(reversed(ahead))
        if self._closing or self._broken is not None:
            return
        if not w.ready:
            self._start_failures += 1
            if self._start_failures >= MAX_START_FAILURES:
                message = (
                    f"workers of pool {self._config.name!r} die before they are ready "
                    f"(the last one: {how}); see the server's log"
                )
                self._break(worker_died(message), out)
                return
        out.append(
            Log(logging.WARNING, f"{self._who} worker {w.pid} exited ({how}); starting another")
        )
        self._replaced += 1
        out.append(StartWorker(self._new_worker_id()))

    def _break(self, error: ErrorInfo, out: list[Action]) -> None:
        """Workers cannot serve: fail what is queued now and everything submitted later."""
        if self._broken is not None:
            return
        out.append(Log(logging.ERROR, f"pool {self._config.name!r} is broken: {error.message}"))
        self._broken = error
        while self._queue:
            self._finish(self._queue.popleft(), error, out)


def reconfigure(policy: PoolPolicy, name: str, concurrency: int) -> None:
    """Give ``policy`` another name and concurrency, as if created with them: for a pool
    started before it was needed (a spare), which has had no task yet. (A module function:
    the class is at the size limit of docs/architecture.md.)"""
    if policy._closing or policy._tasks or policy._next_seq > 1 or policy._done or policy._failed:
        raise RuntimeError(f"pool {policy._config.name!r} has had tasks, or is closed")
    policy._config = replace(policy._config, name=name, concurrency=concurrency)
    policy._name = name
    policy._concurrency = max(1, concurrency)
