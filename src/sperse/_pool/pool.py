"""A pool of worker processes that turns opaque payload bytes into result bytes.

The pool knows nothing of cells, pickles of user code or networks: a *runner*, named as
``"package.module:function"`` and loaded in every worker (see :mod:`sperse._pool.worker`),
does the work. The owner (the server) submits ``(task_id, payload)`` and receives events: a
task's, in the vocabulary of every task's outcome (:mod:`sperse._core.events`, with the
pool's name as ``where``; ``Done.value`` is the result bytes), and its workers' exits.

Structure
---------
:mod:`sperse._pool.policy` decides (a pure state machine: which worker gets which task,
cancels, deadlines, restarts); :class:`WorkerPool` here is its shell: it feeds the policy what
happens and carries out the actions it returns, with :mod:`sperse._pool.procs` (processes and
pipes) and :mod:`sperse._pool.outbox` (delivery); :mod:`sperse._pool.events` holds the
vocabulary of all of them. The shell feeds the policy what happens under its lock;
frames to write wait in ``_frames`` and timers in ``_wake_at`` until the loop's ``_pump``
takes them: only the loop writes to a pipe or arms a timer.

Invariants
----------
- Every submitted task id gets exactly one terminal event, ``Done`` (the runner's result)
  or ``Failed``. A task that reached a worker gets ``Started`` first (once, even if it is
  sent again, see "Pipelining"; ``worker`` is that worker's pid), then its ``Output`` events
  in the order they were written, then the terminal event. A ``Failed`` carries one of three
  errors (:mod:`sperse._pool.events`): ``worker_died`` (the worker died, or workers cannot
  start), ``cancelled`` (``cancel`` or ``close``), or ``internal`` ``RunnerError`` (the
  runner raised, or could not be loaded; with the worker's traceback).
- The pool runs on one asyncio event loop: the owner's (``loop=``; the server passes its
  own, so a result goes from the worker's pipe to the owner without a thread in between),
  or else a private one on a thread of its own (the "reader thread"). ``on_event`` is called
  on that loop's thread only, in order, and never while a lock of the pool is held: it may
  call :meth:`WorkerPool.submit` and :meth:`WorkerPool.cancel` (and
  :meth:`WorkerPool.close`). A slow callback delays the pool.
- Tasks are dispatched first in, first out, to idle workers first; ``submit(front=True)``
  puts a task before every queued one.
- A worker that dies is replaced; the task it was running (a concurrent worker: every task
  it was running) fails with a ``worker_died`` error. ``on_worker_exit(pid, how)``, if
  given, is called (like ``on_event``) for every worker that exits while the pool is open,
  before the events of the tasks it fails, and before its replacement can take a task.
- After :meth:`WorkerPool.close` returns (called from another thread than the loop's),
  every worker process has exited and been reaped (the processes its tasks started, in its
  process group, killed), the pool's file descriptors are no longer watched, a private
  reader thread has ended, and no more events will come.

Pipelining
----------
While the recent tasks took less than ``PIPELINE_TASK_MAX`` each (a moving average), a
worker is sent up to ``pipeline`` tasks at once: it starts the next as soon as one ends,
instead of waiting for the round trip through the parent. A worker whose current task has
run longer than that gets no more until it is done, so few tasks wait behind a long one.
A task sent ahead to a worker that dies before starting it goes back to the front of the
queue (it does not get a second ``Started``).

Concurrent workers
------------------
With ``concurrency`` N > 1, each worker runs up to N tasks at once, in threads (see
:mod:`sperse._pool.worker`): it is sent up to N tasks whatever the pipelining heuristics say,
all of which run. ``cancel()`` of a task such a worker runs ends the task at once with
a ``cancelled`` error: the worker is neither interrupted nor killed (other
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
task ends with exactly one ``Failed`` (``cancelled``): once ``cancel()`` has
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
                       CONFIGURE concurrency name               before any RUN: serve so
                       STOP                                     exit
    worker -> parent   READY pid                                runner loaded, idle
                       INIT_FAILED 0 message NUL traceback      runner could not be loaded
                       OUTPUT seq (1 | 2) text                  stdout | stderr
                       DONE seq result
                       CANCELLED seq
                       RUNNER_ERROR seq message NUL traceback   the runner raised

Exactly one of DONE, CANCELLED and RUNNER_ERROR answers each RUN, after its OUTPUT frames.
The owner hears of them as the task's ``Output`` events, then its ``Done`` (the result, as
the worker sent it) or ``Failed`` (``cancelled``, ``RunnerError``); the pool adds
``Started`` (when it sends RUN) and the failures of its own making (a worker's death, a
cancel, a close).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType

from sperse._core.events import BackendEvent, Done, Failed, Output, Started
from sperse._pool import procs
from sperse._pool.events import (
    Action,
    Cancel,
    Close,
    Event,
    Exited,
    Hangup,
    Interrupt,
    Kill,
    Log,
    Open,
    PoolStats,
    Reported,
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
)
from sperse._pool.outbox import Outbox
from sperse._pool.pipe import HEADER, Msg
from sperse._pool.policy import (
    PIPELINE,
    PIPELINE_TASK_MAX,
    PolicyConfig,
    PoolPolicy,
    reconfigure,
)
from sperse._pool.procs import ESCALATION_WAIT, WorkerProcess

__all__ = ["PIPELINE", "PIPELINE_TASK_MAX", "PoolStats", "WorkerPool"]

_log = logging.getLogger(__name__)

_live_pools: weakref.WeakSet[WorkerPool] = weakref.WeakSet()


@atexit.register
def _close_live_pools() -> None:
    # Workers are not daemonic (so that task code may start processes of its own), so a pool
    # left open would make multiprocessing's own exit handler wait for them forever.
    for pool in list(_live_pools):
        pool.close()


def _check(size: int, runner: str) -> None:
    if size < 1:
        raise ValueError(f"a pool needs at least one worker, not {size}")
    module_name, sep, function = runner.partition(":")
    if not (sep and module_name and function):
        raise ValueError(f"runner {runner!r} is not of the form 'package.module:function'")


def _run_own_loop(loop: asyncio.AbstractEventLoop) -> None:
    """The reader thread of a pool without the owner's loop."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.close()


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
    ``env``: set in each worker's ``os.environ``; ``token``: handed to each worker apart
    from it (a server's cluster token, for nested work: see :mod:`sperse._pool.worker`).
    ``start_method``: ``"spawn"``, ``"forkserver"`` or ``"forkserver-tasks"`` (see
    :mod:`sperse._pool.procs`).
    ``configure``: a pool started before it was needed becomes what it is needed as.
    """

    def __init__(
        self,
        size: int,
        runner: str,
        on_event: Callable[[BackendEvent], None],
        *,
        name: str = "pool",
        cancel_grace: float = 1.0,
        start_timeout: float = 30.0,
        loop: asyncio.AbstractEventLoop | None = None,
        pipeline: int = PIPELINE,
        on_events_delivered: Callable[[], None] | None = None,
        concurrency: int = 1,
        on_worker_exit: Callable[[int, str], None] | None = None,
        on_report: Callable[[Reported], None] | None = None,
        env: Mapping[str, str] | None = None,
        token: str = "",
        start_method: procs.StartMethod = "spawn",
    ) -> None:
        _check(size, runner)
        self._size = size
        self._runner = runner
        self._launch = procs.Launch(dict(env or {}), token, start_method)
        self._name = name
        self._cancel_grace = cancel_grace
        self._concurrency = max(1, concurrency)
        self._policy = PoolPolicy(
            PolicyConfig(
                name=name,
                runner=runner,
                size=size,
                concurrency=concurrency,
                pipeline=pipeline,
                cancel_grace=cancel_grace,
                start_timeout=start_timeout,
            )
        )

        self._lock = threading.Lock()
        self._procs: dict[WorkerId, WorkerProcess] = {}  # the live (or starting) workers
        self._outbox = Outbox(
            name, self._lock, on_event, on_events_delivered, on_worker_exit, on_report
        )
        self._frames: dict[WorkerId, list[bytes]] = {}  # to write, on the loop
        self._wake_at = math.inf  # the policy's next deadline, for the loop to arm
        self._close_timeout = 5.0

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
            with self._lock:
                self._perform(self._policy.handle(Open(), time.monotonic()), strict=True)
        except BaseException:
            procs.discard(list(self._procs.values()))
            if self._own_loop:
                self._loop.close()
            raise
        if self._own_loop:
            self._loop.call_soon(self._attach)  # not running yet: no thread to race with
            self._reader = threading.Thread(
                target=_run_own_loop, args=(self._loop,), name=f"sperse-{name}-reader", daemon=True
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
        self.submit_many([(task_id, payload)], front=front)

    def submit_many(self, tasks: Sequence[tuple[str, bytes]], *, front: bool = False) -> None:
        """``submit`` each ``(task_id, payload)``, in order, all or none: raises as
        ``submit`` does, before any is queued."""
        submits = [Submit(task_id, payload, front) for task_id, payload in tasks]
        with self._lock:
            self._perform(self._policy.submit_all(submits, time.monotonic()))
        if self._on_loop():
            # On the loop (the owner's): a free worker gets them now; the events
            # (Started) are delivered after the caller returns, by the kick.
            self._write_frames()
        self._kick()

    def configure(self, name: str, concurrency: int) -> None:
        """Before any task: take ``name`` and ``concurrency`` as if created with them (its
        workers are told so before any task). ``RuntimeError`` once it has had tasks."""
        with self._lock:
            reconfigure(self._policy, name, concurrency)
            self._name = self._outbox.name = name
            self._concurrency = max(1, concurrency)
            for worker in self._procs:
                frames = procs.configure_frame(self._concurrency, name)
                self._frames.setdefault(worker, []).extend(frames)
        self._kick()

    def cancel(self, task_id: str) -> bool:
        """Cancel a queued or running task: True, and it will end with ``Failed`` (a
        ``cancelled`` error). False if the id is unknown or the task has already ended."""
        with self._lock:
            if not self._policy.pending(task_id):
                return False
            self._perform(self._policy.handle(Cancel(task_id), time.monotonic()))
        self._kick()
        return True

    def stats(self) -> PoolStats:
        with self._lock:
            return self._policy.stats()

    def close(self, timeout: float = 5.0) -> None:
        """Fail every queued and running task (``cancelled``: "pool closed"), then stop the
        workers.

        Workers get ``timeout`` seconds to exit (busy ones are interrupted first and get at
        most ``cancel_grace``), then SIGTERM, then SIGKILL. Idempotent. Called on the pool's
        loop (from ``on_event``), it returns at once and the workers are stopped after the
        callback returns; from any other thread, it returns once they are gone.
        """
        with self._lock:
            first = not self._policy.closing
            if first:
                self._close_timeout = timeout
                self._perform(self._policy.handle(Close(), time.monotonic()))
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
        wait_for = timeout + 3 * ESCALATION_WAIT
        if not self._detached.wait(wait_for):
            # The loop is stuck, most likely in on_event: stop the workers from here.
            _log.error("pool %r: its event loop does not answer; killing workers", self._name)
            with self._lock:
                workers = list(self._procs.values())
            procs.kill_now(workers)
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

    # -- carrying out the policy's actions (with self._lock held) ------------------------

    def _handle(self, events: list[Event]) -> None:
        self._perform(self._policy.handle_all(events, time.monotonic()))

    def _perform(self, actions: list[Action], *, strict: bool = False) -> None:
        """Do what can be done from any thread now; leave frames and timers to the loop."""
        put = self._outbox.put
        for action in actions:
            if isinstance(action, (Done, Started, Output, Failed, WorkerExited, Reported)):
                put(action)
            elif isinstance(action, Send):
                payload = action.payload
                out = self._frames.setdefault(action.worker, [])
                out.append(HEADER.pack(Msg.RUN, action.seq, len(payload)))
                out.append(payload)
            else:
                self._perform_rare(action, strict=strict)

    def _perform_rare(self, action: Action, *, strict: bool) -> None:
        match action:
            case SendCancel(worker, seq):
                self._frames.setdefault(worker, []).append(HEADER.pack(Msg.CANCEL, seq, 0))
            case Interrupt(worker, seq):
                if (w := self._procs.get(worker)) is not None:
                    procs.interrupt(w, seq)
            case Kill(worker):
                if (w := self._procs.get(worker)) is not None:
                    procs.kill(w)
            case SetTimer(at):
                self._wake_at = min(self._wake_at, at)
            case Log(level, message):
                _log.log(level, "%s", message)
            case StartWorker(worker):
                self._start_worker(worker, strict=strict)

    def _start_worker(self, worker: WorkerId, *, strict: bool) -> None:
        """Spawn (strict: let any error out, for the constructor) and tell the policy."""
        try:
            w = procs.spawn(worker, self._runner, self._concurrency, self._name, self._launch)
        except OSError as exc:
            if strict:
                raise
            self._handle([SpawnFailed(worker, str(exc))])
            return
        self._procs[worker] = w
        self._handle([Spawned(worker, w.pid)])
        if self._loop_thread is not None:  # attached: a replacement, spawned on the loop
            self._watch(w)

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
        """Have the loop write, arm its timer and deliver soon (once, however many kicks)."""
        if not self._kicked:
            self._kicked = True
            self._call_on_loop(self._pump)

    def _attach(self) -> None:
        """Start watching the workers (on the loop)."""
        self._loop_thread = threading.get_ident()
        with self._lock:
            workers = list(self._procs.values())
        for w in workers:
            self._watch(w)
        self._pump()

    def _pump(self) -> None:
        """Write the frames the policy asked for, arm the timer, deliver the events."""
        self._kicked = False
        if self._detached.is_set():
            return
        self._write_frames()
        with self._lock:
            deadline, self._wake_at = self._wake_at, math.inf
        if deadline < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            delay = max(0.0, deadline - time.monotonic())
            self._timer = self._loop.call_at(self._loop.time() + delay, self._on_timer)
        self._outbox.deliver()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        with self._lock:
            self._handle([Tick()])
        self._pump()

    def _write_frames(self) -> None:
        """On the loop: write the frames waiting (a worker gone meanwhile gets none)."""
        with self._lock:
            if not self._frames:
                return
            frames = [(self._procs.get(worker), out) for worker, out in self._frames.items()]
            self._frames = {}
        for w, out in frames:
            if w is not None and w.conn is not None:  # None: exiting; its sentinel follows
                w.write(self._loop, out, self._write_failed)

    def _watch(self, w: WorkerProcess) -> None:
        if not self._detached.is_set():
            w.watch(self._loop, self._on_sentinel, self._on_readable)

    def _write_failed(self, w: WorkerProcess) -> None:
        with self._lock:
            self._handle([WriteFailed(w.id)])

    def _on_readable(self, w: WorkerProcess) -> None:
        self._read(w)
        self._pump()

    def _read(self, w: WorkerProcess, *, to_end: bool = False) -> None:
        """Hand the frames waiting from ``w`` to the policy (all of them when ``to_end``)."""
        events, eof = procs.read_events(w, to_end=to_end)
        if eof:
            w.drop_conn(self._loop)
            events.append(Hangup(w.id))
        if events:
            with self._lock:
                self._handle(events)

    def _on_sentinel(self, w: WorkerProcess) -> None:
        """``w`` has exited: read what it sent before, reap it, let the policy decide."""
        self._read(w, to_end=True)  # what it sent before it died counts
        w.unwatch(self._loop)
        w.drop_conn(self._loop)
        code = procs.reap_exited(w)
        with self._lock:
            if self._procs.pop(w.id, None) is not None:
                self._handle([Exited(w.id, code)])
        self._pump()

    # -- closing -------------------------------------------------------------------------

    def _detach_all(self) -> None:
        """On the loop, once closing: deliver the last events, stop watching everything."""
        if self._detached.is_set():
            return
        self._outbox.deliver()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        with self._lock:
            workers = list(self._procs.values())
            self._frames.clear()  # for tasks that the close has ended
        for w in workers:
            if not self._loop.is_closed():  # closed: it watches nothing any more
                w.unwatch(self._loop)
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
        """Stop every worker (see :func:`procs.stop`). Blocks; called once, off the loop or
        on a private loop that has nothing else to do."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            workers = [
                (w, self._policy.is_ready(w.id), self._policy.head_seq(w.id))
                for w in self._procs.values()
            ]
            timeout = self._close_timeout
        try:
            procs.stop(workers, timeout, self._cancel_grace, self._name)
        finally:
            with self._lock:
                self._procs.clear()
                self._handle([Stopped()])
            self._stopped.set()
