"""How a job shows its progress: a live bar in a terminal, a plain line now and then elsewhere.

Both run on the user's thread, inside ``Job.wait``; the job's own thread only counts.
``Rate`` is a pure sliding window over (time, units done) samples, with the clock passed in.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Final

from sperse.jobs._results import JobProgress

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

__all__ = ["Bar", "Display", "PlainLines", "Rate", "is_terminal"]

RATE_WINDOW: Final = 10.0  # seconds of history behind the rate (and the ETA)


class Rate:
    """Units per second over the last ``window`` seconds (over all time before that)."""

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self._window = window
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, done: int) -> float:
        samples = self._samples
        samples.append((now, done))
        while len(samples) > 2 and now - samples[1][0] >= self._window:
            samples.popleft()
        first_time, first_done = samples[0]
        if now - first_time <= 0:
            return 0.0
        return (done - first_done) / (now - first_time)


def is_terminal(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Display:
    """Something that shows progress snapshots."""

    def update(self, progress: JobProgress) -> None: ...

    def close(self, progress: JobProgress) -> None: ...


class PlainLines(Display):
    """A line to ``stream`` every ``interval`` seconds, and one at the end."""

    def __init__(
        self, stream: IO[str], interval: float, label: str, clock: Callable[[], float]
    ) -> None:
        self._stream = stream
        self._interval = interval
        self._label = label
        self._clock = clock
        self._next = clock() + interval

    def update(self, progress: JobProgress) -> None:
        now = self._clock()
        if now >= self._next:
            self._next = now + self._interval
            self._write(progress)

    def close(self, progress: JobProgress) -> None:
        self._write(progress)

    def _write(self, progress: JobProgress) -> None:
        print(f"{self._label}: {progress.line()}", file=self._stream, flush=True)


class Bar(Display):
    """A rich progress bar: units done of the total, failed, rate and ETA."""

    def __init__(self, stream: IO[str], label: str) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress: Progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[red]{task.fields[failed]} failed"),
            TextColumn("{task.fields[rate]} units/s"),
            TimeElapsedColumn(),
            TextColumn("ETA {task.fields[eta]}"),
            console=Console(file=stream, force_terminal=True),
        )
        self._task: TaskID = self._progress.add_task(
            label, total=None, failed=0, rate="0.0", eta="?"
        )
        self._progress.start()

    def update(self, progress: JobProgress) -> None:
        eta = progress.eta
        self._progress.update(
            self._task,
            total=progress.total,
            completed=progress.done,
            failed=progress.failed,
            rate=f"{progress.rate:.1f}",
            eta="?" if eta is None else f"{eta:.0f} s",
        )

    def close(self, progress: JobProgress) -> None:
        self.update(progress)
        self._progress.refresh()
        self._progress.stop()
