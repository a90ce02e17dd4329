"""The store of what tasks printed: bounds and expiry on a controllable clock, no server."""

from __future__ import annotations

import pytest

from sperse._core.chunks import last_characters
from sperse._server.task_logs import TaskLogs


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def text(logs: TaskLogs, key: str) -> str:
    log = logs.get(key)
    assert log is not None
    return "".join(t for _, t in log.chunks)


def test_a_log_keeps_streams_in_order_and_outlives_its_task_for_a_while() -> None:
    clock = Clock()
    logs = TaskLogs(keep=60.0, clock=clock)
    logs.add("s/t1", "stdout", "hello\n")
    logs.add("s/t1", "stderr", "oops\n")
    logs.ended("s/t1")
    clock.now += 59.0
    log = logs.get("s/t1")
    assert log is not None and log.chunks == [("stdout", "hello\n"), ("stderr", "oops\n")]
    clock.now += 2.0
    assert logs.get("s/t1") is None and logs.size == 0


def test_a_running_task_is_never_expired() -> None:
    clock = Clock()
    logs = TaskLogs(keep=1.0, clock=clock)
    logs.add("s/t1", "stdout", "still going\n")
    clock.now += 3600.0
    assert text(logs, "s/t1") == "still going\n"


def test_a_task_keeps_the_end_of_what_it_printed() -> None:
    logs = TaskLogs(per_task=10)
    for i in range(5):
        logs.add("s/t1", "stdout", f"line{i}\n")
    log = logs.get("s/t1")
    assert log is not None and log.truncated
    assert text(logs, "s/t1") == "".join(f"line{i}\n" for i in range(5))[-10:]
    assert logs.size == 10


def test_the_total_bound_sheds_logs_of_ended_tasks_first() -> None:
    logs = TaskLogs(per_task=100, total=25)
    logs.add("s/old", "stdout", "x" * 10)
    logs.ended("s/old")
    logs.add("s/running", "stdout", "y" * 10)
    logs.add("s/new", "stdout", "z" * 10)  # 30 > 25: the ended one goes
    assert logs.get("s/old") is None
    assert text(logs, "s/running") == "y" * 10 and text(logs, "s/new") == "z" * 10
    assert logs.size == 20


@pytest.mark.parametrize(
    ("chunks", "limit", "kept"),
    [
        ([], 5, []),
        ([("stdout", "abc")], 5, [("stdout", "abc")]),
        ([("stdout", "abc"), ("stderr", "defg")], 5, [("stdout", "c"), ("stderr", "defg")]),
        ([("stdout", "abcdefgh")], 3, [("stdout", "fgh")]),
        (
            [("stdout", "ab"), ("stdout", "cd"), ("stdout", "ef")],
            4,
            [("stdout", "cd"), ("stdout", "ef")],
        ),
    ],
)
def test_the_last_characters_are_kept_chunk_by_chunk(
    chunks: list[tuple[str, str]], limit: int, kept: list[tuple[str, str]]
) -> None:
    assert last_characters(chunks, limit) == kept
