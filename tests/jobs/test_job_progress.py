"""Progress: the rate over a sliding window, the ETA, the plain line, the bar (on a clock
the test controls)."""

from __future__ import annotations

import io

from sperse.jobs._progress import Bar, PlainLines, Rate
from sperse.jobs._results import JobProgress


def snapshot(**fields: object) -> JobProgress:
    values: dict[str, object] = {
        "total": 100,
        "succeeded": 40,
        "failed": 2,
        "skipped": 8,
        "running": 4,
        "elapsed": 5.0,
        "rate": 10.0,
        "finished": False,
    }
    values.update(fields)
    return JobProgress(**values)  # type: ignore[arg-type]


def test_rate_is_over_the_recent_window() -> None:
    rate = Rate(window=10.0)
    assert rate.add(0.0, 0) == 0.0
    assert rate.add(5.0, 50) == 10.0
    assert rate.add(10.0, 100) == 10.0
    # The work slows down: the old samples leave the window and the rate follows.
    assert rate.add(20.0, 110) == 1.0
    assert rate.add(30.0, 120) == 1.0


def test_eta_and_line() -> None:
    progress = snapshot()
    assert progress.done == 50 and progress.eta == 5.0
    assert progress.line() == (
        "50/100 done (2 failed, 8 skipped), 10.0 units/s, 5.0 s elapsed, ETA 5.0 s"
    )
    assert snapshot(total=None).eta is None
    assert "?" in snapshot(total=None).line()
    assert "ETA" not in snapshot(finished=True).line()
    assert "2 min 05 s" in snapshot(elapsed=125.0).line()


def test_plain_lines_come_at_the_interval_and_at_the_end() -> None:
    now = [0.0]
    stream = io.StringIO()
    lines = PlainLines(stream, 5.0, "sperse: job", lambda: now[0])
    lines.update(snapshot())
    now[0] = 4.9
    lines.update(snapshot())
    assert stream.getvalue() == ""
    now[0] = 5.0
    lines.update(snapshot())
    lines.close(snapshot(succeeded=90, finished=True))
    out = stream.getvalue().splitlines()
    assert out == [
        "sperse: job: 50/100 done (2 failed, 8 skipped), 10.0 units/s, 5.0 s elapsed, ETA 5.0 s",
        "sperse: job: 100/100 done (2 failed, 8 skipped), 10.0 units/s, 5.0 s elapsed",
    ]


def test_the_bar_shows_done_failed_and_rate() -> None:
    stream = io.StringIO()
    bar = Bar(stream, "sperse: job")
    bar.update(snapshot())
    bar.close(snapshot(succeeded=90, finished=True))
    text = stream.getvalue()
    assert "100/100" in text and "2 failed" in text and "10.0 units/s" in text
