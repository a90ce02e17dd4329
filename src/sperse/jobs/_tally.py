"""What a job has done so far: its counters, its results and, at the end, its summary.

Written by the job's thread, read by any thread (``Job.progress()``, ``as_completed()``,
``wait()``), always under ``lock``. ``finished`` is set once, with the summary.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from types import MappingProxyType
from typing import Final

from sperse.jobs._progress import Rate
from sperse.jobs._results import JobProgress, JobSummary, UnitResult

__all__ = ["FAILURES_KEPT", "RESULTS_KEPT", "JobTally"]

RESULTS_KEPT: Final = 100_000  # unread results for as_completed(); older ones are dropped
FAILURES_KEPT: Final = 1000  # failures kept in the summary (all are in _failed.jsonl)


class JobTally:
    """The counters of one job (``results``: keep each result for a reader)."""

    def __init__(self, *, results: bool = True) -> None:
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)  # readers of results wait here
        self.finished = threading.Event()
        self.total: int | None = None
        self.seen = 0
        self.succeeded = 0
        self.failed = 0
        self.skipped = 0
        self.running = 0
        self.stats = {"batches": 0, "module_sends": 0, "retried": 0, "replaced_clusters": 0}
        self.summary: JobSummary | None = None
        self._rate = Rate()
        self._results: deque[UnitResult] = deque(maxlen=RESULTS_KEPT if results else 0)
        self._failures: list[UnitResult] = []

    def progress(self) -> JobProgress:
        """How far the job is, now."""
        now = time.monotonic()
        with self.lock:
            rate = self._rate.add(now, self.succeeded + self.failed)
            return JobProgress(
                total=self.total,
                succeeded=self.succeeded,
                failed=self.failed,
                skipped=self.skipped,
                running=self.running,
                elapsed=now - self.started,
                rate=rate,
                finished=self.finished.is_set(),
            )

    def add_result(self, result: UnitResult) -> None:
        with self.lock:
            if result.ok:
                self.succeeded += 1
            else:
                self.failed += 1
                if len(self._failures) < FAILURES_KEPT:
                    self._failures.append(result)
            self._results.append(result)
            self.changed.notify_all()

    def next_result(self, deadline: float | None) -> UnitResult | None:
        """The oldest unread result, waiting for one until ``deadline`` (``TimeoutError``);
        None once the job has ended and every result was read."""
        with self.lock:
            while not self._results and not self.finished.is_set():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError
                self.changed.wait(1.0 if remaining is None else min(remaining, 1.0))
            return self._results.popleft() if self._results else None

    def finish(self, *, output: str, failed_list: str, error: str | None, cancelled: bool) -> None:
        """The job is over: make its summary and wake every reader."""
        with self.lock:
            total = self.total if self.total is not None else self.seen
            done = self.succeeded + self.failed + self.skipped
            self.summary = JobSummary(
                output=output,
                total=total,
                succeeded=self.succeeded,
                failed=self.failed,
                skipped=self.skipped,
                not_run=max(0, total - done),
                seconds=time.monotonic() - self.started,
                failures=tuple(self._failures),
                failed_list=failed_list if self.failed else None,
                error=error,
                cancelled=cancelled,
                extra=MappingProxyType(dict(self.stats)),
            )
            self.finished.set()
            self.changed.notify_all()
