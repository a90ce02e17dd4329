"""The server's task feed for the coordinator's dashboard (``sperse._server.task_feed``):
what a note holds, what it never holds, and how the buffer stays bounded."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from sperse._core import Done, ErrorInfo, Failed, Output, Started
from sperse._server.model import TaskRequest
from sperse._server.sessions import TEXT_MAX
from sperse._server.task_feed import OUTPUT_KEPT, OUTPUT_NOTE, TaskFeed
from sperse._wire import pb

SESSION = "secret-session-id-resumes-the-session"


def request(task_id: str, label: str = "") -> TaskRequest:
    return TaskRequest(task_id=task_id, work=None, label=label)


def test_a_task_s_life_between_two_reports_is_one_note() -> None:
    feed = TaskFeed(clock=lambda: 42.0)
    feed.submitted(SESSION, "alice@laptop", [request("t1", "f(1)")])
    feed.event(SESSION, Started("t1", "s", worker=321))
    feed.event(SESSION, Output("t1", "s", "stdout", "hello\n"))
    feed.event(SESSION, Output("t1", "s", "stdout", "again\n"))
    feed.event(SESSION, Done("t1", "s", value=("held", "an-object-id-capability")))
    assert feed.ready.is_set() and len(feed) == 1
    notes, dropped = feed.drain(100)
    assert dropped == 0 and len(feed) == 0 and not feed.ready.is_set()
    (note,) = notes
    session = note.task.rpartition("/")[0]
    assert session.endswith(".s1") and SESSION not in session
    assert note.task == f"{session}/t1" and note.kind == "task"
    assert (note.label, note.client, note.queued_at) == ("f(1)", "alice@laptop", 42.0)
    assert (note.started_at, note.worker, note.ended_at) == (42.0, 321, 42.0)
    assert note.text == "hello\nagain\n" and not note.error_kind
    everything = note.SerializeToString()
    assert b"an-object-id-capability" not in everything  # a Done's values never go
    assert SESSION.encode() not in everything


@dataclass(frozen=True)
class Merge:
    name: str
    steps: list[str]  # "q" submitted, "s" started, "o" output, "d" done, "f" failed, "|" a report
    notes: list[tuple[bool, bool, bool, str]]  # per note: queued?, started?, ended?, text


MERGES = [
    Merge("all in one", ["q", "s", "d"], [(True, True, True, "")]),
    Merge(
        "a report between start and end",
        ["q", "s", "|", "d"],
        [(True, True, False, ""), (False, False, True, "")],
    ),
    Merge(
        "only output after a report",
        ["q", "|", "o", "o"],
        [(True, False, False, ""), (False, False, False, "oo")],
    ),
    Merge("a failure after its start", ["s", "o", "f"], [(False, True, True, "o")]),
    Merge(
        "one note per report",
        ["q", "|", "s", "|", "d"],
        [(True, False, False, ""), (False, True, False, ""), (False, False, True, "")],
    ),
]


@pytest.mark.parametrize("case", MERGES, ids=lambda c: c.name)
def test_a_task_s_events_merge_until_the_next_report(case: Merge) -> None:
    feed = TaskFeed(clock=lambda: 7.0)
    error = ErrorInfo("raised", "KeyError", "'k'", "Traceback")
    notes: list[pb.TaskNote] = []
    for step in case.steps:
        if step == "q":
            feed.submitted(SESSION, "", [request("t")])
        elif step == "s":
            feed.event(SESSION, Started("t", "s", worker=9))
        elif step == "o":
            feed.event(SESSION, Output("t", "s", "stdout", "o"))
        elif step == "d":
            feed.event(SESSION, Done("t", "s", value=None))
        elif step == "f":
            feed.event(SESSION, Failed("t", "s", error))
        else:
            notes += feed.drain(100)[0]
    notes += feed.drain(100)[0]
    assert [
        (bool(n.queued_at), bool(n.started_at), bool(n.ended_at), n.text) for n in notes
    ] == case.notes
    assert {n.kind for n in notes} == {"task"}
    ended = "KeyError" if "f" in case.steps else "" if "d" in case.steps else None
    assert [n.error_type for n in notes if n.ended_at] == ([] if ended is None else [ended])


def test_a_failure_carries_its_error_clipped() -> None:
    feed = TaskFeed()
    error = ErrorInfo("raised", "ZeroDivisionError", "m" * (TEXT_MAX + 10), "tb" * TEXT_MAX)
    feed.event(SESSION, Failed("t2", "s", error))
    feed.event(SESSION, Output("t2", "s", "stderr", "x" * (OUTPUT_NOTE + 5)))
    (failed,), _ = feed.drain(10)
    assert (failed.error_kind, failed.error_type) == ("raised", "ZeroDivisionError")
    assert len(failed.error_message) < TEXT_MAX + 40 and "characters cut" in failed.error_message
    assert failed.traceback.endswith("tb") and "characters cut" in failed.traceback
    assert len(failed.text) == OUTPUT_NOTE


def test_a_note_keeps_the_last_output_chunks() -> None:
    feed = TaskFeed()
    for i in range(OUTPUT_KEPT + 3):
        feed.event(SESSION, Output("t", "s", "stdout", f"{i};"))
    (note,), _ = feed.drain(10)
    assert note.text == "".join(f"{i};" for i in range(3, OUTPUT_KEPT + 3))


def test_sessions_are_numbered_and_their_end_is_noted() -> None:
    feed = TaskFeed()
    feed.submitted("a", "", [request("t1")])
    feed.submitted("b", "", [request("t1")])
    feed.session_ended("a")
    feed.session_ended("never-submitted")  # nothing to say
    notes, _ = feed.drain(10)
    assert [n.kind for n in notes] == ["task", "task", "session_ended"]
    first, second = (n.task.rpartition("/")[0] for n in notes[:2])
    assert first != second and first.endswith(".s1") and second.endswith(".s2")
    assert notes[2].task == f"{first}/"


def test_two_feeds_number_sessions_apart() -> None:
    """A restarted server's sessions never take its last run's keys."""
    words = set()
    for _ in range(20):
        feed = TaskFeed()
        feed.submitted("a", "", [request("t1")])
        words.add(feed.drain(1)[0][0].task)
    assert len(words) > 1


@pytest.mark.parametrize(("limit", "added", "kept"), [(3, 2, 2), (3, 3, 3), (3, 10, 3)])
def test_a_full_buffer_drops_the_oldest_and_counts_them(limit: int, added: int, kept: int) -> None:
    feed = TaskFeed(limit)
    feed.submitted(SESSION, "", [request(f"t{i}") for i in range(added)])
    notes, dropped = feed.drain(100)
    assert [n.task.rpartition("/")[2] for n in notes] == [f"t{i}" for i in range(added)][-kept:]
    assert dropped == added - kept
    assert feed.drain(100) == ([], 0)  # counted once


def test_drain_takes_at_most_what_it_is_asked() -> None:
    feed = TaskFeed()
    feed.submitted(SESSION, "", [request(f"t{i}") for i in range(5)])
    first, _ = feed.drain(3)
    assert len(first) == 3 and len(feed) == 2 and feed.ready.is_set()
    rest, _ = feed.drain(3)
    assert len(rest) == 2 and not feed.ready.is_set()
