"""The worker process of :class:`sperse._pool.pool.WorkerPool`.

This module runs in every worker and is imported at each worker start, so it imports the
standard library only: whatever it imports, every spawn pays for.

A worker serves one task at a time from its pipe (the message format is documented in
:mod:`sperse._pool.pool`, and the tags are :class:`Msg`). While a task runs, Python-level writes
to ``sys.stdout``/``sys.stderr`` are sent back line by line, tagged with the task's sequence
number.

Cancellation: the parent stores the sequence number of the task to cancel in a shared
integer and sends ``SIGUSR1``. The handler raises :class:`TaskInterrupted` in the main thread
only when that number is the task running now, so a signal that arrives late never cancels
the next task. While the main thread is inside a pipe write, the interrupt is deferred until
the write is complete: an exception in the middle of a message would corrupt the pipe.

The worker ignores ``SIGINT`` (Ctrl-C in the parent's terminal is for the parent to handle),
and exits when its parent dies: an idle worker sees its pipe close, and a busy one is stopped
by a watchdog thread waiting on the parent's sentinel.
"""

from __future__ import annotations

import ctypes
import enum
import importlib
import io
import multiprocessing
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from types import FrameType, TracebackType
from typing import Any, TextIO

__all__ = ["Msg", "Runner", "TaskInterrupted", "load_runner", "main"]

Runner = Callable[[bytes], bytes]
"""Turns a payload into result bytes, in the worker. It encodes user errors in its result."""

_STDOUT = 1
_STDERR = 2
_LINE_BREAKS = ("\n", "\r")
_MAX_BUFFERED = 8192


class Msg(enum.IntEnum):
    """The tag of every message on a worker's pipe; the first item of each tuple."""

    # parent -> worker
    RUN = 1
    STOP = 2
    # worker -> parent
    READY = 10
    INIT_FAILED = 11
    OUTPUT = 12
    DONE = 13
    CANCELLED = 14
    RUNNER_ERROR = 15


class TaskInterrupted(BaseException):
    """Raised in the worker's main thread to stop a task the parent cancelled.

    A ``BaseException`` so that ``except Exception`` in user code lets it through.
    """


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


class _Channel:
    """The worker's end of the pipe: sends are serialized and shielded from interrupts."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._lock = threading.Lock()
        self._main = threading.main_thread().ident
        # Touched by the main thread only (the signal handler runs there too).
        self.shield_depth = 0
        self.deferred = False

    def __enter__(self) -> None:
        if threading.get_ident() == self._main:
            self.shield_depth += 1

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if threading.get_ident() == self._main:
            self.shield_depth -= 1
            if self.shield_depth == 0 and self.deferred:
                self.deferred = False
                raise TaskInterrupted

    def send(self, message: tuple[Any, ...]) -> None:
        with self, self._lock:
            self.conn.send(message)


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
        self._buffer: list[str] = []
        self._buffered = 0

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        seq = self._worker.running
        if not seq:
            if self._original is not None:
                self._original.write(text)
            return len(text)
        with self._worker.channel, self._lock:
            self._buffer.append(text)
            self._buffered += len(text)
            if self._buffered > _MAX_BUFFERED or any(b in text for b in _LINE_BREAKS):
                self._send(seq)
        return len(text)

    def flush(self) -> None:
        seq = self._worker.running
        if seq:
            with self._worker.channel, self._lock:
                self._send(seq)

    def drain(self, seq: int) -> None:
        """Send what is left of task ``seq``'s text; called once the task has ended."""
        with self._lock:
            self._send(seq)

    def _send(self, seq: int) -> None:
        if self._buffer:
            text = "".join(self._buffer)
            self._buffer.clear()
            self._buffered = 0
            self._worker.channel.send((Msg.OUTPUT.value, seq, self._stream, text))


class _Worker:
    def __init__(self, conn: Connection, runner: Runner, cancel_seq: ctypes.c_int64) -> None:
        self.channel = _Channel(conn)
        self.runner = runner
        self.cancel_seq = cancel_seq
        self.running = 0  # sequence number of the task running now, 0 when idle
        self.stdout = _TaskStream(self, _STDOUT, sys.stdout)
        self.stderr = _TaskStream(self, _STDERR, sys.stderr)

    def on_cancel_signal(self, signum: int, frame: FrameType | None) -> None:
        seq = self.running
        if not seq or self.cancel_seq.value != seq:
            return  # a late signal for a task that has ended
        if self.channel.shield_depth:
            self.channel.deferred = True
        else:
            self.channel.deferred = False
            raise TaskInterrupted

    def serve(self) -> None:
        conn = self.channel.conn
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                return  # the parent closed the pipe or died
            if message[0] == Msg.STOP:
                return
            _, seq, payload = message
            self.channel.send(self.run_task(seq, payload))

    def run_task(self, seq: int, payload: bytes) -> tuple[Any, ...]:
        outcome: tuple[Any, ...]
        self.channel.deferred = False
        try:
            try:
                self.running = seq
                if self.cancel_seq.value == seq:  # cancelled before it arrived here
                    raise TaskInterrupted
                result = self.runner(payload)
                if type(result) is not bytes:
                    raise TypeError(f"the runner returned {type(result).__name__}, not bytes")
                outcome = (Msg.DONE.value, seq, result)
            finally:
                self.running = 0
        except TaskInterrupted:
            outcome = (Msg.CANCELLED.value, seq)
        except BaseException as exc:  # a bug in the runner; the worker keeps serving
            message = "".join(traceback.format_exception_only(exc)).strip()
            outcome = (Msg.RUNNER_ERROR.value, seq, message, traceback.format_exc())
        # No interrupt can arrive from here on: `running` is 0.
        self.stdout.drain(seq)
        self.stderr.drain(seq)
        return outcome


def _exit_when_parent_dies() -> None:
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    parent.join()
    os._exit(1)


def main(conn: Connection, runner_spec: str, cancel_seq: ctypes.c_int64) -> None:
    """Entry point of a worker process (the ``target`` of its ``multiprocessing.Process``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_when_parent_dies, name="parent-watchdog", daemon=True).start()
    try:
        runner = load_runner(runner_spec)
    except BaseException as exc:
        message = "".join(traceback.format_exception_only(exc)).strip()
        conn.send((Msg.INIT_FAILED.value, message, traceback.format_exc()))
        return
    worker = _Worker(conn, runner, cancel_seq)
    signal.signal(signal.SIGUSR1, worker.on_cancel_signal)
    sys.stdout = worker.stdout
    sys.stderr = worker.stderr
    conn.send((Msg.READY.value, os.getpid()))
    worker.serve()
