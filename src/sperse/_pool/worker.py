"""The worker process of :class:`sperse._pool.pool.WorkerPool`.

This module runs in every worker and is imported at each worker start, so it imports the
standard library only: whatever it imports, every spawn pays for.

A worker runs the tasks it is sent one at a time, in the order they came (the pool may send
a few ahead: see "Pipelining" in :mod:`sperse._pool.pool`). The frame format is documented
there, and the tags are :class:`Msg`. Before it starts a task, the worker reads whatever
else has arrived, so a ``CANCEL`` of a task that waits behind another is seen before that
task would start. While a task runs, Python-level writes to ``sys.stdout``/``sys.stderr``
are sent back line by line, tagged with the task's sequence number.

A worker started with ``concurrency`` N > 1 runs up to N tasks at once instead, each in a
thread of its own (threads are started as tasks need them, and kept); the main thread only
reads frames. Output is tagged with the task of the writing thread (a context variable, so
that a coroutine the task hands to an event loop in another thread is tagged with it too),
and each answer is written whole under the channel's lock. Such a worker is never
interrupted: a ``CANCEL`` only drops a task that has not started. A worker started before it
was needed (a spare) is told its concurrency, and its process's name, by a ``CONFIGURE``
frame before its first task, and serves from then on as if it had been started with them.

Cancellation of the running task: the parent stores the sequence number of the task to
cancel in a shared integer and sends ``SIGUSR1``. The handler raises
:class:`TaskInterrupted` in the main thread only when that number is the task running now,
so a signal that arrives late never cancels the next task. While the main thread is inside
a pipe write, the interrupt is deferred until the write is complete: an exception in the
middle of a frame would corrupt the pipe.

The worker ignores ``SIGINT`` (Ctrl-C in the parent's terminal is for the parent to handle),
and exits when its parent dies: an idle worker sees its pipe close, and a busy one is stopped
by a watchdog thread waiting on the parent's sentinel.

Every worker leads a process group of its own, which the processes its tasks start join (a
child that starts a session of its own leaves it). The pool kills the group when the worker
has exited, whatever the way (see :mod:`sperse._pool.procs`), and a worker whose parent died
kills its group on its way out: no process a task started outlives its worker. A worker
whose task is interrupted (cancelled) kills the rest of its group itself
(:mod:`sperse._pool.process_group`).

A remote object's worker that runs one call at a time may also serve calls its client sends
it directly (:func:`open_direct`, :mod:`sperse._pool.direct`): they join the same queue as
the pipe's, in the order they arrive, under negative sequence numbers; their output and
answers go back on their connection.

The pool's ``token`` (a server's cluster token, for nested work) arrives with the worker's
start-up arguments and is kept in :mod:`sperse._core.nested`, never in ``os.environ``; a
variable the worker inherited whose value holds it is removed from there too.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import ctypes
import importlib
import io
import multiprocessing
import os
import queue
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from types import FrameType
from typing import Any, TextIO

from sperse._pool import process_group
from sperse._pool.pipe import HEADER, Channel, Msg, TaskInterrupted, frame

__all__ = [
    "HEADER",
    "Msg",
    "Runner",
    "TaskInterrupted",
    "decode_text",
    "encode_text",
    "frame",
    "keep_until_answered",
    "load_runner",
    "main",
    "open_direct",
]

Runner = Callable[[bytes], bytes]
"""Turns a payload into result bytes, in the worker. It encodes user errors in its result."""

_STDOUT = 1
_STDERR = 2
_LINE_BREAKS = ("\n", "\r")
_MAX_BUFFERED = 8192


def encode_text(*parts: str) -> bytes:
    """Strings as one body, NUL-separated (any ``str`` survives, lone surrogates too)."""
    return "\0".join(parts).encode("utf-8", "surrogatepass")


def decode_text(body: bytes | memoryview, count: int) -> list[str]:
    parts = bytes(body).decode("utf-8", "surrogatepass").split("\0", count - 1)
    return parts + [""] * (count - len(parts))


_kept = threading.local()  # .items: of the task that runs on this thread


def keep_until_answered(*objects: Any) -> None:
    """Keep ``objects`` alive until the answer of the task running now has been sent: a big
    value is freed (its pages returned, its mapping undone) after the result is on its way,
    not before. Outside a worker's task, the objects are simply dropped."""
    if _serving:
        items: list[Any] | None = getattr(_kept, "items", None)
        if items is None:
            items = _kept.items = []
        items.extend(objects)


