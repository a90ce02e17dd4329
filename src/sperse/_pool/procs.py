"""The pool's worker processes as the shell sees them: start, signal, read, stop.

No policy here (:mod:`sperse._pool.policy` decides) and no event loop (:mod:`sperse._pool.
pool` watches the file descriptors): these functions do the system calls, and turn the
frames a worker sent (the format is in :mod:`sperse._pool.pool`) into policy events.

A worker leads its own process group (see :mod:`sperse._pool.worker`), and the processes its
tasks started are in it. Whatever ends a worker, its group is killed (``SIGKILL``) just
before the worker is reaped (:func:`reap`): its pid, and so the group's id, cannot have been
reused by then. A kill of a worker kills its group at once.

Workers start by ``spawn`` (a new interpreter, which imports what the worker needs: about
0.1 s of CPU), or by ``forkserver`` or ``forkserver-tasks`` (a fork of a process that has
imported it already: milliseconds; the objects' forkserver and the tasks',
:mod:`sperse._pool.forking`), which a server's pools ask for but that of a pip environment.
A forked worker gets the environment its parent has at the spawn, as a spawned one does: it is sent along (``environ``), not the forkserver's. Its
exit is reaped by the forkserver, which keeps the group's id from reuse only while a process
of the group lives; ``SIGKILL`` to a group whose every process is gone finds nothing, bar a
pid reused within milliseconds that also leads a group.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import json
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.context import ForkServerContext, SpawnContext
from multiprocessing.process import BaseProcess
from typing import Any, Literal

from sperse._pool import forking
from sperse._pool import worker as _worker_module
from sperse._pool.events import (
    Event,
    InitFailed,
    Interrupted,
    Malformed,
    Printed,
    Ready,
    Reported,
    Result,
    RunnerRaised,
    WorkerId,
)
from sperse._pool.pipe import HEADER, Msg
from sperse._pool.worker import decode_text, encode_text

__all__ = [
    "ESCALATION_WAIT",
    "Launch",
    "StartMethod",
    "WorkerProcess",
    "close",
    "configure_frame",
    "discard",
    "interrupt",
    "kill",
    "kill_now",
    "read_events",
    "reap",
    "reap_exited",
    "spawn",
    "stop",
]

_log = logging.getLogger("sperse._pool.pool")

StartMethod = Literal["spawn", "forkserver", "forkserver-tasks"]
_CONTEXTS: dict[str, SpawnContext | ForkServerContext] = {
    "spawn": multiprocessing.get_context("spawn"),
    "forkserver": forking.OBJECTS,
    "forkserver-tasks": forking.TASKS,
}
ESCALATION_WAIT = 1.0  # after SIGTERM, then after SIGKILL, while stopping a worker
_READ_SIZE = 1 << 16  # os.read allocates this much for every read
_LARGE_READ = 1 << 20
_STREAMS: dict[int, Literal["stdout", "stderr"]] = {1: "stdout", 2: "stderr"}


@dataclass(slots=True, eq=False)
class WorkerProcess:
    """One worker process and its end of the pipe (the policy's :class:`WorkerId` ``id``)."""

    id: WorkerId
    process: BaseProcess
    conn: Connection | None
    fd: int
    sentinel: int
    cancel_seq: ctypes.c_int64
    pid: int
    received: bytearray = field(default_factory=bytearray)
    unsent: collections.deque[memoryview] = field(default_factory=collections.deque)
    writing: bool = False  # a writer callback is registered for `fd`
    reading: bool = False  # a reader callback is registered for `fd`
    watched: bool = False  # its sentinel is registered with the loop
    torn: bool = False  # a frame to it was left half-written when the pool closed
    reaped: bool = False  # reap() has begun: its pid may be another process's soon

    # The methods below run on the pool's event loop only.

    def watch(
        self,
        loop: asyncio.AbstractEventLoop,
        on_exit: Callable[[WorkerProcess], None],
        on_readable: Callable[[WorkerProcess], None],
    ) -> None:
        if self.watched:
            return
        self.watched = True
        loop.add_reader(self.sentinel, on_exit, self)
        if self.conn is not None:
            self.reading = True
            loop.add_reader(self.fd, on_readable, self)

    def unwatch(self, loop: asyncio.AbstractEventLoop) -> None:
        # File descriptor numbers are reused: only ever unregister what is registered.
        if self.watched:
            self.watched = False
            loop.remove_reader(self.sentinel)
        if self.reading:
            self.reading = False
            loop.remove_reader(self.fd)
        if self.writing:
            self.writing = False
            loop.remove_writer(self.fd)

    def write(
        self,
        loop: asyncio.AbstractEventLoop,
        frames: list[bytes],
        on_error: Callable[[WorkerProcess], None],
    ) -> None:
        """Write ``frames`` now, or (the pipe is full) as the loop finds it writable."""
        if self.conn is None:
            return  # it is exiting; its sentinel will fail its tasks
        self.unsent.extend(memoryview(d) for d in frames if d)
        if not self.writing:
            self._flush(loop, on_error)

    def _flush(
        self, loop: asyncio.AbstractEventLoop, on_error: Callable[[WorkerProcess], None]
    ) -> None:
        unsent = self.unsent
        while unsent:
            try:
                n = os.writev(self.fd, list(unsent)[:64])
            except BlockingIOError:
                break
            except OSError:
                unsent.clear()  # the worker is gone; its sentinel will say so
                on_error(self)
                break
            while n:
                first = unsent[0]
                if n >= len(first):
                    n -= len(first)
                    unsent.popleft()
                else:
                    unsent[0] = first[n:]
                    n = 0
        if unsent and not self.writing and self.reading:
            self.writing = True
            loop.add_writer(self.fd, self._flush, loop, on_error)
        elif not unsent and self.writing:
            self.writing = False
            loop.remove_writer(self.fd)

    def drop_conn(self, loop: asyncio.AbstractEventLoop) -> None:
        """Stop reading and writing: the pipe has reached its end, or the worker exited."""
        if self.conn is None:
            return
        if self.reading:
            self.reading = False
            loop.remove_reader(self.fd)
        if self.writing:
            self.writing = False
            loop.remove_writer(self.fd)
        self.unsent.clear()
        self.conn.close()
        self.conn = None


@dataclass(frozen=True, slots=True)
class Launch:
    """How a pool's workers start: ``env`` set in each one's ``os.environ`` before its
    runner loads; ``token`` handed to it apart from its environment (see
    :mod:`sperse._pool.worker`); ``start_method`` (see the module's docstring)."""

    env: Mapping[str, str] = field(default_factory=dict)
    token: str = ""
    start_method: StartMethod = "spawn"


def spawn(
    worker: WorkerId, runner: str, concurrency: int, name: str, launch: Launch = Launch()
) -> WorkerProcess:
    """Start a worker process (it answers ``READY`` once its runner is loaded)."""
    ctx = _CONTEXTS[launch.start_method]
    environ = dict(os.environ) if launch.start_method != "spawn" else None
    env, token = launch.env, launch.token
    parent_conn, child_conn = ctx.Pipe(duplex=True)
    cancel_seq = ctx.RawValue(ctypes.c_int64, 0)
    process = ctx.Process(
        target=_worker_module.main,
        args=(child_conn, runner, cancel_seq, concurrency, dict(env), token, environ),
        name=_process_name(name),
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
    return WorkerProcess(
        id=worker,
        process=process,
        conn=parent_conn,
        fd=fd,
        sentinel=process.sentinel,
        cancel_seq=cancel_seq,
        pid=process.pid,
    )


def _process_name(pool_name: str) -> str:
    return f"{pool_name}-worker"  # multiprocessing's name of the process, in the worker


def configure_frame(concurrency: int, pool_name: str) -> list[bytes]:
    """A ``CONFIGURE``: serve with ``concurrency``, named as a worker of ``pool_name`` is."""
    body = encode_text(_process_name(pool_name))
    return [HEADER.pack(Msg.CONFIGURE, concurrency, len(body)), body]


def interrupt(w: WorkerProcess, seq: int) -> None:
    """Ask ``w`` to interrupt task ``seq`` (see "Cancel protocol" in the pool's docstring)."""
    w.cancel_seq.value = seq
    with contextlib.suppress(ProcessLookupError):  # it died; its sentinel will say so
        os.kill(w.pid, signal.SIGUSR1)


def _kill_group(w: WorkerProcess) -> None:
    """Kill the process group ``w`` leads (itself and what its tasks started), unless it
    is being reaped (then :func:`reap` does)."""
    if not w.reaped:
        with contextlib.suppress(ProcessLookupError, PermissionError):  # none, or not ours
            os.killpg(w.pid, signal.SIGKILL)


def kill(w: WorkerProcess) -> None:
    _kill_group(w)
    with contextlib.suppress(ValueError):  # closed: it has been reaped already
        w.process.kill()  # (still starting: not in its group yet)


def reap(w: WorkerProcess, timeout: float | None = None) -> None:
    """``w`` has exited (or is being killed): kill what is left of its group, then reap it
    (wait at most ``timeout``)."""
    _kill_group(w)
    w.reaped = True
    with contextlib.suppress(ValueError):  # closed: reaped already
        w.process.join(timeout)


def reap_exited(w: WorkerProcess) -> int | None:
    """``w``'s sentinel fired: reap it (see :func:`reap`), close it, return its exit code."""
    reap(w, ESCALATION_WAIT)
    if w.process.exitcode is None:  # sentinel fired but still running: should not happen
        w.process.kill()
        w.process.join()
    code = w.process.exitcode
    close(w)
    return code


def close(w: WorkerProcess) -> None:
    """Close ``w``'s process once reaped: its file descriptors now, not at garbage
    collection. ``multiprocessing`` polls every child it started whenever another thread
    starts a process; a poll that takes the exit status from under our ``join`` sets the
    exit code a moment later, so this waits for it (bounded), then leaves the rest to the
    garbage collector."""
    deadline = time.monotonic() + ESCALATION_WAIT
    while True:
        try:
            w.process.close()
            return
        except ValueError:  # "still running" to multiprocessing: its exit code is not set yet
            if time.monotonic() > deadline:
                return
            time.sleep(0.001)


def discard(workers: list[WorkerProcess]) -> None:
    """Kill and reap workers just started (the pool could not start them all)."""
    for w in workers:
        kill(w)
        reap(w)
        if w.conn is not None:
            w.conn.close()


def kill_now(workers: list[WorkerProcess]) -> None:
    """Kill workers without the loop's help (it is stuck): a last resort."""
    for w in workers:
        kill(w)
        reap(w, ESCALATION_WAIT)


def read_events(w: WorkerProcess, *, to_end: bool = False) -> tuple[list[Event], bool]:
    """Read what ``w`` sent (all of it when ``to_end``): its complete frames as events, and
    whether the pipe reached its end (the worker is exiting)."""
    received = w.received
    eof = False
    while w.conn is not None:
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
            eof = True
            break
        received += chunk
        if not to_end and len(chunk) < want:
            break
    events: list[Event] = []
    start = 0
    size = len(received)
    while size - start >= HEADER.size:
        tag, seq, length = HEADER.unpack_from(received, start)
        end = start + HEADER.size + length
        if end > size:
            break
        event = _event(w.id, tag, seq, bytes(received[start + HEADER.size : end]))
        if event is not None:
            events.append(event)
        start = end
    if start:
        del received[:start]
    return events, eof


def _reported(worker: WorkerId, body: bytes) -> Event:
    """A ``REPORT``'s JSON: ``{"calls": N, "output": [[task id, stream, text], ...]}``, the
    stream 1 or 2 as in ``OUTPUT``."""
    try:
        report = json.loads(body)
        calls = int(report["calls"])
        output = tuple(
            (str(task), _STREAMS[stream], str(text)) for task, stream, text in report["output"]
        )
    except (ValueError, KeyError, TypeError):
        return Malformed(worker)
    return Reported(worker, calls, output)


def _event(worker: WorkerId, tag: int, seq: int, body: bytes) -> Event | None:
    if tag == Msg.DONE:  # the most frequent first
        return Result(worker, seq, body)
    if tag == Msg.READY:
        return Ready(worker)
    if tag == Msg.INIT_FAILED:
        text, tb = decode_text(body, 2)
        return InitFailed(worker, text, tb)
    if tag == Msg.OUTPUT:
        if not body:
            return None
        stream = _STREAMS.get(body[0])
        if stream is None:
            return Malformed(worker)
        (text,) = decode_text(body[1:], 1)
        return Printed(worker, seq, stream, text)
    if tag == Msg.CANCELLED:
        return Interrupted(worker, seq)
    if tag == Msg.REPORT:
        return _reported(worker, body)
    if tag == Msg.RUNNER_ERROR:
        message, tb = decode_text(body, 2)
        return RunnerRaised(worker, seq, message, tb)
    return Malformed(worker)


def stop(
    workers: list[tuple[WorkerProcess, bool, int | None]],
    timeout: float,
    cancel_grace: float,
    name: str,
) -> None:
    """Stop ``(worker, ready, seq of the task it holds first)``s: STOP (busy ones are
    interrupted first), SIGTERM, SIGKILL. Blocks until each has exited and been reaped."""
    now = time.monotonic()
    deadlines: dict[WorkerProcess, float] = {}
    for w, ready, head_seq in workers:
        try:
            exited = bool(wait([w.process.sentinel], 0))  # (is_alive() would reap it)
        except ValueError:  # closed: reaped already
            continue
        if exited:
            reap(w)
            close(w)
            continue
        if not ready:
            deadlines[w] = now  # still starting: nothing to lose, terminate it now
            continue
        busy = head_seq is not None
        if head_seq is not None:
            interrupt(w, head_seq)
        if w.conn is not None and not w.torn:
            # Never blocks: a worker whose pipe is full is stopped by the escalation.
            with contextlib.suppress(OSError):
                os.write(w.fd, HEADER.pack(Msg.STOP, 0, 0))
        deadlines[w] = now + (min(timeout, cancel_grace) if busy else timeout)
    escalation: dict[WorkerProcess, int] = {w: 0 for w, _, _ in workers}
    while deadlines:
        by_sentinel: dict[Any, WorkerProcess] = {w.sentinel: w for w in deadlines}
        timeout_left = max(0.0, min(deadlines.values()) - time.monotonic())
        for sentinel in wait(list(by_sentinel), timeout_left):
            w = by_sentinel[sentinel]
            reap(w)
            close(w)
            del deadlines[w]
        now = time.monotonic()
        for w, deadline in list(deadlines.items()):
            if deadline > now:
                continue
            escalation[w] += 1
            if escalation[w] == 1:
                w.process.terminate()
                deadlines[w] = now + ESCALATION_WAIT
            elif escalation[w] == 2:
                w.process.kill()
                deadlines[w] = now + ESCALATION_WAIT
            else:
                _log.error("pool %r: worker %d survives SIGKILL", name, w.pid)
                del deadlines[w]
    for w, _, _ in workers:
        if w.conn is not None:
            w.conn.close()
            w.conn = None
