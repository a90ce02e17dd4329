"""A pool of worker processes that turns opaque payload bytes into result bytes.

The pool knows nothing of cells, pickles of user code or networks: a *runner*, named as
``"package.module:function"`` and loaded in every worker (see :mod:`sperse._pool.worker`),
does the work. The owner (the server) submits ``(task_id, payload)`` and receives events.

Invariants
----------
- Every submitted task id gets exactly one terminal event, :class:`TaskDone` or
  :class:`TaskFailed`. A task that reached a worker gets :class:`TaskStarted` first (once,
  even if it is sent again, see "Pipelining"), then its :class:`TaskOutput` events in the
  order they were written, then the terminal event.
- The pool runs on one asyncio event loop: the owner's (``loop=``; the server passes its
  own, so a result goes from the worker's pipe to the owner without a thread in between),
  or else a private one on a thread of its own (the "reader thread"). ``on_event`` is called
  on that loop's thread only, in order, and never while a lock of the pool is held: it may
  call :meth:`WorkerPool.submit` and :meth:`WorkerPool.cancel` (and
  :meth:`WorkerPool.close`). A slow callback delays the pool.
- Tasks are dispatched first in, first out, to idle workers first; ``submit(front=True)``
  puts a task before every queued one.
- A worker that dies is replaced; the task it was running (a concurrent worker: every task
  it was running) fails with ``reason="worker_died"``. ``on_worker_exit(pid, how)``, if
  given, is called (like ``on_event``) for every worker that exits while the pool is open,
  before the events of the tasks it fails, and before its replacement can take a task.
- After :meth:`WorkerPool.close` returns (called from another thread than the loop's),
  every worker process has exited and been reaped, the pool's file descriptors are no
  longer watched, a private reader thread has ended, and no more events will come.

Pipelining
----------
While the recent tasks took less than ``PIPELINE_TASK_MAX`` each (a moving average), a
worker is sent up to ``pipeline`` tasks at once: it starts the next as soon as one ends,
instead of waiting for the round trip through the parent. A worker whose current task has
run longer than that gets no more until it is done, so few tasks wait behind a long one.
A task sent ahead to a worker that dies before starting it goes back to the front of the
queue (it does not get a second :class:`TaskStarted`).

Concurrent workers
------------------
With ``concurrency`` N > 1, each worker runs up to N tasks at once, in threads (see
:mod:`sperse._pool.worker`): it is sent up to N tasks whatever the pipelining heuristics say,
all of which run. ``cancel()`` of a task such a worker runs ends the task at once with
``TaskFailed(reason="cancelled")``: the worker is neither interrupted nor killed (other
tasks run beside it), the task runs on to its end and its answer is dropped; until then it
still counts among the worker's N. (A task not started yet when the worker reads ``CANCEL``
does not run.) A worker that dies fails every task it was running.

Cancel protocol
---------------
``cancel()`` of a queued task removes it. ``cancel()`` of the task a worker runs now (a
worker of concurrency 1; see above for the others) writes the task's sequence number into
the worker's shared ``cancel_seq`` and sends ``SIGUSR1``; the worker raises an interrupt in
its main thread only if that sequence number is the task running now, and answers
``CANCELLED``. If no answer for the task arrives within ``cancel_grace`` seconds (the task
is stuck in C code or swallowed the interrupt), the worker is killed and replaced
(``cancel_grace=math.inf``: never). ``cancel()`` of a task sent ahead ends it at once and sends
``CANCEL``: the worker reads it before it would start the task, and drops it. Either way the
task ends with exactly one ``TaskFailed(reason="cancelled")``: once ``cancel()`` has
returned True, even a result that was already on its way is dropped.

Pipe format
-----------
One ``multiprocessing.Pipe`` (a socket pair) per worker carries frames: a header
``struct "!BQQ"`` (tag, seq, body length) and the body. The tag is a
:class:`sperse._pool.worker.Msg`; ``seq`` is the pool-wide sequence number of a dispatch,
so a message about an earlier task is never taken for the current one. Text bodies are
UTF-8 (``surrogatepass``), their parts separated by NUL. Nothing on the pipe is pickled::

    parent -> worker   RUN seq payload
                       CANCEL seq                               drop it if not started
                       STOP                                     exit
    worker -> parent   READY pid                                runner loaded, idle
                       INIT_FAILED 0 message NUL traceback      runner could not be loaded
                       OUTPUT seq (1 | 2) text                  stdout | stderr
                       DONE seq result
                       CANCELLED seq
                       RUNNER_ERROR seq message NUL traceback   the runner raised

Exactly one of DONE, CANCELLED and RUNNER_ERROR answers each RUN, after its OUTPUT frames.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import ctypes
import logging
import math
import multiprocessing
import os
import signal
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.context import SpawnProcess
from types import TracebackType
from typing import Any, Literal

from sperse._pool import worker as _worker_module
from sperse._pool.worker import HEADER, Msg, decode_text

__all__ = [
    "PIPELINE",
    "PIPELINE_TASK_MAX",
    "PoolEvent",
    "PoolStats",
    "TaskDone",
    "TaskFailed",
    "TaskOutput",
    "TaskStarted",
    "WorkerPool",
]

_log = logging.getLogger(__name__)

_CTX = multiprocessing.get_context("spawn")
_ESCALATION_WAIT = 1.0  # after SIGTERM, then after SIGKILL, while stopping a worker
_MAX_START_FAILURES = 3  # consecutive workers lost before READY: the pool is broken
_READ_SIZE = 1 << 16  # os.read allocates this much for every read
_LARGE_READ = 1 << 20
_STREAMS: dict[int, Literal["stdout", "stderr"]] = {1: "stdout", 2: "stderr"}

PIPELINE = 4  # tasks a worker may hold at once while tasks are short
PIPELINE_TASK_MAX = 0.002  # seconds: "short"
_PIPELINE_SAMPLES = 8  # tasks measured before pipelining starts
_EMA = 0.2


@dataclass(frozen=True, slots=True)
class TaskStarted:
    """The task reached a worker; ``worker`` is the worker's pid."""

    task_id: str
    worker: int


