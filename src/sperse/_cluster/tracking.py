"""Progress of many items' work: the counter, the rich bar, and the ``Tracked`` Pending.

A progress bar (rich) is shown only while someone waits (``result()``, iterating a map,
``as_completed``), only when ``sys.stdout`` is a terminal, and only once the work has taken
more than a second (or at once with ``progress=True``); ``progress=False`` never shows it.
Nothing is printed otherwise. The counter is added to on whatever thread learns of progress,
which wakes the cluster: a wait redraws the bar as the count moves, without polling.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar

from sperse._cluster.cluster import Cluster
from sperse._cluster.pending import Pending

if TYPE_CHECKING:
    from rich.progress import Progress

__all__ = [
    "PROGRESS_DELAY",
    "Tracked",
    "Tracker",
    "count_settled",
    "remaining",
    "wait_with_progress",
]

T = TypeVar("T")

PROGRESS_DELAY: Final = 1.0  # seconds of work before a bar appears


class Tracker:
    """How much of a job is done, counted on whatever thread learns it. ``wake``: the
    cluster's, called after each count (``wait_with_progress`` waits for the count to move)."""

    __slots__ = ("completed", "description", "lock", "show", "started", "total", "wake")

    def __init__(
        self,
        description: str,
        total: int,
        show: bool | None,
        started: float,
        *,
        wake: Callable[[], None],
    ) -> None:
        self.description = description
        self.total = total
        self.completed = 0
        self.show = show
        self.started = started
        self.lock = threading.Lock()
        self.wake = wake

    def add(self, amount: int) -> None:
        with self.lock:
            self.completed += amount
        self.wake()


def count_settled(tracker: Tracker, amount: int, _: object) -> None:
    tracker.add(amount)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class _Bar:
    """A rich progress bar on ``stream`` (imported only when one is shown)."""

    def __init__(self, stream: Any, tracker: Tracker) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress: Progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(file=stream, force_terminal=True),
        )
        self._task = self._progress.add_task(tracker.description, total=tracker.total)
        self._progress.start()

    def update(self, completed: int) -> None:
        self._progress.update(self._task, completed=completed)

    def close(self, completed: int) -> None:
        self._progress.update(self._task, completed=completed, refresh=True)
        self._progress.stop()


def wait_with_progress(
    cluster: Cluster,
    finished: Callable[[], bool],
    tracker: Tracker,
    timeout: float | None,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """Run the user's queue until ``finished()``, with a bar if wanted; False on timeout."""
    stream = sys.stdout
    wanted = tracker.show is not False and _is_terminal(stream)
    delay = 0.0 if tracker.show else PROGRESS_DELAY
    deadline = None if timeout is None else clock() + timeout
    bar: _Bar | None = None
    try:
        while not finished():
            now = clock()
            if wanted and bar is None and now - tracker.started >= delay:
                bar = _Bar(stream, tracker)
            if bar is not None:
                bar.update(tracker.completed)
            remaining = None if deadline is None else deadline - now
            if remaining is not None and remaining <= 0:
                cluster.drain()  # what is queued already may finish it, as result(0) allows
                return finished()
            if wanted and bar is None:  # wake up when the bar is due
                due = tracker.started + delay - now
                remaining = due if remaining is None else min(remaining, due)
            seen = tracker.completed

            def changed(seen: int = seen) -> bool:
                return finished() or tracker.completed != seen

            cluster.run_until(changed, remaining)
        return True
    finally:
        if bar is not None:
            bar.close(tracker.completed)


def remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


class Tracked(Pending[T]):
    """A Pending of many items' work (``map``, ``reduce``, ``mapreduce``): ``progress`` says
    how many items are done, and wherever the user waits on it (``result()``, iterating a
    map, ``as_completed``) a progress bar shows in a terminal (see the module doc)."""

    __slots__ = ("_tracker",)

    def __init__(self, cluster: Cluster, label: str, tracker: Tracker) -> None:
        super().__init__(cluster, label=label)
        self._tracker = tracker

    @property
    def progress(self) -> tuple[int, int]:
        """``(items done, items in all)``, now."""
        return self._tracker.completed, self._tracker.total

    def _wait(self, finished: Callable[[], bool], timeout: float | None) -> None:
        """Wait until ``finished()`` with the bar; ``TimeoutError`` after ``timeout``."""
        if not finished() and not wait_with_progress(
            self._cluster, finished, self._tracker, timeout
        ):
            raise TimeoutError(
                f"{self!r} did not finish within {timeout} s; it is still running "
                "(call .cancel() to stop it, or wait longer)"
            )

    def result(self, timeout: float | None = None) -> T:
        deadline = None if timeout is None else time.monotonic() + timeout
        self._wait(self.done, timeout)
        return super().result(remaining(deadline))
