"""A pool of worker processes that turns opaque payload bytes into result bytes.

The pool knows nothing of cells, pickles of user code or networks: a *runner*, named as
``"package.module:function"`` and loaded in every worker (see :mod:`sperse._pool.worker`),
does the work. The owner (the server) submits ``(task_id, payload)`` and receives events.

Invariants
----------
- Every submitted task id gets exactly one terminal event, :class:`TaskDone` or
  :class:`TaskFailed`. A task that reached a worker gets :class:`TaskStarted` first, then its
  :class:`TaskOutput` events in the order they were written, then the terminal event.
- ``on_event`` is called from one thread only, the pool's reader thread, in that order, and
  never while a lock of the pool is held: it may call :meth:`WorkerPool.submit` and
  :meth:`WorkerPool.cancel` (and :meth:`WorkerPool.close`). A slow callback delays the pool.
- Tasks are dispatched first in, first out, to idle workers, one task per worker at a time.
- A worker that dies is replaced; its task fails with ``reason="worker_died"``.
- After :meth:`WorkerPool.close` returns, every worker process has exited and been reaped,
  the reader thread has ended and no more events will come.

Cancel protocol
---------------
``cancel()`` of a queued task removes it. ``cancel()`` of a running task writes the task's
sequence number into the worker's shared ``cancel_seq`` and sends ``SIGUSR1``; the worker
raises an interrupt in its main thread only if that sequence number is the task running
now, and answers ``CANCELLED``. If no answer for the task arrives within ``cancel_grace``
seconds (the task is stuck in C code or swallowed the interrupt), the worker is killed and
replaced. Either way the task ends with exactly one ``TaskFailed(reason="cancelled")``: once
``cancel()`` has returned True, even a result that was already on its way is dropped.

Pipe format
-----------
One duplex ``multiprocessing.Pipe`` per worker carries pickled tuples whose first item is a
:class:`sperse._pool.worker.Msg` value (an int); ``seq`` is the pool-wide sequence number of
a dispatch, so a message about an earlier task is never taken for the current one::

    parent -> worker   (RUN, seq, payload: bytes)
                       (STOP,)                                  finish and exit
    worker -> parent   (READY, pid)                             runner loaded, idle
                       (INIT_FAILED, message, traceback)        runner could not be loaded
                       (OUTPUT, seq, stream: 1 | 2, text)       stdout | stderr
                       (DONE, seq, result: bytes)
                       (CANCELLED, seq)
                       (RUNNER_ERROR, seq, message, traceback)  the runner raised

Exactly one of DONE, CANCELLED and RUNNER_ERROR answers each RUN, after its OUTPUT messages.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.context import SpawnProcess
from types import TracebackType
from typing import Any, Literal

from sperse._pool import worker as _worker_module
from sperse._pool.worker import Msg

__all__ = [
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
_MAX_WAIT = 1.0  # the reader thread looks at the clock at least this often
_ESCALATION_WAIT = 1.0  # after SIGTERM, then after SIGKILL, while stopping a worker
_MAX_START_FAILURES = 3  # consecutive workers lost before READY: the pool is broken
_READ_BATCH = 64  # messages read from one worker before looking at the others
_STREAMS: dict[int, Literal["stdout", "stderr"]] = {1: "stdout", 2: "stderr"}


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
    payload: bytes
    seq: int = 0
    cancel_requested: bool = False
    kill_deadline: float | None = None


@dataclass(slots=True, eq=False)
class _Worker:
    process: SpawnProcess
    conn: Connection | None
    cancel_seq: ctypes.c_int64
    pid: int
    start_deadline: float
    ready: bool = False
    task: _Task | None = None
    sent_seq: int = 0  # the last task sent to it
    answered_seq: int = 0  # the last task it answered
    killed: bool = False  # by the pool; it is gone as soon as its sentinel fires


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
    ) -> None:
        if size < 1:
            raise ValueError(f"a pool needs at least one worker, not {size}")
        module_name, sep, function = runner.partition(":")
        if not (sep and module_name and function):
            raise ValueError(f"runner {runner!r} is not of the form 'package.module:function'")
        self._size = size
        self._runner = runner
        self._on_event = on_event
        self._name = name
        self._cancel_grace = cancel_grace
        self._start_timeout = start_timeout

        self._lock = threading.Lock()
        self._queue: collections.deque[_Task] = collections.deque()
        self._tasks: dict[str, _Task] = {}  # every task without a terminal event yet
        self._workers: list[_Worker] = []
        self._outbox: collections.deque[PoolEvent] = collections.deque()
        self._counters = _Counters()
        self._next_seq = 1
        self._broken: TaskFailed | None = None  # template failure once workers cannot start
        self._closing = False
        self._close_timeout = 5.0

        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        try:
            for _ in range(size):
                self._workers.append(self._start_worker())
        except BaseException:
            for started in self._workers:
                started.process.kill()
                started.process.join()
            os.close(self._wake_r)
            os.close(self._wake_w)
            raise
        self._reader = threading.Thread(
            target=self._read_loop, name=f"sperse-{name}-reader", daemon=True
        )
        self._reader.start()
        _live_pools.add(self)

    # -- public API ----------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self._size

    def submit(self, task_id: str, payload: bytes) -> None:
        """Queue a task. Raises ``ValueError`` for an id still in use, ``RuntimeError`` once
        the pool is closed."""
        with self._lock:
            if self._closing:
                raise RuntimeError(f"pool {self._name!r} is closed; no more tasks can be submitted")
            if task_id in self._tasks:
                raise ValueError(f"task {task_id!r} is already queued or running in this pool")
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
                self._queue.append(task)
        self._wake()

    def cancel(self, task_id: str) -> bool:
        """Cancel a queued or running task: True, and it will end with ``TaskFailed(reason=
        "cancelled")``. False if the id is unknown or the task has already ended."""
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                return False
            if not task.seq:  # queued
                self._queue.remove(task)
                self._finish(task, None, TaskFailed(task_id, "cancelled", "cancelled while queued"))
            elif not task.cancel_requested:
                task.cancel_requested = True
                task.kill_deadline = time.monotonic() + self._cancel_grace
                holder = self._worker_of(task)
                if holder is not None and not holder.killed:
                    _interrupt(holder, task.seq)
        self._wake()
        return True

    def stats(self) -> PoolStats:
        with self._lock:
            return PoolStats(
                workers=tuple(w.pid for w in self._workers),
                busy=sum(1 for w in self._workers if w.task is not None),
                queued=len(self._queue),
                tasks_done=self._counters.tasks_done,
                tasks_failed=self._counters.tasks_failed,
                workers_replaced=self._counters.workers_replaced,
            )

    def close(self, timeout: float = 5.0) -> None:
        """Fail every queued and running task with ``TaskFailed("cancelled", "pool closed")``,
        stop the workers and the reader thread.

        Workers get ``timeout`` seconds to exit (busy ones are interrupted first and get at
        most ``cancel_grace``), then SIGTERM, then SIGKILL. Idempotent. Called from
        ``on_event``, it returns at once and the reader thread stops the workers after the
        callback returns.
        """
        with self._lock:
            if not self._closing:
                self._closing = True
                self._close_timeout = timeout
                for task in list(self._tasks.values()):
                    self._finish(
                        task,
                        self._worker_of(task),
                        TaskFailed(task.task_id, "cancelled", "pool closed"),
                    )
                self._queue.clear()
        _live_pools.discard(self)
        self._wake()
        if threading.current_thread() is self._reader:
            return
        self._reader.join(timeout + 3 * _ESCALATION_WAIT)
        if self._reader.is_alive():
            # The reader thread is stuck, most likely in on_event: stop the workers from here.
            _log.error("pool %r: reader thread did not stop; killing workers", self._name)
            with self._lock:
                processes = [w.process for w in self._workers]
            for process in processes:
                with contextlib.suppress(ValueError):  # closed: reaped meanwhile
                    process.kill()
                    process.join(_ESCALATION_WAIT)

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

    def _worker_of(self, task: _Task) -> _Worker | None:
        for w in self._workers:
            if w.task is task:
                return w
        return None

    def _finish(self, task: _Task, holder: _Worker | None, event: TaskDone | TaskFailed) -> None:
        """Record the terminal event of ``task``: the only place that emits one."""
        del self._tasks[task.task_id]
        if holder is not None:
            holder.task = None
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
            args=(child_conn, self._runner, cancel_seq),
            name=f"{self._name}-worker",
            daemon=False,
        )
        try:
            process.start()
        finally:
            child_conn.close()
        assert process.pid is not None
        return _Worker(
            process=process,
            conn=parent_conn,
            cancel_seq=cancel_seq,
            pid=process.pid,
            start_deadline=time.monotonic() + self._start_timeout,
        )

    def _assign(self) -> list[tuple[_Worker, _Task]]:
        """Pair queued tasks with idle workers, first in first out."""
        pairs: list[tuple[_Worker, _Task]] = []
        for w in self._workers:
            if not self._queue:
                break
            if w.ready and w.task is None and not w.killed and w.conn is not None:
                task = self._queue.popleft()
                task.seq = self._next_seq
                self._next_seq += 1
                w.task = task
                self._outbox.append(TaskStarted(task.task_id, w.pid))
                pairs.append((w, task))
        return pairs

    def _kill(self, w: _Worker) -> None:
        w.killed = True
        w.process.kill()

    def _check_deadlines(self, now: float) -> float:
        """Kill workers past their deadline; return when the next deadline falls."""
        next_deadline = now + _MAX_WAIT
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
                else:
                    next_deadline = min(next_deadline, w.start_deadline)
            task = w.task
            if task is not None and task.kill_deadline is not None:
                if now >= task.kill_deadline:
                    self._kill(w)
                    self._finish(
                        task,
                        w,
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

    def _on_message(self, w: _Worker, message: tuple[Any, ...]) -> None:
        tag = message[0]
        if tag == Msg.READY:
            w.ready = True
            self._counters.start_failures = 0
        elif tag == Msg.INIT_FAILED:
            _, text, tb = message
            self._break(
                TaskFailed(
                    "", "runner_error", f"runner {self._runner!r} failed to load: {text}", tb
                )
            )
        elif tag == Msg.OUTPUT:
            _, seq, stream, text = message
            task = w.task
            if task is not None and task.seq == seq:
                self._outbox.append(TaskOutput(task.task_id, _STREAMS[stream], text))
        elif tag in (Msg.DONE, Msg.CANCELLED, Msg.RUNNER_ERROR):
            seq = message[1]
            w.answered_seq = seq
            task = w.task
            if task is None or task.seq != seq:
                return  # the task already ended (cancel grace expired, or pool closed)
            event: TaskDone | TaskFailed
            if task.cancel_requested or tag == Msg.CANCELLED:
                event = TaskFailed(task.task_id, "cancelled", "cancelled while running")
            elif tag == Msg.DONE:
                event = TaskDone(task.task_id, message[2])
            else:
                event = TaskFailed(task.task_id, "runner_error", message[2], message[3])
            self._finish(task, w, event)
        else:
            _log.error("pool %r: worker %d sent an unknown message; killing it", self._name, w.pid)
            self._kill(w)

    def _on_exit(self, w: _Worker, code: int | None) -> None:
        """``w`` has exited with ``code``: fail its task, replace it."""
        self._workers.remove(w)
        if code is not None and code < 0:
            try:
                how = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"killed by signal {-code}"
        else:
            how = f"exit code {code}"
        task = w.task
        if task is not None:
            if task.cancel_requested:
                event = TaskFailed(task.task_id, "cancelled", "cancelled while running")
            else:
                event = TaskFailed(
                    task.task_id,
                    "worker_died",
                    f"worker {w.pid} died ({how}) while running task {task.task_id}",
                )
            self._finish(task, w, event)
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
            self._workers.append(self._start_worker())
        except OSError as exc:
            self._break(TaskFailed("", "worker_died", f"cannot start a worker: {exc}"))

    def _break(self, failure: TaskFailed) -> None:
        """Workers cannot serve: fail what is queued now and everything submitted later."""
        if self._broken is not None:
            return
        _log.error("pool %r is broken: %s", self._name, failure.message)
        self._broken = failure
        while self._queue:
            task = self._queue.popleft()
            self._finish(
                task,
                None,
                TaskFailed(task.task_id, failure.reason, failure.message, failure.traceback),
            )

    # -- the reader thread ---------------------------------------------------------------

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full (it is awake already) or closed
            os.write(self._wake_w, b"\0")

    def _deliver(self) -> None:
        while True:
            with self._lock:
                if not self._outbox:
                    return
                event = self._outbox.popleft()
            try:
                self._on_event(event)
            except Exception:
                _log.exception("pool %r: on_event raised for %r", self._name, event)

    def _read_loop(self) -> None:
        try:
            while True:
                with self._lock:
                    if self._closing:
                        break
                    pairs = self._assign()
                    deadline = self._check_deadlines(time.monotonic())
                    watched: dict[Any, _Worker] = {}
                    for w in self._workers:
                        if w.conn is not None:
                            watched[w.conn] = w
                        watched[w.process.sentinel] = w
                for w, task in pairs:
                    self._send_task(w, task)
                self._deliver()
                timeout = max(0.0, deadline - time.monotonic())
                ready = wait([self._wake_r, *watched], timeout)
                for obj in ready:
                    if isinstance(obj, Connection):
                        self._read_messages(watched[obj])
                    elif obj == self._wake_r:
                        self._drain_wake_pipe()
                    else:
                        self._reap(watched[obj])
        except BaseException:
            _log.exception("pool %r: reader thread crashed; stopping the pool", self._name)
            with self._lock:
                self._closing = True
                for task in list(self._tasks.values()):
                    self._finish(
                        task,
                        self._worker_of(task),
                        TaskFailed(
                            task.task_id, "cancelled", "pool stopped after an internal error"
                        ),
                    )
                self._queue.clear()
        finally:
            self._deliver()
            self._stop_workers()
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _drain_wake_pipe(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _send_task(self, w: _Worker, task: _Task) -> None:
        payload, task.payload = task.payload, b""
        w.sent_seq = task.seq
        assert w.conn is not None
        try:
            w.conn.send((Msg.RUN.value, task.seq, payload))
        except (OSError, ValueError):
            # The worker is gone; its sentinel will fail the task as worker_died.
            with self._lock:
                if not w.killed:
                    self._kill(w)

    def _read_messages(self, w: _Worker, limit: int | None = _READ_BATCH) -> None:
        """Handle the messages waiting from ``w`` (at most ``limit``, so that a worker that
        prints without pause does not starve the others)."""
        conn = w.conn
        if conn is None:
            return
        count = 0
        try:
            while (limit is None or count < limit) and conn.poll():
                message = conn.recv()
                count += 1
                with self._lock:
                    self._on_message(w, message)
        except (EOFError, OSError):
            conn.close()
            w.conn = None  # the worker is exiting; its sentinel follows

    def _reap(self, w: _Worker) -> None:
        self._read_messages(w, limit=None)  # what it sent before it died counts
        w.process.join(_ESCALATION_WAIT)
        if w.process.exitcode is None:  # sentinel fired but still running: should not happen
            w.process.kill()
            w.process.join()
        code = w.process.exitcode
        w.process.close()  # its file descriptors, now rather than at garbage collection
        if w.conn is not None:
            w.conn.close()
            w.conn = None
        with self._lock:
            self._on_exit(w, code)

    def _stop_workers(self) -> None:
        """Stop every worker: STOP (busy ones are interrupted first), SIGTERM, SIGKILL."""
        with self._lock:
            workers = list(self._workers)
            timeout = self._close_timeout
        now = time.monotonic()
        deadlines: dict[_Worker, float] = {}
        for w in workers:
            if not w.ready:
                deadlines[w] = now  # still starting: nothing to lose, terminate it now
                continue
            busy = w.sent_seq > w.answered_seq
            if busy:
                _interrupt(w, w.sent_seq)
            if w.conn is not None:
                with contextlib.suppress(OSError, ValueError):
                    w.conn.send((Msg.STOP.value,))
            deadlines[w] = now + (min(timeout, self._cancel_grace) if busy else timeout)
        escalation: dict[_Worker, int] = dict.fromkeys(workers, 0)
        while deadlines:
            by_sentinel: dict[Any, _Worker] = {w.process.sentinel: w for w in deadlines}
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
        with self._lock:
            self._workers.clear()
