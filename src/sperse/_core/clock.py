"""Time, as the client side reads it: ``now`` and deadlines (``call_later``).

``SystemClock`` is the real one: ``time.monotonic``, and one thread that calls each due
function (data only, as a backend's thread does). ``MockClock`` is for tests, after trio's
``MockClock``: its time moves only when the test says (``advance``), and the functions that
fall due run then, in deadline order, on the test's thread. A test of a deadline then
needs no remote ``sleep`` to open a window, and cannot be late on a loaded machine.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["Clock", "MockClock", "SystemClock"]


class Clock(Protocol):
    def now(self) -> float:
        """Seconds, from an arbitrary start; never goes back."""
        ...

    def call_later(self, delay: float, fn: Callable[[], object]) -> None:
        """Call ``fn`` once ``delay`` seconds have passed (unless the clock is closed)."""
        ...

    def close(self) -> None:
        """Forget every deadline; later ones are ignored."""
        ...


class _Deadlines:
    """A heap of (deadline, order, fn): what falls due first comes out first."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], object]]] = []
        self._order = itertools.count()

    def push(self, at: float, fn: Callable[[], object]) -> None:
        heapq.heappush(self._heap, (at, next(self._order), fn))

    def pop_due(self, now: float) -> Callable[[], object] | None:
        if self._heap and self._heap[0][0] <= now:
            return heapq.heappop(self._heap)[2]
        return None

    def next_at(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def clear(self) -> None:
        self._heap.clear()


class SystemClock:
    """``time.monotonic``; one thread (started on first use) serves every deadline."""

    def __init__(self) -> None:
        self._deadlines = _Deadlines()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def now(self) -> float:
        return time.monotonic()

    def call_later(self, delay: float, fn: Callable[[], object]) -> None:
        with self._cond:
            if self._closed:
                return
            self._deadlines.push(time.monotonic() + delay, fn)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="sperse-timers", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._deadlines.clear()
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    now = time.monotonic()
                    fn = self._deadlines.pop_due(now)
                    if fn is not None:
                        break
                    at = self._deadlines.next_at()
                    self._cond.wait(None if at is None else at - now)
            fn()


class MockClock:
    """A clock that moves only on ``advance`` (see the module docstring)."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._deadlines = _Deadlines()
        self._lock = threading.Lock()
        self._closed = False

    def now(self) -> float:
        return self._now

    def call_later(self, delay: float, fn: Callable[[], object]) -> None:
        with self._lock:
            if not self._closed:
                self._deadlines.push(self._now + delay, fn)

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``: what falls due runs now, here, in order (each at
        its own deadline: ``now()`` reads that deadline while it runs)."""
        if seconds < 0:
            raise ValueError(f"a clock does not go back: advance({seconds})")
        target = self._now + seconds
        while True:
            with self._lock:
                at = self._deadlines.next_at()
                if at is None or at > target:
                    break
                self._now = max(self._now, at)
                fn = self._deadlines.pop_due(at)
            if fn is not None:
                fn()
        self._now = target

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._deadlines.clear()
