"""The server's task feed for the coordinator's dashboard (``sperse._server.task_feed``):
what a note holds, what it never holds, and how the buffer stays bounded."""

from __future__ import annotations

import pytest

from sperse._core import Done, ErrorInfo, Failed, Output, Started
from sperse._server.model import TaskRequest
from sperse._server.sessions import TEXT_MAX
from sperse._server.task_feed import OUTPUT_NOTE, TaskFeed

SESSION = "secret-session-id-resumes-the-session"


def request(task_id: str, label: str = "") -> TaskRequest:
    return TaskRequest(task_id=task_id, work=None, label=label)


def test_a_task_s_life_becomes_notes_in_order() -> None:
    feed = TaskFeed(clock=lambda: 42.0)
    feed.submitted(SESSION, "alice@laptop", [request("t1", "f(1)")])
    feed.event(SESSION, Started("t1", "s", worker=321))
    feed.event(SESSION, Output("t1", "s", "stdout", "hello\n"))
    feed.event(SESSION, Done("t1", "s", value=("held", "an-object-id-capability")))
    assert feed.ready.is_set()
    notes, dropped = feed.drain(100)
    assert dropped == 0 and len(feed) == 0 and not feed.ready.is_set()
    assert [n.kind for n in notes] == ["queued", "started", "output", "done"]
    session = notes[0].task.rpartition("/")[0]
    assert session.endswith(".s1") and SESSION not in session
    assert {n.task for n in notes} == {f"{session}/t1"}
    assert (notes[0].label, notes[0].client, notes[0].at) == ("f(1)", "alice@laptop", 42.0)
    assert notes[1].worker == 321
    assert notes[2].text == "hello\n"
    everything = b"".join(n.SerializeToString() for n in notes)
    assert b"an-object-id-capability" not in everything  # a Done's values never go
    assert SESSION.encode() not in everything


def test_a_failure_carries_its_error_clipped() -> None:
    feed = TaskFeed()
    error = ErrorInfo("raised", "ZeroDivisionError", "m" * (TEXT_MAX + 10), "tb" * TEXT_MAX)
    feed.event(SESSION, Failed("t2", "s", error))
    feed.event(SESSION, Output("t2", "s", "stderr", "x" * (OUTPUT_NOTE + 5)))
    (failed, output), _ = feed.drain(10)
    assert (failed.error_kind, failed.error_type) == ("raised", "ZeroDivisionError")
    assert len(failed.error_message) < TEXT_MAX + 40 and "characters cut" in failed.error_message
    assert failed.traceback.endswith("tb") and "characters cut" in failed.traceback
    assert len(output.text) == OUTPUT_NOTE


def test_sessions_are_numbered_and_their_end_is_noted() -> None:
    feed = TaskFeed()
    feed.submitted("a", "", [request("t1")])
    feed.submitted("b", "", [request("t1")])
    feed.session_ended("a")
    feed.session_ended("never-submitted")  # nothing to say
    notes, _ = feed.drain(10)
    assert [n.kind for n in notes] == ["queued", "queued", "session_ended"]
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
