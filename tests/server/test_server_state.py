"""The server's sessions and tasks as a pure state machine: events in, actions out; no
processes, no clock (``tests/server/state_harness.py`` plays the driver)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from state_harness import PREFIX, WORK, Machine, files, machine, value

from sperse._core import ErrorInfo, Failed
from sperse._server.actions import (
    Cancel,
    EndSession,
    EndTaskLog,
    Log,
    SetAnnounceTimer,
    SetExpiry,
    Submit,
    Sweep,
    TaskLogOutput,
    Unlink,
)
from sperse._server.model import (
    OUTPUT_CHUNK,
    RETAIN_EVENTS,
    STARTED_HOLD,
    HeldValue,
    PutInfo,
    TaskRequest,
)
from sperse._server.sessions import SessionState


def run(m: Machine, step: str) -> None:
    """One step of a case: ``verb task[@attempt] [args]``."""
    verb, *args = step.split()
    if verb == "tick":
        m.tick(float(args[0]))
        return
    task, _, attempt = args[0].partition("@")
    at = int(attempt) if attempt else -1
    if verb == "submit":
        options = dict(a.split("=") for a in args[1:])
        m.submit(task, retries=int(options.get("retries", 0)))
    elif verb == "start":
        m.start(task)
    elif verb == "out":
        m.output(task, args[1])
    elif verb == "done":
        m.done(task, attempt=at)
    elif verb == "raise":
        m.raised(task)
    elif verb == "fail":
        m.fail(task, args[1], attempt=at)
    elif verb == "cancel":
        m.cancel(task)
    elif verb == "queued":  # the driver dropped the attempt, cancelled, before it ran
        m.feed(
            m.state.tasks.attempt_failed(
                m.pool_id(task), ErrorInfo("cancelled", "TaskCancelled", "q")
            )
        )
    else:  # pragma: no cover - a typo in a case
        raise ValueError(step)


@dataclass(frozen=True)
class Case:
    """Steps in order; what session ``s`` was sent; how many attempts were submitted."""

    id: str
    steps: list[str]
    sent: list[str]
    submits: int = 1


CASES = [
    Case("quick task", ["submit t1", "start t1", "done t1"], ["started t1", "done t1"]),
    Case(
        "slow task: Started once held",
        ["submit t1", "start t1", "tick 0.001", "tick 0.01", "done t1"],
        ["started t1", "done t1"],
    ),
    Case("never started", ["submit t1", "done t1"], ["done t1"]),
    Case(
        "output announces the start",
        ["submit t1", "start t1", "out t1 hi", "out t1 ho", "done t1"],
        ["started t1", "out t1 hi", "out t1 ho", "done t1"],
    ),
    Case(
        "raised",
        ["submit t1", "start t1", "raise t1"],
        ["started t1", "failed t1 ZeroDivisionError"],
    ),
    Case(
        "runner error",
        ["submit t1", "start t1", "fail t1 runner_error"],
        ["started t1", "failed t1 RunnerError"],
    ),
    Case(
        "worker died, no retries",
        ["submit t1", "start t1", "fail t1 worker_died"],
        ["started t1", "failed t1 WorkerDied"],
    ),
    Case(
        "worker died, retried: a Started per attempt",
        ["submit t1 retries=1", "start t1", "fail t1 worker_died", "start t1", "done t1"],
        ["started t1", "started t1", "done t1"],
        submits=2,
    ),
    Case(
        "retries run out",
        [
            "submit t1 retries=1",
            "start t1",
            "fail t1 worker_died",
            "start t1",
            "fail t1 worker_died",
        ],
        ["started t1", "started t1", "failed t1 WorkerDied"],
        submits=2,
    ),
    Case(
        "an earlier attempt's late events are dropped",
        [
            "submit t1 retries=1",
            "fail t1 worker_died",
            "done t1@0",
            "fail t1@0 cancelled",
            "done t1",
        ],
        ["done t1"],
        submits=2,
    ),
    Case(
        "cancelled while running",
        ["submit t1", "start t1", "cancel t1", "cancel t1", "fail t1 cancelled"],
        ["started t1", "failed t1 TaskCancelled"],
    ),
    Case(
        "cancelled while queued in the driver",
        ["submit t1", "cancel t1", "queued t1"],
        ["failed t1 TaskCancelled"],
    ),
    Case(
        "a cancelled task is not retried",
        ["submit t1 retries=3", "start t1", "cancel t1", "fail t1 worker_died"],
        ["started t1", "failed t1 WorkerDied"],
    ),
    Case(
        "cancel after the end: nothing",
        ["submit t1", "done t1", "cancel t1"],
        ["done t1"],
    ),
    Case(
        "resubmitted while running: runs once",
        ["submit t1", "start t1", "submit t1", "done t1"],
        ["started t1", "done t1"],
    ),
    Case(
        "resubmitted after its end: its end again, not run",
        ["submit t1", "done t1", "submit t1", "submit t1"],
        ["done t1", "done t1", "done t1"],
    ),
    Case(
        "two tasks, events by attempt",
        ["submit t1", "submit t2", "start t2", "start t1", "done t2", "tick 0.01", "done t1"],
        ["started t2", "done t2", "started t1", "done t1"],
        submits=2,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_task_life(case: Case) -> None:
    m = machine()
    for step in case.steps:
        run(m, step)
    assert m.sent() == case.sent
    assert len(m.of(Submit)) == case.submits
    assert not m.state.tasks.attempts and not m.state.sessions["s"].tasks
    assert m.timer is None  # nothing left to announce: no timer


def test_started_waits_for_the_hold_then_shares_the_end() -> None:
    m = machine()
    m.submit("t1")
    assert m.start("t1") == [SetAnnounceTimer(STARTED_HOLD)]
    assert m.sent() == []
    ended = m.done("t1")
    assert [a for a in ended if not isinstance(a, Log | EndTaskLog)][-1] == SetAnnounceTimer(None)
    assert m.sent() == ["started t1", "done t1"]


def test_one_timer_for_many_starts_rearmed_for_the_next() -> None:
    m = machine()
    m.submit("t1")
    m.submit("t2")
    assert m.start("t1") == [SetAnnounceTimer(STARTED_HOLD)]
    m.now = 0.003
    assert m.start("t2") == []  # the timer set waits for the first
    fired = m.tick(STARTED_HOLD - 0.003)
    assert m.sent() == ["started t1"]
    assert fired[-1] == SetAnnounceTimer(0.003 + STARTED_HOLD)
    m.tick(0.01)
    assert m.sent() == ["started t1", "started t2"]
    assert m.timer is None


def test_output_is_chunked_and_logged() -> None:
    m = machine()
    m.submit("t1")
    text = "x" * (OUTPUT_CHUNK + 5)
    m.output("t1", text)
    assert m.sent() == ["out t1 " + "x" * OUTPUT_CHUNK, "out t1 xxxxx"]
    assert m.of(TaskLogOutput) == [TaskLogOutput("s/t1", "stdout", text)]
    m.done("t1")
    assert m.of(EndTaskLog) == [EndTaskLog("s/t1")]


def test_the_pool_id_in_a_failure_is_the_tasks_label() -> None:
    m = machine()
    m.submit("t1", label="fit")
    m.fail("t1", "runner_error")
    (failed,) = [e.event for e in m.emits() if isinstance(e.event, Failed)]
    assert failed.error.message == "task fit: runner_error"


def test_the_last_of_the_attempts_is_said() -> None:
    m = machine()
    m.submit("t1", retries=2)
    for _ in range(3):
        m.fail("t1")
    (failed,) = [e.event for e in m.emits() if isinstance(e.event, Failed)]
    assert failed.error.message.endswith("(the last of 3 attempts)")


def test_failed_attempt_files_are_swept() -> None:
    m = machine()
    m.submit("t1", retries=1)
    first = m.pool_id("t1")
    m.fail("t1")
    m.fail("t1")
    attempts = [p.rpartition("/")[2] for p in m.pool_ids["t1"]]
    assert first.endswith("/" + attempts[0])
    assert m.of(Sweep) == [Sweep(f"{PREFIX}a{n}-") for n in attempts]


def test_no_sweep_without_shared_memory() -> None:
    m = machine(shm=False)
    m.submit("t1")
    m.fail("t1")
    assert m.of(Sweep) == []


def test_retained_events_are_bounded() -> None:
    session = SessionState("s")
    for i in range(RETAIN_EVENTS + 3):
        session.retain(Failed(f"t{i}", "srv", ErrorInfo("raised", "E", "")))
    assert len(session.finished) == RETAIN_EVENTS
    assert "t0" not in session.finished and f"t{RETAIN_EVENTS + 2}" in session.finished


def test_failure_text_is_clipped() -> None:
    m = machine()
    m.submit("t1", work=None, refused="x" * 100_000)
    (failed,) = [e.event for e in m.emits()]
    assert failed.error.type_name == "SerializationError"
    assert len(failed.error.message) < 70_000 and failed.error.message.endswith("characters cut]")


# ---- values: inline or held, and their files --------------------------------------------


def test_big_values_are_held_small_ones_inline() -> None:
    m = machine()
    m.submit("t1", inline_limit=100)
    big = value("big", files(f"{PREFIX}a1-0"))
    m.done("t1", value("small"), big)
    (done,) = [e.event for e in m.emits()]
    small, held = done.value
    assert small.name == "small" and held == HeldValue("big", "obj1", "int", big.value.size, "1")
    assert m.state.sessions["s"].objects["obj1"].value == big.value


def test_a_held_value_used_by_a_task_is_unlinked_after_release_and_the_tasks_end() -> None:
    m = machine()
    m.submit("t1", inline_limit=1)
    m.done("t1", value("x", files("f1")))
    m.submit("t2", refs=("obj1",))
    assert m.feed(m.state.release("s", "obj1")) == []  # t2 uses it
    m.done("t2")
    assert m.of(Unlink) == [Unlink(("f1",))]
    assert m.state.sessions["s"].object_bytes == 0


def test_uploads_are_the_tasks_till_its_end() -> None:
    m = machine()
    m.submit("t1", uploads=("u1", "u2"))
    m.submit("t1", uploads=("u1", "u3"))  # a resubmission: only the new file goes, at once
    assert m.of(Unlink) == [Unlink(("u3",), soon=False)]
    m.done("t1")
    assert m.of(Unlink)[-1] == Unlink(("u1", "u2"))


def test_a_retry_keeps_the_uploads() -> None:
    m = machine()
    m.submit("t1", retries=1, uploads=("u1",))
    m.fail("t1")
    assert m.of(Unlink) == []
    m.done("t1")
    assert m.of(Unlink) == [Unlink(("u1",))]


def test_a_put_is_held_at_once_and_its_uploads_become_the_values() -> None:
    m = machine(max_held_bytes=1 << 20)
    m.submit("p1", work=files("u1"), uploads=("u1",), put=PutInfo("numpy.ndarray", "array"))
    assert m.sent() == ["started p1", "done p1"]  # no worker, no attempt, no timer
    assert not m.of((Submit, SetAnnounceTimer)) and not m.state.tasks.attempts
    (held,) = m.emits()[-1].event.value
    assert held == HeldValue("", "obj1", "numpy.ndarray", files("u1").size, "array")
    assert m.of(Unlink) == [], "the upload is the held value's now"
    m.submit("t1", refs=("obj1",))  # used by reference: the task gets the put's files
    assert m.state.sessions["s"].tasks["t1"].objects["obj1"].value == files("u1")
    m.feed(m.state.release("s", "obj1"))
    m.done("t1")
    assert m.of(Unlink) == [Unlink(("u1",))]


def test_a_put_past_the_held_bytes_fails_and_its_uploads_go() -> None:
    m = machine(max_held_bytes=100)
    m.submit("p1", work=files("u1"), uploads=("u1",), put=PutInfo("bytes", "b''"))
    assert m.sent() == ["started p1", "failed p1 LimitExceeded"]
    assert "the value put of" in m.emits()[-1].event.error.message
    assert m.of(Unlink) == [Unlink(("u1",), soon=False)]
    assert m.state.held.bytes == 0


def test_result_of_an_unknown_attempt_has_its_files_unlinked() -> None:
    m = machine()
    m.feed(m.state.tasks.done("gone/7", [value("x", files("f1"))]))
    assert m.of(Unlink) == [Unlink(("f1",), soon=False)]
    assert m.sent() == []


@dataclass(frozen=True)
class Refusal:
    id: str
    fields: dict
    type_name: str


REFUSALS = [
    Refusal("refused bytes", {"work": None, "refused": "cannot unpickle"}, "SerializationError"),
    Refusal("no work", {"work": files()}, "UnknownTask"),
    Refusal("unknown ref", {"refs": ("nope",)}, "UnknownObject"),
]


@pytest.mark.parametrize("case", REFUSALS, ids=lambda c: c.id)
def test_refused_before_it_is_queued(case: Refusal) -> None:
    m = machine()
    fields = {"uploads": ("u1",), **case.fields}
    if case.type_name == "UnknownTask":
        fields["work"] = type(fields["work"])(b"")
    m.submit("t1", **fields)
    assert m.sent() == [f"failed t1 {case.type_name}"]
    assert m.of(Unlink) == [Unlink(("u1",), soon=False)]
    assert m.of(Submit) == [] and not m.state.sessions["s"].tasks


# ---- sessions ---------------------------------------------------------------------------


def test_a_detached_session_expires_after_its_grace() -> None:
    m = machine(session_grace=2.0)
    m.submit("t1", inline_limit=1)
    m.done("t1", value("x", files("f1")))
    m.submit("t2", uploads=("u2",))
    m.feed(m.state.attached("s"))
    m.now = 5.0
    m.feed(m.state.detached("s", m.now))
    assert m.expiry == {"s": 7.0}
    assert m.tick(1.9) == []
    ended = m.tick(0.2)
    pool_id = m.pool_id("t2")
    assert Cancel(pool_id) in ended and EndSession("s") in ended
    assert Unlink(("f1",)) in ended and Unlink(("u2",)) in ended
    assert "s" not in m.state.sessions
    late = m.feed(m.state.tasks.done(pool_id, [value("y", files("f2"))]))
    assert late == [Unlink(("f2",), soon=False)]  # nobody owns it: no event, files go


def test_attaching_again_keeps_the_session() -> None:
    m = machine()
    m.feed(m.state.detached("s", 0.0))
    assert m.feed(m.state.attached("s")) == [SetExpiry("s", None)]
    assert m.expiry == {}
    assert m.feed(m.state.expire("s")) == []  # a timer that fired anyway
    assert "s" in m.state.sessions


def test_closing_a_session_ends_it_once() -> None:
    m = machine()
    m.submit("t1")
    first = m.feed(m.state.close_session("s", "session_closed", "goodbye"))
    assert first[:2] == [EndSession("s"), Cancel(m.pool_id("t1"))]
    assert m.feed(m.state.close_session("s", "session_closed", "goodbye")) == []
    late = TaskRequest("t2", WORK, uploads=("u",))  # read by its stream after the end
    assert m.feed(m.state.submit("s", late)) == [Unlink(("u",), soon=False)]
    m.done("t1")
    assert m.sent() == []  # its task's end is not sent


def test_sessions_do_not_reach_each_others_values() -> None:
    m = machine("a", "b")
    m.submit("t1", session="a", inline_limit=1)
    m.done("t1", value("x", files("f1")))
    m.submit("t2", session="b", refs=("obj1",))
    assert m.sent("b") == ["failed t2 UnknownObject"]
    assert m.feed(m.state.release("b", "obj1")) == []
    assert m.state.find("obj1") is m.state.sessions["a"].objects["obj1"]