def _drop_kept() -> None:
    items: list[Any] | None = getattr(_kept, "items", None)
    if items:
        items.clear()


_serving = False
_task_seq: contextvars.ContextVar[int] = contextvars.ContextVar("sperse_task_seq", default=0)


def open_direct() -> tuple[str, bytes] | None:
    """In a worker that runs one task at a time: serve calls sent to it directly too (see
    :mod:`sperse._pool.direct`); the socket's name and the secret. None elsewhere."""
    return _current.open_direct() if _current is not None else None


_current: _Worker | None = None


def load_runner(spec: str) -> Runner:
    """Resolve ``"package.module:function"`` (the function may be a dotted attribute path)."""
    module_name, sep, qualname = spec.partition(":")
    if not sep or not module_name or not qualname:
        raise ValueError(f"runner {spec!r} is not of the form 'package.module:function'")
    target: Any = importlib.import_module(module_name)
    for attribute in qualname.split("."):
        target = getattr(target, attribute)
    if not callable(target):
        raise TypeError(f"runner {spec!r} is {type(target).__name__}, not a function")
    runner: Runner = target
    return runner


class _Buffered:
    """The text a task wrote that is not sent yet."""

    __slots__ = ("parts", "size")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.size = 0


class _TaskStream(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` of a worker: forwards text to the parent, line-buffered.

    Text written while no task runs (by a thread that outlived its task) goes to the worker's
    original stream instead.
    """

    encoding = "utf-8"  # shadows TextIOBase's read-only attribute

    def __init__(self, worker: _Worker, stream: int, original: TextIO | None) -> None:
        super().__init__()
        self._worker = worker
        self._stream = stream
        self._original = original
        self._lock = threading.Lock()
        # Per task: several run at once in a concurrent worker.
        self._buffers: dict[int, _Buffered] = {}

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        worker = self._worker
        seq = worker.current()
        if seq:
            with worker.channel, self._lock:
                if worker.is_running(seq):  # checked under the lock: drain() takes it too
                    buffered = self._buffers.get(seq)
                    if buffered is None:
                        buffered = self._buffers[seq] = _Buffered()
                    buffered.parts.append(text)
                    buffered.size += len(text)
                    if buffered.size > _MAX_BUFFERED or any(b in text for b in _LINE_BREAKS):
                        self._send(seq)
                    return len(text)
        if self._original is not None:
            self._original.write(text)
        return len(text)

    def flush(self) -> None:
        seq = self._worker.current()
        if seq:
            with self._worker.channel, self._lock:
                self._send(seq)

    def drain(self, seq: int) -> None:
        """Send what is left of task ``seq``'s text; called once the task has ended."""
        with self._lock:
            self._send(seq)

    def _send(self, seq: int) -> None:
        buffered = self._buffers.pop(seq, None)
        if buffered is not None and buffered.parts:
            body = bytes((self._stream,)) + encode_text("".join(buffered.parts))
            self._worker.send_output(seq, body)


class _Worker:
    def __init__(
        self, conn: Connection, runner: Runner, cancel_seq: ctypes.c_int64, concurrency: int = 1
    ) -> None:
        self.channel = Channel(conn)
        self.runner = runner
        self.cancel_seq = cancel_seq
        self.running = 0  # sequence number of the task running now, 0 when idle
        self.waiting: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self.stdout = _TaskStream(self, _STDOUT, sys.stdout)
        self.stderr = _TaskStream(self, _STDERR, sys.stderr)
        # A concurrent worker (concurrency > 1): tasks run in threads.
        self.concurrency = concurrency
        self.active: set[int] = set()  # tasks running now
        self.pending: set[int] = set()  # received, not started yet
        self.dropped: set[int] = set()  # cancelled before they started
        self.jobs: queue.SimpleQueue[tuple[int, bytes]] = queue.SimpleQueue()
        self.threads = 0
        self.idle = 0  # threads waiting for a job
        self.threads_lock = threading.Lock()
        self.direct: Any = None  # a sperse._pool.direct.Direct, once the runner opened it

    def send_output(self, seq: int, body: bytes) -> None:
        if seq < 0:  # a direct call's (sperse._pool.direct)
            self.direct.output(seq, body)
        else:
            self.channel.send(Msg.OUTPUT, seq, body)

    def open_direct(self) -> tuple[str, bytes] | None:
        """Serve direct calls too (see :mod:`sperse._pool.direct`): the socket's name and
        the secret. None in a worker that runs several tasks at once."""
        if self.concurrency != 1:
            return None
        if self.direct is None:
            from sperse._pool.direct import Direct  # only an object's worker needs it

            self.direct = Direct(
                self.waiting,
                lambda: self.running,
                self._interrupt,
                lambda body: self.channel.send(Msg.REPORT, 0, body),
            )
        return self.direct.address, self.direct.secret

    def _interrupt(self) -> None:
        if self.channel.shield_depth:
            self.channel.deferred = True
        else:
            self.channel.deferred = False
            raise TaskInterrupted

    def current(self) -> int:
        """The task whose code runs on this thread (or in this context), 0 if none."""
        return self.running if self.concurrency == 1 else _task_seq.get()

    def is_running(self, seq: int) -> bool:
        return seq == self.running if self.concurrency == 1 else seq in self.active

    def on_cancel_signal(self, signum: int, frame: FrameType | None) -> None:
        seq = self.running
        if not seq or self.cancel_seq.value != seq:
            return  # a late signal for a task that has ended
        self._interrupt()

    def serve(self) -> None:
        """Serve till told to stop; a ``CONFIGURE`` of another concurrency switches modes."""
        while self.serve_concurrently() if self.concurrency > 1 else self.serve_serially():
            pass

    def serve_serially(self) -> bool:
        """Run the tasks one at a time; True: switch to running them concurrently."""
        reader = self.channel.reader
        waiting = self.waiting
        while self.concurrency == 1:
            direct = self.direct
            if (
                not waiting
                and (direct is None or reader.buffered() or direct.wait(reader.fd))
                and not self._take(reader.read())
            ):
                return False
            # A CANCEL of a task that waits behind another is read before that task starts
            # (frames already read always; the pipe is asked only when tasks queue up here).
            while self.concurrency == 1 and (
                reader.buffered() or (len(waiting) > 1 and reader.ready())
            ):
                if not self._take(reader.read()):
                    return False
            if direct is not None and len(waiting) > 1:
                direct.take()
            if waiting:
                seq, payload = waiting.popitem(last=False)
                outcome = self.run_task(seq, payload)
                if seq < 0:
                    with self.channel:  # shielded: an interrupt must not cut a frame
                        direct.answer(*outcome)
                else:
                    self.channel.send(*outcome)
                _drop_kept()
        return True

    def configure(self, concurrency: int, body: bytes) -> None:
        """Sent before any task (to a worker started ahead of need): serve so, so named."""
        multiprocessing.current_process().name = decode_text(body, 1)[0]
        self.concurrency = max(1, concurrency)

    def _take(self, message: tuple[int, int, bytes] | None) -> bool:
        """Handle one frame from the parent; False: stop serving."""
        if message is None:
            return False  # the parent closed the pipe or died
        tag, seq, body = message
        if tag == Msg.RUN:
            self.waiting[seq] = body
        elif tag == Msg.CANCEL:
            if self.waiting.pop(seq, None) is not None:
                self.channel.send(Msg.CANCELLED, seq)
        elif tag == Msg.CONFIGURE:
            self.configure(seq, body)
        elif tag == Msg.STOP:
            return False
        return True

    def run_task(self, seq: int, payload: bytes) -> tuple[int, int, bytes]:
        outcome: tuple[int, int, bytes]
        self.channel.deferred = False
        started = process_group.boot_ticks()
        try:
            try:
                self.running = seq
                if self.cancel_seq.value == seq:  # cancelled before it started
                    raise TaskInterrupted
                outcome = self._run(seq, payload)
            finally:
                self.running = 0
        except TaskInterrupted:
            outcome = (Msg.CANCELLED, seq, b"")
            process_group.kill_since(started)
        # No interrupt can arrive from here on: `running` is 0.
        self.stdout.drain(seq)
        self.stderr.drain(seq)
        return outcome

    def _run(self, seq: int, payload: bytes) -> tuple[int, int, bytes]:
        """Run the runner; ``TaskInterrupted`` passes through."""
        try:
            result = self.runner(payload)
            if type(result) is not bytes:
                raise TypeError(f"the runner returned {type(result).__name__}, not bytes")
        except TaskInterrupted:
            raise
        except BaseException as exc:  # a bug in the runner; the worker keeps serving
            message = "".join(traceback.format_exception_only(exc)).strip()
            return (Msg.RUNNER_ERROR, seq, encode_text(message, traceback.format_exc()))
        return (Msg.DONE, seq, result)

    # -- a concurrent worker ---------------------------------------------------------------

    def serve_concurrently(self) -> bool:
        """Read frames; each task goes to a thread (the pool sends at most ``concurrency``
        unanswered tasks, so one is free or about to be). True: switch to one at a time."""
        reader = self.channel.reader
        while True:
            message = reader.read()
            if message is None:
                return False
            tag, seq, body = message
            if tag == Msg.RUN:
                with self.threads_lock:
                    self.pending.add(seq)
                    start = self.idle == 0 and self.threads < self.concurrency
                    if start:
                        self.threads += 1
                    else:
                        self.idle -= 1
                self.jobs.put((seq, body))
                if start:
                    threading.Thread(
                        target=self._serve_jobs, name=f"sperse-task-{self.threads}", daemon=True
                    ).start()
            elif tag == Msg.CANCEL:
                with self.threads_lock:
                    if seq in self.pending:  # else it runs: the pool ignores its answer
                        self.pending.discard(seq)
                        self.dropped.add(seq)
            elif tag == Msg.CONFIGURE:
                self.configure(seq, body)
                if self.concurrency == 1:
                    return True
            elif tag == Msg.STOP:
                return False

    def _serve_jobs(self) -> None:
        while True:
            seq, payload = self.jobs.get()
            with self.threads_lock:
                self.pending.discard(seq)
                dropped = seq in self.dropped
                self.dropped.discard(seq)
            if dropped:
                self.channel.send(Msg.CANCELLED, seq)
            else:
                self.active.add(seq)
                token = _task_seq.set(seq)
                try:
                    outcome = self._run(seq, payload)
                except TaskInterrupted:  # raised by the runner itself: take it as a cancel
                    outcome = (Msg.CANCELLED, seq, b"")
                finally:
                    _task_seq.reset(token)
                    self.active.discard(seq)
                self.stdout.drain(seq)
                self.stderr.drain(seq)
                self.channel.send(*outcome)
                _drop_kept()
            with self.threads_lock:
                self.idle += 1


def _hide_token(token: str) -> None:
    """Keep ``token`` for nested work, out of the environment the task's children inherit."""
    for name, value in list(os.environ.items()):
        if token in value:
            del os.environ[name]
    from sperse._core.nested import set_worker_token  # a server's worker only: sperse is there

    set_worker_token(token)


def main(
    conn: Connection,
    runner_spec: str,
    cancel_seq: ctypes.c_int64,
    concurrency: int = 1,
    env: dict[str, str] | None = None,
    token: str = "",
    environ: dict[str, str] | None = None,
) -> None:
    """Entry point of a worker process (the ``target`` of its ``multiprocessing.Process``).
    ``environ``: the whole environment to start from (a forked worker's: its parent's at the
    spawn, not the forkserver's). ``env``: set in ``os.environ`` next (what the pool's owner
    gives its workers only); its ``PYTHONPATH`` goes first on ``sys.path`` too, as it would
    in a Python started with it.
    ``token``: kept apart from ``os.environ`` (see the module's docstring)."""
    with contextlib.suppress(OSError):  # a group of its own, before any task can start
        os.setpgid(0, 0)
    if environ is not None:
        os.environ.clear()
        os.environ.update(environ)
    if env:
        os.environ.update(env)
        paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.path[0:0] = [p for p in paths if p not in sys.path]
    if token:
        _hide_token(token)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(
        target=process_group.exit_when_parent_dies, name="parent-watchdog", daemon=True
    ).start()
    channel_fd = conn.fileno()
    os.set_blocking(channel_fd, True)
    try:
        runner = load_runner(runner_spec)
    except BaseException as exc:
        message = "".join(traceback.format_exception_only(exc)).strip()
        body = encode_text(message, traceback.format_exc())
        view = memoryview(frame(Msg.INIT_FAILED, 0, body))
        while view:
            view = view[os.write(channel_fd, view) :]
        return
    worker = _Worker(conn, runner, cancel_seq, max(1, concurrency))
    signal.signal(signal.SIGUSR1, worker.on_cancel_signal)
    sys.stdout = worker.stdout
    sys.stderr = worker.stderr
    worker.channel.send(Msg.READY, os.getpid())
    global _serving, _current
    _serving = True
    _current = worker
    worker.serve()
