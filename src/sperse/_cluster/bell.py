"""``Bell``: threads sleep until something they wait for may have changed, without polling.

A sleeper registers, checks its condition a last time, then sleeps until the bell rings (or
its timeout). A ring releases every sleeper registered at that moment, so a ring between
the last check and the sleep is not lost. A sleeper that asked for it (``every_event``) is
also released by ``ring_watchers``, which the others sleep through: a change that cannot
turn their condition true (a task started) does not wake a thread that waits for a value.

Invariants:

- The lock is reentrant and every sleeper's ring is safe on the sleeping thread itself: a
  signal handler (Ctrl-C at ``%wait``) runs on the main thread, at any point, and may ring.
- The main thread does not sleep on a lock. CPython runs a signal's Python handler only
  once the thread is back in Python code, and a signal that arrives after the thread let go
  of the GIL but before it blocked on the lock does not interrupt the lock's wait: Ctrl-C
  would then go unnoticed until the next ring. It sleeps in ``poll`` on a pipe that is
  the signal wakeup fd for that time (``signal.set_wakeup_fd``, as asyncio and trio do):
  a signal at any moment makes it readable. Signal numbers written there are passed on to
  the wakeup fd that was set before (an asyncio loop's), which is set again afterwards.
  The pipe is the process's, open for its life; a forked child makes its own.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
from collections.abc import Callable
from typing import Protocol

__all__ = ["Bell"]

_RING = b"\0"  # never a signal number: the wakeup fd gets those


class _Sleeper(Protocol):
    def ring(self) -> None: ...

    def sleep(self, timeout: float | None) -> None: ...


class Bell:
    """Sleep until rung: ``sleep(ready, timeout)`` on any thread, ``ring()`` from any."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._sleepers: list[tuple[_Sleeper, bool]] = []  # (sleeper, every_event)

    def ring(self) -> None:
        """Wake every thread asleep on this bell now."""
        with self._lock:
            # Swapped, not iterated in place: a signal handler may ring again meanwhile.
            sleepers, self._sleepers = self._sleepers, []
        for sleeper, _ in sleepers:
            sleeper.ring()

    def ring_watchers(self) -> None:
        """Wake the threads asleep with ``every_event`` only."""
        with self._lock:
            if not any(every for _, every in self._sleepers):
                return
            woken = [s for s, every in self._sleepers if every]
            self._sleepers = [entry for entry in self._sleepers if not entry[1]]
        for sleeper in woken:
            sleeper.ring()

    def sleep(
        self, ready: Callable[[], bool], timeout: float | None, *, every_event: bool = True
    ) -> None:
        """Sleep until rung or ``timeout`` seconds, unless ``ready()`` (checked once this
        sleeper is registered, so a ring from then on is not missed; outside the lock).
        ``every_event``: ``ring_watchers`` wakes it too."""
        entry = (_new_sleeper(), every_event)
        with self._lock:
            self._sleepers.append(entry)
        try:
            if not ready():
                entry[0].sleep(timeout)
        finally:
            with self._lock:
                if entry in self._sleepers:  # (else rung: it is gone then)
                    self._sleepers.remove(entry)


def _new_sleeper() -> _Sleeper:
    if _POLL and threading.current_thread() is threading.main_thread():
        return _main_pipe()
    return _LockSleeper()


_POLL = os.name == "posix" and hasattr(select, "poll")
_MAX_POLL_MS = 2**31 - 1  # poll's timeout is a C int of milliseconds
_READ = 4096


class _LockSleeper:
    """Sleeps on a lock that a ring releases (once: a bell forgets a sleeper it rang)."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()

    def ring(self) -> None:
        self._lock.release()

    def sleep(self, timeout: float | None) -> None:
        if timeout is None:
            self._lock.acquire()
        else:
            self._lock.acquire(timeout=min(max(timeout, 0.0), threading.TIMEOUT_MAX))


class _WakeupPipe:
    """The main thread's sleeper: it sleeps in ``poll`` on a pipe that a ring and a signal
    write to. One per process, open for its whole life: a wakeup fd left set by a sleep cut
    short (an exception at the wrong instant) must never name a closed, or reused, fd."""

    __slots__ = ("_poll", "_read", "_write")

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)  # set_wakeup_fd requires it
        self._poll = select.poll()  # made once: a sleep costs a poll, not a new object
        self._poll.register(self._read, select.POLLIN)

    def ring(self) -> None:
        try:  # (try, not contextlib.suppress: this runs at every event)
            os.write(self._write, _RING)
        except BlockingIOError:  # full: it is readable already
            return

    def sleep(self, timeout: float | None) -> None:
        try:
            previous = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        except ValueError:  # not the main interpreter's main thread after all
            previous = None
        try:
            # Interrupted by a signal, poll runs its handler: one that raises (Ctrl-C's
            # KeyboardInterrupt) ends the sleep; after another, the number the signal wrote
            # to the pipe ends it.
            self._poll.poll(
                None if timeout is None else min(max(timeout, 0.0) * 1000, _MAX_POLL_MS)
            )
        finally:
            numbers = self._empty()  # a ring left here would only end the next sleep early
            if previous is not None and previous != self._write:
                self._restore(previous, numbers)
            elif previous is not None:
                signal.set_wakeup_fd(-1)

    def _empty(self) -> bytes:
        """Read what the pipe holds; the signal numbers among it."""
        read = b""
        try:
            while True:
                chunk = os.read(self._read, _READ)
                read += chunk
                if len(chunk) < _READ:  # all it held (no second read, which would raise)
                    break
        except BlockingIOError:
            pass
        return read.replace(_RING, b"")

    @staticmethod
    def _restore(previous: int, numbers: bytes) -> None:
        """Set the wakeup fd set before the sleep again (an asyncio loop's, say), and pass
        it the signal numbers that came meanwhile."""
        try:
            signal.set_wakeup_fd(previous)
        except (ValueError, OSError):  # closed by its owner meanwhile
            signal.set_wakeup_fd(-1)
            return
        if numbers and previous != -1:
            with contextlib.suppress(OSError):
                os.write(previous, numbers)


_pipe: _WakeupPipe | None = None  # made (and used) by the main thread only


def _main_pipe() -> _WakeupPipe:
    global _pipe
    if _pipe is None:
        _pipe = _WakeupPipe()
    return _pipe


def _forget_pipe_in_child() -> None:
    """A child forked (by user code, from any thread) has a pipe of its own if it sleeps,
    and no wakeup fd that writes to its parent's."""
    global _pipe
    pipe, _pipe = _pipe, None
    if pipe is not None:
        with contextlib.suppress(ValueError):
            previous = signal.set_wakeup_fd(-1)
            if previous != pipe._write:
                signal.set_wakeup_fd(previous)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pipe_in_child)