@dataclass(frozen=True, slots=True)
class TaskOutput:
    """Text the task wrote to ``sys.stdout`` or ``sys.stderr`` (a line or more)."""

    task_id: str
    stream: Literal["stdout", "stderr"]
    text: str


@dataclass(frozen=True, slots=True)
class TaskDone:
    """The runner returned ``result`` (which encodes any error of user code)."""

    task_id: str
    result: bytes


@dataclass(frozen=True, slots=True)
class TaskFailed:
    """The task ended without a result.

    ``worker_died``: the worker process died (killed, crashed), or workers could not start.
    ``cancelled``: :meth:`WorkerPool.cancel` or :meth:`WorkerPool.close`.
    ``runner_error``: the runner raised or could not be loaded; ``traceback`` is the worker's.
    """

    task_id: str
    reason: Literal["worker_died", "cancelled", "runner_error"]
    message: str
    traceback: str = ""


PoolEvent = TaskStarted | TaskOutput | TaskDone | TaskFailed


@dataclass(frozen=True, slots=True)
class _WorkerExit:
    """For ``on_worker_exit``: delivered in order with the events."""

    pid: int
    how: str


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot. ``workers`` are the pids of the pool's live (or starting) workers."""

    workers: tuple[int, ...]
    busy: int
    queued: int
    tasks_done: int
    tasks_failed: int
    workers_replaced: int


@dataclass(slots=True, eq=False)
class _Task:
    task_id: str
    payload: bytes  # kept until answered: a task sent ahead may be sent again
    seq: int = 0
    announced: bool = False  # TaskStarted was emitted
    ended: bool = False  # its terminal event was emitted; a late answer is dropped
    cancel_requested: bool = False
    kill_deadline: float | None = None


@dataclass(slots=True, eq=False)
class _Worker:
    process: SpawnProcess
    conn: Connection | None
    fd: int
    sentinel: int
    cancel_seq: ctypes.c_int64
    pid: int
    start_deadline: float
    ready: bool = False
    killed: bool = False  # by the pool; it is gone as soon as its sentinel fires
    inflight: collections.deque[_Task] = field(default_factory=collections.deque)
    head_since: float = 0.0  # when the first of `inflight` became first
    received: bytearray = field(default_factory=bytearray)
    unsent: collections.deque[memoryview] = field(default_factory=collections.deque)
    writing: bool = False  # a writer callback is registered for `fd`
    reading: bool = False  # a reader callback is registered for `fd`
    watched: bool = False  # its sentinel is registered with the loop
    torn: bool = False  # a frame to it was left half-written when the pool closed


@dataclass(slots=True)
class _Counters:
    tasks_done: int = 0
    tasks_failed: int = 0
    workers_replaced: int = 0
    start_failures: int = 0  # consecutive


