"""Events for the pool's owner, delivered in order on the pool's loop (see
:mod:`sperse._pool.pool`): callbacks never run while the pool's lock is held, so they may
call the pool again."""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable

from sperse._core.events import BackendEvent
from sperse._pool.events import Reported, WorkerExited

__all__ = ["Outbox"]

_log = logging.getLogger("sperse._pool.pool")


class Outbox:
    """The events for the owner, delivered on the loop in order, never under ``lock``."""

    def __init__(
        self,
        name: str,
        lock: threading.Lock,
        on_event: Callable[[BackendEvent], None],
        on_delivered: Callable[[], None] | None,
        on_worker_exit: Callable[[int, str], None] | None,
        on_report: Callable[[Reported], None] | None = None,
    ) -> None:
        self.name = name  # the pool's, in its log lines
        self._lock = lock
        self._on_event = on_event
        self._on_delivered = on_delivered
        self._on_worker_exit = on_worker_exit
        self._on_report = on_report
        self._events: collections.deque[BackendEvent | WorkerExited | Reported] = (
            collections.deque()
        )

    def put(self, event: BackendEvent | WorkerExited | Reported) -> None:
        """With the lock held."""
        if isinstance(event, WorkerExited):
            if self._on_worker_exit is not None:
                self._events.append(event)
        elif not isinstance(event, Reported) or self._on_report is not None:
            self._events.append(event)

    def deliver(self) -> None:
        delivered = False
        while True:
            with self._lock:
                if not self._events:
                    break
                events = list(self._events)
                self._events.clear()
            delivered = True
            for event in events:
                try:
                    if isinstance(event, WorkerExited):
                        if self._on_worker_exit is not None:
                            self._on_worker_exit(event.pid, event.how)
                    elif isinstance(event, Reported):
                        if self._on_report is not None:
                            self._on_report(event)
                    else:
                        self._on_event(event)
                except Exception:
                    _log.exception("pool %r: on_event raised for %r", self.name, event)
        if delivered and self._on_delivered is not None:
            try:
                self._on_delivered()
            except Exception:
                _log.exception("pool %r: on_events_delivered raised", self.name)
