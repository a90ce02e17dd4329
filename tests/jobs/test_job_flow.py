"""The job's flow control and retries, on a backend in this process: inputs are read only
as credits free, batches in flight stay bounded, and a unit that kills its worker is the
only one to fail."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_backend import FakeBackend
from job_units import behave

import sperse
from sperse.jobs import submit_job
from sperse.jobs._schedule import DEPTH, MAX_BATCH_UNITS


class CountingLines:
    """``count`` lines, made as they are read; remembers how many were read."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.read = 0

    def __iter__(self) -> Iterator[bytes]:
        for i in range(self.count):
            self.read += 1
            yield b"u%d\n" % i


def test_units_in_flight_stay_bounded_however_many_there_are(tmp_path: Path) -> None:
    backend = FakeBackend(workers=2)
    lines = CountingLines(20_000)
    with sperse.Cluster(backend) as cluster:
        job = submit_job(python=behave, input=lines, output=tmp_path, cluster=cluster)
        peak_read_ahead = 0
        for result in job.as_completed(timeout=120):
            assert result.ok
            progress = job.progress()
            peak_read_ahead = max(peak_read_ahead, lines.read - progress.done)
        summary = job.wait(timeout=60)
    assert summary.ok and summary.succeeded == 20_000
    credits = backend.workers * DEPTH
    assert backend.max_in_flight <= credits
    # Never more read than the batches in flight hold (plus one unit looked ahead).
    assert peak_read_ahead <= credits * MAX_BATCH_UNITS + 1
    assert backend.tasks < 20_000 / 8  # tiny units travel in batches


@pytest.mark.parametrize("retries", [0, 2])
def test_a_unit_that_kills_its_worker_fails_alone(tmp_path: Path, retries: int) -> None:
    backend = FakeBackend(workers=2, dies=lambda units: b"poison" in units)
    inputs = [b"a%d" % i for i in range(300)] + [b"poison"]
    lines = iter([line + b"\n" for line in inputs])
    with sperse.Cluster(backend) as cluster:
        job = submit_job(
            python=behave, input=lines, output=tmp_path, retries=retries, cluster=cluster
        )
        summary = job.wait(timeout=60)
    assert (summary.succeeded, summary.failed) == (300, 1), summary.report()
    (failure,) = summary.failures
    assert failure.name == "00000301" and failure.error is not None
    assert failure.error.kind == "worker_died" and failure.attempts == retries + 1
    # One death with its batch, then once alone per attempt.
    assert backend.deaths <= 1 + retries + 1


def test_batches_of_a_lost_server_that_never_answer_go_elsewhere(tmp_path: Path) -> None:
    """One batch reports the server lost; the others of that server never answer at all.
    After a grace period the job sends them to the other server: nothing waits forever."""
    lost = FakeBackend(workers=2, name="lost", lost_after=2)
    healthy = FakeBackend(workers=2, name="healthy")
    lines = [b"u%d\n" % i for i in range(100)]
    with sperse.Cluster(lost) as a, sperse.Cluster(healthy) as b:
        job = submit_job(python=behave, input=iter(lines), output=tmp_path, cluster=[a, b])
        summary = job.wait(timeout=60)
    assert summary.ok and summary.succeeded == 100, summary.report()
    assert lost.swallowed >= 1  # some batch was never answered, and still got done
    assert summary.extra["retried"] >= 2