def _interrupt(w: _Worker, seq: int) -> None:
    """Ask ``w`` to interrupt task ``seq`` (see "Cancel protocol" above)."""
    w.cancel_seq.value = seq
    with contextlib.suppress(ProcessLookupError):  # it died; its sentinel will say so
        os.kill(w.pid, signal.SIGUSR1)


_live_pools: weakref.WeakSet[WorkerPool] = weakref.WeakSet()


@atexit.register
def _close_live_pools() -> None:
    # Workers are not daemonic (so that task code may start processes of its own), so a pool
    # left open would make multiprocessing's own exit handler wait for them forever.
    for pool in list(_live_pools):
        pool.close()


class WorkerPool:
    """``size`` worker processes running ``runner``; events go to ``on_event``.

    Thread-safe: ``submit``, ``cancel``, ``stats`` and ``close`` may be called from any thread.
    Workers start in parallel at construction; tasks submitted before they are ready wait.
    ``loop``: run on this (running) event loop instead of a thread of the pool's own.
    ``on_events_delivered``: called (like ``on_event``) after each batch of events, e.g. to
    send on at once what they produced.
    ``concurrency``: tasks each worker runs at once (see "Concurrent workers").
    ``on_worker_exit``: called with the pid of a worker that exited and how (``"killed by
    SIGKILL"``, ``"exit code 1"``), see the invariants above.
    """

    def __init__(
        self,
        size: int,
        runner: str,
        on_event: Callable[[PoolEvent], None],
        *,
        name: str = "pool",
        cancel_grace: float = 1.0,
        start_timeout: float = 30.0,
        loop: asyncio.AbstractEventLoop | None = None,
        pipeline: int = PIPELINE,
        on_events_delivered: Callable[[], None] | None = None,
        concurrency: int = 1,
        on_worker_exit: Callable[[int, str], None] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if size < 1:
            raise ValueError(f"a pool needs at least one worker, not {size}")
        module_name, sep, function = runner.partition(":")
        if not (sep and module_name and function):
            raise ValueError(f"runner {runner!r} is not of the form 'package.module:function'")
        self._size = size
        self._runner = runner
        self._env = dict(env or {})  # set in each worker's os.environ before its runner loads
        self._on_event = on_event
        self._on_delivered = on_events_delivered
        self._name = name
        self._cancel_grace = cancel_grace
        self._start_timeout = start_timeout
        self._pipeline = max(1, pipeline)
        self._concurrency = max(1, concurrency)
        self._on_worker_exit = on_worker_exit

        self._lock = threading.Lock()
        self._queue: collections.deque[_Task] = collections.deque()
        self._tasks: dict[str, _Task] = {}  # every task without a terminal event yet
        self._workers: list[_Worker] = []
        self._outbox: collections.deque[PoolEvent | _WorkerExit] = collections.deque()
        self._cancels: list[tuple[_Worker, int]] = []  # CANCEL frames to send
        self._counters = _Counters()
        self._next_seq = 1
        self._broken: TaskFailed | None = None  # template failure once workers cannot start
        self._closing = False
        self._close_timeout = 5.0
        self._average: float | None = None  # seconds per task, a moving average
        self._samples = 0

        self._own_loop = loop is None
        self._loop = asyncio.new_event_loop() if loop is None else loop
        self._loop_thread: int | None = None  # set once the pool runs on its loop
        self._kicked = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._detached = threading.Event()  # no more events: nothing is watched
        self._stopped = threading.Event()  # the workers are gone
        self._stopping = False
        self._reader: threading.Thread | None = None

        try:
            for _ in range(size):
                self._workers.append(self._start_worker())
        except BaseException:
            for started in self._workers:
                started.process.kill()
                started.process.join()
                if started.conn is not None:
                    started.conn.close()
            if self._own_loop:
                self._loop.close()
            raise
        if self._own_loop:
            self._loop.call_soon(self._attach)  # not running yet: no thread to race with
            self._reader = threading.Thread(
                target=self._run_own_loop, name=f"sperse-{name}-reader", daemon=True
            )
            self._reader.start()
        else:
            self._call_on_loop(self._attach)
        _live_pools.add(self)

    # -- public API ----------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self._size

    def submit(self, task_id: str, payload: bytes, *, front: bool = False) -> None:
        """Queue a task (``front``: before every queued task). Raises ``ValueError`` for an
        id still in use, ``RuntimeError`` once the pool is closed."""
        with self._lock:
            if self._closing:
                raise RuntimeError(f"pool {self._name!r} is closed; no more tasks can be submitted")
            if task_id in self._tasks:
                raise ValueError(f"task {task_id!r} is already queued or running in this pool")
            frames: dict[_Worker, list[bytes]] = {}
            if self._broken is not None:
                self._counters.tasks_failed += 1
                self._outbox.append(
                    TaskFailed(
                        task_id, self._broken.reason, self._broken.message, self._broken.traceback
                    )
                )
            else:
                task = _Task(task_id, payload)
                self._tasks[task_id] = task
                if front:
                    self._queue.appendleft(task)
                else:
                    self._queue.append(task)
                if self._on_loop() and not self._detached.is_set():
                    # On the loop (the owner's): a free worker gets it now; the events
                    # (TaskStarted) are delivered after the caller returns, by the kick.
                    frames = self._assign(time.monotonic())
        for w, out in frames.items():
            self._write(w, out)
        self._kick()

    def cancel(self, task_id: str) -> bool:
        """Cancel a queued or running task: True, and it will end with ``TaskFailed(reason=
        "cancelled")``. False if the id is unknown or the task has already ended."""
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                return False
            holder = self._holder(task)
            if not task.seq:  # queued
                self._queue.remove(task)
                self._finish(task, TaskFailed(task_id, "cancelled", "cancelled while queued"))
            elif holder is not None and self._concurrency > 1:  # never interrupted
                self._finish(task, TaskFailed(task_id, "cancelled", "cancelled while running"))
                self._cancels.append((holder, task.seq))
            elif holder is not None and holder.inflight[0] is not task:  # sent ahead
                self._finish(task, TaskFailed(task_id, "cancelled", "cancelled before it started"))
                self._cancels.append((holder, task.seq))
            elif not task.cancel_requested:
                task.cancel_requested = True
                task.kill_deadline = time.monotonic() + self._cancel_grace
                if holder is not None and not holder.killed:
                    _interrupt(holder, task.seq)
        self._kick()
        return True

    def stats(self) -> PoolStats:
        with self._lock:
            return PoolStats(
                workers=tuple(w.pid for w in self._workers),
                busy=sum(1 for w in self._workers if w.inflight),
                queued=len(self._queue),
                tasks_done=self._counters.tasks_done,
                tasks_failed=self._counters.tasks_failed,
                workers_replaced=self._counters.workers_replaced,
            )

    def close(self, timeout: float = 5.0) -> None:
        """Fail every queued and running task with ``TaskFailed("cancelled", "pool closed")``,
        then stop the workers.

        Workers get ``timeout`` seconds to exit (busy ones are interrupted first and get at
        most ``cancel_grace``), then SIGTERM, then SIGKILL. Idempotent. Called on the pool's
        loop (from ``on_event``), it returns at once and the workers are stopped after the
        callback returns; from any other thread, it returns once they are gone.
        """
        with self._lock:
            first = not self._closing
            if first:
                self._closing = True
                self._close_timeout = timeout
                for task in list(self._tasks.values()):
                    self._finish(task, TaskFailed(task.task_id, "cancelled", "pool closed"))
                self._queue.clear()
        _live_pools.discard(self)
        if self._on_loop():
            if first:
                self._loop.call_soon(self._detach_all)
                if self._own_loop:
                    self._loop.call_soon(self._stop_own_loop)
                else:
                    self._loop.call_soon(self._stop_in_executor)  # after _detach_all
            return
        if first and not self._call_on_loop(self._detach_all):
            self._detach_all()  # the loop is gone (interpreter exit): nothing else runs
        wait_for = timeout + 3 * _ESCALATION_WAIT
        if not self._detached.wait(wait_for):
            # The loop is stuck, most likely in on_event: stop the workers from here.
            _log.error("pool %r: its event loop does not answer; killing workers", self._name)
            with self._lock:
                processes = [w.process for w in self._workers]
            for process in processes:
                with contextlib.suppress(ValueError):  # closed: reaped meanwhile
                    process.kill()
                    process.join(_ESCALATION_WAIT)
            return
        self._stop_workers()
        self._stopped.wait(wait_for)
        if self._reader is not None:
            with contextlib.suppress(RuntimeError):  # closed already
                self._loop.call_soon_threadsafe(self._loop.stop)
            self._reader.join(wait_for)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<WorkerPool {self._name!r} size={self._size} runner={self._runner!r}>"

    # -- state changes (call with self._lock held) ---------------------------------------

    def _holder(self, task: _Task) -> _Worker | None:
        if not task.seq:
            return None
        for w in self._workers:
            if task in w.inflight:
                return w
        return None

    def _finish(self, task: _Task, event: TaskDone | TaskFailed) -> None:
        """Record the terminal event of ``task``: the only place that emits one."""
        del self._tasks[task.task_id]
        task.ended = True
        if isinstance(event, TaskDone):
            self._counters.tasks_done += 1
        else:
            self._counters.tasks_failed += 1
        self._outbox.append(event)

    def _start_worker(self) -> _Worker:
        parent_conn, child_conn = _CTX.Pipe(duplex=True)
        cancel_seq = _CTX.RawValue(ctypes.c_int64, 0)
        process = _CTX.Process(
            target=_worker_module.main,
            args=(child_conn, self._runner, cancel_seq, self._concurrency, self._env),
            name=f"{self._name}-worker",
            daemon=False,
        )
        try:
            process.start()
        except BaseException:
            parent_conn.close()
            raise
        finally:
            child_conn.close()
        assert process.pid is not None
        fd = parent_conn.fileno()
        os.set_blocking(fd, False)
        return _Worker(
            process=process,
            conn=parent_conn,
            fd=fd,
            sentinel=process.sentinel,
            cancel_seq=cancel_seq,
            pid=process.pid,
            start_deadline=time.monotonic() + self._start_timeout,
        )

    def _pipelining(self) -> bool:
        average = self._average
        return (
            self._pipeline > 1
            and self._samples >= _PIPELINE_SAMPLES
            and average is not None
            and average < PIPELINE_TASK_MAX
        )

    def _assign(self, now: float) -> dict[_Worker, list[bytes]]:
        """Send queued tasks to workers, first in first out: idle workers first, then (when
        pipelining) up to ``pipeline`` each. Returns the frames to write."""
        frames: dict[_Worker, list[bytes]] = {}
        queue = self._queue
        if not queue:
            return frames
        able = [w for w in self._workers if w.ready and not w.killed and w.conn is not None]
        concurrent = self._concurrency > 1
        pipeline = self._pipeline if self._pipelining() else 1
        depth = self._concurrency if concurrent else pipeline
        for limit in range(1, depth + 1):
            for w in able:
                if not queue:
                    return frames
                inflight = w.inflight
                if len(inflight) >= limit:
                    continue
                if inflight and not concurrent and now - w.head_since > PIPELINE_TASK_MAX:
                    continue  # busy with a long task: keep the rest for the others
                task = queue.popleft()
                task.seq = self._next_seq
                self._next_seq += 1
                if not inflight:
                    w.head_since = now
                inflight.append(task)
                if not task.announced:
                    task.announced = True
                    self._outbox.append(TaskStarted(task.task_id, w.pid))
                out = frames.get(w)
                if out is None:
                    out = frames[w] = []
                out.append(HEADER.pack(Msg.RUN, task.seq, len(task.payload)))
                out.append(task.payload)
        return frames

    def _kill(self, w: _Worker) -> None:
        w.killed = True
        w.process.kill()

    def _check_deadlines(self, now: float) -> float:
        """Kill workers past their deadline; return when the next deadline falls."""
        next_deadline = math.inf
        for w in self._workers:
            if w.killed:
                continue
            if not w.ready:
                if now >= w.start_deadline:
                    _log.warning(
                        "pool %r: worker %d not ready after %.1fs; killing it",
                        self._name,
                        w.pid,
                        self._start_timeout,
                    )
                    self._kill(w)
                    continue
                next_deadline = min(next_deadline, w.start_deadline)
            task = w.inflight[0] if w.inflight else None
            if task is not None and not task.ended and task.kill_deadline is not None:
                if now >= task.kill_deadline:
                    self._kill(w)
                    self._finish(
                        task,
                        TaskFailed(
                            task.task_id,
                            "cancelled",
                            f"cancelled; worker {w.pid} did not stop within "
                            f"{self._cancel_grace:g}s and was killed",
                        ),
                    )
                else:
                    next_deadline = min(next_deadline, task.kill_deadline)
        return next_deadline

    def _on_message(self, w: _Worker, tag: int, seq: int, body: bytes, now: float) -> None:
        if tag == Msg.READY:
            w.ready = True
            self._counters.start_failures = 0
        elif tag == Msg.INIT_FAILED:
            text, tb = decode_text(body, 2)
            self._break(
                TaskFailed(
                    "", "runner_error", f"runner {self._runner!r} failed to load: {text}", tb
                )
            )
        elif tag == Msg.OUTPUT:
            for task in w.inflight:
                if task.seq == seq:
                    if not task.ended and body:
                        (text,) = decode_text(body[1:], 1)
                        self._outbox.append(TaskOutput(task.task_id, _STREAMS[body[0]], text))
                    break
        elif tag in (Msg.DONE, Msg.CANCELLED, Msg.RUNNER_ERROR):
            answered = self._answered(w, seq, now, count=tag == Msg.DONE)
            if answered is None or answered.ended:
                return  # it ended already (cancelled, or the pool closed)
            event: TaskDone | TaskFailed
            if answered.cancel_requested or tag == Msg.CANCELLED:
                event = TaskFailed(answered.task_id, "cancelled", "cancelled while running")
            elif tag == Msg.DONE:
                event = TaskDone(answered.task_id, body)
            else:
                message, tb = decode_text(body, 2)
                event = TaskFailed(answered.task_id, "runner_error", message, tb)
            self._finish(answered, event)
        else:
            _log.error("pool %r: worker %d sent an unknown frame; killing it", self._name, w.pid)
            self._kill(w)

    def _answered(self, w: _Worker, seq: int, now: float, *, count: bool) -> _Task | None:
        """Take the task ``seq`` out of ``w``'s in-flight tasks (usually the first)."""
        inflight = w.inflight
        if inflight and inflight[0].seq == seq:
            task = inflight.popleft()
            if count and self._concurrency == 1:
                spent = now - w.head_since
                self._samples += 1
                average = self._average
                self._average = spent if average is None else average + _EMA * (spent - average)
            w.head_since = now
        else:
            for task in inflight:
                if task.seq == seq:
                    inflight.remove(task)
                    break
            else:
                return None
        task.payload = b""
        return task

    def _on_exit(self, w: _Worker, code: int | None) -> None:
        """``w`` has exited with ``code``: fail the task it ran, requeue those sent ahead,
        replace it."""
        self._workers.remove(w)
        if code is not None and code < 0:
            try:
                how = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"killed by signal {-code}"
        else:
            how = f"exit code {code}"
        if self._on_worker_exit is not None and not self._closing:
            self._outbox.append(_WorkerExit(w.pid, how))
        ahead: list[_Task] = []
        for position, task in enumerate(w.inflight):
            if task.ended:
                continue
            if position > 0 and not self._closing and self._concurrency == 1:
                task.seq = 0
                ahead.append(task)
            elif task.cancel_requested:
                self._finish(task, TaskFailed(task.task_id, "cancelled", "cancelled while running"))
            else:
                self._finish(
                    task,
                    TaskFailed(
                        task.task_id,
                        "worker_died",
                        f"worker {w.pid} died ({how}) while running task {task.task_id}",
                    ),
                )
        w.inflight.clear()
        self._queue.extendleft(reversed(ahead))
        if self._closing or self._broken is not None:
            return
        if not w.ready:
            self._counters.start_failures += 1
            if self._counters.start_failures >= _MAX_START_FAILURES:
                self._break(
                    TaskFailed(
                        "",
                        "worker_died",
                        f"workers of pool {self._name!r} die before they are ready "
                        f"(the last one: {how}); see the server's log",
                    )
                )
                return
        _log.warning("pool %r: worker %d exited (%s); starting another", self._name, w.pid, how)
        self._counters.workers_replaced += 1
        try:
            replacement = self._start_worker()
        except OSError as exc:
            self._break(TaskFailed("", "worker_died", f"cannot start a worker: {exc}"))
            return
        self._workers.append(replacement)
        self._watch(replacement)

    def _break(self, failure: TaskFailed) -> None:
        """Workers cannot serve: fail what is queued now and everything submitted later."""
        if self._broken is not None:
            return
        _log.error("pool %r is broken: %s", self._name, failure.message)
        self._broken = failure
        while self._queue:
            task = self._queue.popleft()
            self._finish(
                task, TaskFailed(task.task_id, failure.reason, failure.message, failure.traceback)
            )

    # -- the loop ------------------------------------------------------------------------

    def _on_loop(self) -> bool:
        return self._loop_thread == threading.get_ident()

    def _call_on_loop(self, fn: Callable[[], None]) -> bool:
        """Schedule ``fn`` on the loop; False if the loop will not run it."""
        if self._on_loop():
            self._loop.call_soon(fn)
            return True
        if self._loop.is_closed() or (
            self._loop_thread is not None and not self._loop.is_running()
        ):
            return False
        try:
            self._loop.call_soon_threadsafe(fn)
        except RuntimeError:  # closed meanwhile
            return False
        return True

    def _kick(self) -> None:
        """Have the loop dispatch and deliver soon (once, however many kicks)."""
        if not self._kicked:
            self._kicked = True
            self._call_on_loop(self._pump)

    def _run_own_loop(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.close()

    def _attach(self) -> None:
        """Start watching the workers (on the loop)."""
        self._loop_thread = threading.get_ident()
        with self._lock:
            workers = list(self._workers)
        for w in workers:
            self._watch(w)
        self._pump()

    def _watch(self, w: _Worker) -> None:
        if self._detached.is_set() or w.watched:
            return
        w.watched = True
        self._loop.add_reader(w.sentinel, self._on_sentinel, w)
        if w.conn is not None:
            w.reading = True
            self._loop.add_reader(w.fd, self._on_readable, w)

    def _unwatch(self, w: _Worker) -> None:
        # File descriptor numbers are reused: only ever unregister what is registered.
        if w.watched:
            w.watched = False
            self._loop.remove_reader(w.sentinel)
        if w.reading:
            w.reading = False
            self._loop.remove_reader(w.fd)
        if w.writing:
            w.writing = False
            self._loop.remove_writer(w.fd)

    def _pump(self) -> None:
        """Dispatch what can be dispatched, send CANCEL frames, check deadlines, deliver."""
        self._kicked = False
        if self._detached.is_set():
            return
        now = time.monotonic()
        with self._lock:
            if self._closing:
                frames: dict[_Worker, list[bytes]] = {}
                deadline = math.inf
            else:
                frames = self._assign(now)
                deadline = self._check_deadlines(now)
            cancels, self._cancels = self._cancels, []
        for w, seq in cancels:
            frames.setdefault(w, []).append(HEADER.pack(Msg.CANCEL, seq, 0))
        for w, out in frames.items():
            self._write(w, out)
        if deadline < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = self._loop.call_at(
                self._loop.time() + max(0.0, deadline - now), self._on_timer
            )
        self._deliver()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        self._pump()

    def _deliver(self) -> None:
        delivered = False
        while True:
            with self._lock:
                if not self._outbox:
                    break
                events = list(self._outbox)
                self._outbox.clear()
            delivered = True
            for event in events:
                try:
                    if isinstance(event, _WorkerExit):
                        if self._on_worker_exit is not None:
                            self._on_worker_exit(event.pid, event.how)
                    else:
                        self._on_event(event)
                except Exception:
                    _log.exception("pool %r: on_event raised for %r", self._name, event)
        if delivered and self._on_delivered is not None:
            try:
                self._on_delivered()
            except Exception:
                _log.exception("pool %r: on_events_delivered raised", self._name)

    def _write(self, w: _Worker, data: list[bytes]) -> None:
        if w.conn is None:
            return  # it is exiting; its sentinel will fail its tasks
        w.unsent.extend(memoryview(d) for d in data if d)
        if not w.writing:
            self._flush(w)

    def _flush(self, w: _Worker) -> None:
        unsent = w.unsent
        while unsent:
            try:
                n = os.writev(w.fd, list(unsent)[:64])
            except BlockingIOError:
                break
            except OSError:
                unsent.clear()  # the worker is gone; its sentinel will say so
                with self._lock:
                    if not w.killed:
                        self._kill(w)
                break
            while n:
                first = unsent[0]
                if n >= len(first):
                    n -= len(first)
                    unsent.popleft()
                else:
                    unsent[0] = first[n:]
                    n = 0
        if unsent and not w.writing and w.reading:
            w.writing = True
            self._loop.add_writer(w.fd, self._flush, w)
        elif not unsent and w.writing:
            w.writing = False
            self._loop.remove_writer(w.fd)

    def _on_readable(self, w: _Worker) -> None:
        self._read(w)
        self._pump()

    def _read(self, w: _Worker, *, to_end: bool = False) -> None:
        """Handle the frames waiting from ``w`` (all of them when ``to_end``)."""
        if w.conn is None:
            return
        received = w.received
        while True:
            want = _READ_SIZE
            if len(received) >= HEADER.size:  # a large frame in progress: bigger reads
                left = HEADER.size + HEADER.unpack_from(received)[2] - len(received)
                want = max(want, min(left, _LARGE_READ))
            try:
                chunk = os.read(w.fd, want)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            if not chunk:  # the worker is exiting; its sentinel follows
                self._drop_conn(w)
                break
            received += chunk
            if not to_end and len(chunk) < want:
                break
        messages = []
        start = 0
        size = len(received)
        while size - start >= HEADER.size:
            tag, seq, length = HEADER.unpack_from(received, start)
            end = start + HEADER.size + length
            if end > size:
                break
            messages.append((tag, seq, bytes(received[start + HEADER.size : end])))
            start = end
        if start:
            del received[:start]
        if messages:
            now = time.monotonic()
            with self._lock:
                for tag, seq, body in messages:
                    self._on_message(w, tag, seq, body, now)

    def _drop_conn(self, w: _Worker) -> None:
        if w.conn is None:
            return
        if w.reading:
            w.reading = False
            self._loop.remove_reader(w.fd)
        if w.writing:
            w.writing = False
            self._loop.remove_writer(w.fd)
        w.unsent.clear()
        w.conn.close()
        w.conn = None

    def _on_sentinel(self, w: _Worker) -> None:
        """``w`` has exited: read what it sent before, reap it, replace it."""
        self._read(w, to_end=True)  # what it sent before it died counts
        self._unwatch(w)
        self._drop_conn(w)
        w.process.join(_ESCALATION_WAIT)
        if w.process.exitcode is None:  # sentinel fired but still running: should not happen
            w.process.kill()
            w.process.join()
        code = w.process.exitcode
        w.process.close()  # its file descriptors, now rather than at garbage collection
        with self._lock:
            if w in self._workers:
                self._on_exit(w, code)
        self._pump()

    # -- closing -------------------------------------------------------------------------

    def _detach_all(self) -> None:
        """On the loop, once closing: deliver the last events, stop watching everything."""
        if self._detached.is_set():
            return
        self._deliver()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        with self._lock:
            workers = list(self._workers)
        for w in workers:
            if not self._loop.is_closed():  # closed: it watches nothing any more
                self._unwatch(w)
            w.torn = bool(w.unsent)
            w.unsent.clear()
        self._detached.set()

    def _stop_in_executor(self) -> None:
        """On the owner's loop, after ``_detach_all``: stopping the workers closes their file
        descriptors, which must not be watched by then (a number the loop still watched
        could be reused by a new file that the loop would then never watch)."""
        self._loop.run_in_executor(None, self._stop_workers)

    def _stop_own_loop(self) -> None:
        """On the private loop's thread, after ``close()`` from ``on_event``."""
        self._stop_workers()
        self._loop.stop()

    def _stop_workers(self) -> None:
        """Stop every worker: STOP (busy ones are interrupted first), SIGTERM, SIGKILL.
        Blocks; called once, off the loop or on a private loop that has nothing else to do."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            workers = list(self._workers)
            timeout = self._close_timeout
        try:
            self._stop_processes(workers, timeout)
        finally:
            with self._lock:
                self._workers.clear()
            self._stopped.set()

    def _stop_processes(self, workers: list[_Worker], timeout: float) -> None:
        now = time.monotonic()
        deadlines: dict[_Worker, float] = {}
        for w in workers:
            try:
                alive = w.process.is_alive()
            except ValueError:  # closed: reaped already
                continue
            if not alive:
                w.process.join()
                w.process.close()
                continue
            if not w.ready:
                deadlines[w] = now  # still starting: nothing to lose, terminate it now
                continue
            busy = bool(w.inflight)
            if busy:
                _interrupt(w, w.inflight[0].seq)
            if w.conn is not None and not w.torn:
                # Never blocks: a worker whose pipe is full is stopped by the escalation.
                with contextlib.suppress(OSError):
                    os.write(w.fd, HEADER.pack(Msg.STOP, 0, 0))
            deadlines[w] = now + (min(timeout, self._cancel_grace) if busy else timeout)
        escalation: dict[_Worker, int] = dict.fromkeys(workers, 0)
        while deadlines:
            by_sentinel: dict[Any, _Worker] = {w.sentinel: w for w in deadlines}
            timeout_left = max(0.0, min(deadlines.values()) - time.monotonic())
            for sentinel in wait(list(by_sentinel), timeout_left):
                w = by_sentinel[sentinel]
                w.process.join()
                w.process.close()
                del deadlines[w]
            now = time.monotonic()
            for w, deadline in list(deadlines.items()):
                if deadline > now:
                    continue
                escalation[w] += 1
                if escalation[w] == 1:
                    w.process.terminate()
                    deadlines[w] = now + _ESCALATION_WAIT
                elif escalation[w] == 2:
                    w.process.kill()
                    deadlines[w] = now + _ESCALATION_WAIT
                else:
                    _log.error("pool %r: worker %d survives SIGKILL", self._name, w.pid)
                    del deadlines[w]
        for w in workers:
            if w.conn is not None:
                w.conn.close()
                w.conn = None
