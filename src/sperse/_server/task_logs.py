"""What tasks printed, kept on their server for a while after they end (``sperse logs``).

A task's log is found by its key, ``SESSION/TASK``: the session id is a random secret of the
client that sent the task, so the key is a capability (whoever has it may read the log, as
with a remote object's id), and no client can list or guess another's.

Bounds, all checked where text arrives: ``per_task`` characters a task keeps (the last ones:
the end of a log says most), ``total`` characters for all (the logs of tasks that ended
longest ago go first), ``keep`` seconds after a task ended. Pure: the clock is given.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from sperse._core.chunks import last_characters

__all__ = ["TaskLog", "TaskLogs"]


@dataclass(slots=True)
class TaskLog:
    """One task's output: ``(stream, text)`` in the order printed; ``ended`` None: running."""

    chunks: list[tuple[str, str]] = field(default_factory=list)
    size: int = 0
    truncated: bool = False
    ended: float | None = None


class TaskLogs:
    def __init__(
        self,
        *,
        per_task: int = 1 << 20,
        total: int = 64 << 20,
        keep: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._per_task = per_task
        self._total = total
        self._keep = keep
        self._clock = clock
        self._logs: OrderedDict[str, TaskLog] = OrderedDict()  # oldest first
        self._ended: OrderedDict[str, float] = OrderedDict()  # in the order their tasks ended
        self._size = 0

    def __len__(self) -> int:
        return len(self._logs)

    @property
    def size(self) -> int:
        return self._size

    def add(self, key: str, stream: str, text: str) -> None:
        log = self._logs.get(key)
        if log is None:
            log = self._logs[key] = TaskLog()
        log.chunks.append((stream, text))
        log.size += len(text)
        self._size += len(text)
        if log.size > self._per_task:
            self._trim(log)
        if self._size > self._total:
            self._shed(keep=key)

    def ended(self, key: str) -> None:
        log = self._logs.get(key)
        if log is not None and log.ended is None:
            log.ended = self._clock()
            self._ended[key] = log.ended
        if self._ended:  # (most tasks print nothing: nothing was kept, nothing expires)
            self.expire()

    def get(self, key: str) -> TaskLog | None:
        self.expire()
        return self._logs.get(key)

    def expire(self) -> None:
        """Forget the logs of tasks that ended more than ``keep`` seconds ago (from the
        oldest on: the cost is the number forgotten)."""
        cutoff = self._clock() - self._keep
        while self._ended:
            key, when = next(iter(self._ended.items()))
            if when >= cutoff:
                return
            self._drop(key)

    def _trim(self, log: TaskLog) -> None:
        """Keep the last ``per_task`` characters of ``log``."""
        kept = last_characters(log.chunks, self._per_task)
        size = sum(len(t) for _, t in kept)
        self._size -= log.size - size
        log.chunks, log.size, log.truncated = kept, size, True

    def _shed(self, keep: str) -> None:
        """Forget whole logs, those of tasks that ended first, then the oldest running ones,
        until the total fits (never the one written now)."""
        while self._size > self._total and self._ended:
            self._drop(next(iter(self._ended)))
        for key in list(self._logs):
            if self._size <= self._total:
                return
            if key != keep:
                self._drop(key)

    def _drop(self, key: str) -> None:
        log = self._logs.pop(key)
        self._ended.pop(key, None)
        self._size -= log.size
