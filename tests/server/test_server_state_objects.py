"""The server's state machine on pulled values and remote objects: no processes, no peers
(``tests/server/state_harness.py`` plays the driver)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest
from state_harness import Machine, call, create, files, machine, peer, value

from sperse._core import Done, ErrorInfo, Failed
from sperse._server.actions import (
    CancelObjectCall,
    CancelPull,
    Log,
    StartObject,
    StartPull,
    StopObject,
    Submit,
    SubmitToObject,
    Unlink,
)
from sperse._server.model import ObjectOp, Pulled
from sperse._server.remote import CLOSED, REBUILD


def failures(m: Machine, session: str = "s") -> dict[str, Failed]:
    return {e.event.task_id: e.event for e in m.emits(session) if isinstance(e.event, Failed)}


# ---- values pulled from other servers -----------------------------------------------------


def test_one_pull_serves_every_task_that_waits() -> None:
    m = machine()
    m.submit("t1", refs=("r",), peer_refs=(peer("r"),))
    m.submit("t2", refs=("r",), peer_refs=(peer("r"),))
    (start,) = m.of(StartPull)
    assert start.ref == peer("r") and start.shm_prefix.startswith("sperse-1-r")
    assert m.of(Submit) == []  # they wait
    pulled = Pulled(files("rf"), "int", "1")
    m.feed(m.state.pulled(start.pull_id, pulled, 0.1))
    assert len(m.of(Submit)) == 2
    assert m.state.held.replicas["r"].users == 2
    m.done("t1")
    assert m.of(Unlink) == []
    m.done("t2")
    assert m.of(Unlink) == [Unlink(("rf",))] and m.state.held.replicas == {}


def test_a_pull_nobody_waits_for_is_cancelled_and_its_late_value_unlinked() -> None:
    m = machine()
    m.submit("t1", refs=("r",), peer_refs=(peer("r"),))
    (start,) = m.of(StartPull)
    m.cancel("t1")
    assert m.of(CancelPull) == [CancelPull(start.pull_id)]
    assert m.sent() == ["failed t1 TaskCancelled"]
    late = m.feed(m.state.pulled(start.pull_id, Pulled(files("rf"), "int", "1"), 0.1))
    assert late == [Unlink(("rf",))] and m.state.held.replicas == {}


def test_a_failed_pull_fails_its_tasks() -> None:
    m = machine()
    m.submit("t1", refs=("r",), peer_refs=(peer("r"),), uploads=("u1",))
    m.submit("t2", refs=("r",), peer_refs=(peer("r"),))
    (start,) = m.of(StartPull)
    m.feed(m.state.pull_failed(start.pull_id, "it is gone", "compute it again"))
    assert m.sent() == ["failed t1 ObjectUnavailable", "failed t2 ObjectUnavailable"]
    assert "it is gone; compute it again" in failures(m)["t1"].error.message
    assert Unlink(("u1",)) in m.actions and m.of(Submit) == []


def test_without_peers_a_pull_fails_at_once() -> None:
    m = machine(can_pull=False)
    m.submit("t1", refs=("r", "q"), peer_refs=(peer("r"), peer("q")))
    assert m.of(StartPull) == [] and m.sent() == ["failed t1 ObjectUnavailable"]
    assert not m.state.pulls.in_flight


def test_a_task_waits_for_all_its_pulls() -> None:
    m = machine()
    m.submit("t1", refs=("r", "q"), peer_refs=(peer("r"), peer("q")))
    first, second = m.of(StartPull)
    m.feed(m.state.pulled(first.pull_id, Pulled(files(), "int", "1"), 0.1))
    assert m.of(Submit) == []
    m.feed(m.state.pulled(second.pull_id, Pulled(files(), "int", "1"), 0.1))
    assert len(m.of(Submit)) == 1


# ---- remote objects -------------------------------------------------------------------------


def built(m: Machine, object_id: str = "o1", **options: object) -> None:
    m.submit("c", object=create(object_id, **options))
    m.done("c", value("", files()))


def test_create_starts_a_pool_and_calls_go_to_it() -> None:
    m = machine()
    m.submit("c", object=create("o1", name="counter"))
    (start,) = m.of(StartObject)
    assert (start.object_id, start.label, start.max_concurrency) == ("o1", "counter", 1)
    m.submit("k1", object=call("o1"), retries=3)
    (submit,) = m.of(SubmitToObject)
    assert submit.object_id == "o1" and not submit.front
    m.cancel("k1")
    assert m.of(CancelObjectCall) == [CancelObjectCall("o1", submit.pool_id)]
    m.fail("k1", "worker_died")  # a call is never retried
    assert failures(m)["k1"].error.type_name == "ObjectLost"


@dataclass(frozen=True)
class Refused:
    id: str
    op: ObjectOp
    type_name: str


REFUSED = [
    Refused("id used", create("o1"), "DuplicateObject"),
    Refused("empty id", create(""), "DuplicateObject"),
    Refused("name taken", create("o2", name="counter"), "ValueError"),
    Refused("call of no object", call("o9"), "ObjectLost"),
    Refused("unknown operation", ObjectOp("o1", "poke"), "UnknownObjectOp"),
]


@pytest.mark.parametrize("case", REFUSED, ids=lambda c: c.id)
def test_object_operations_refused(case: Refused) -> None:
    m = machine()
    m.submit("c", object=create("o1", name="counter"))
    m.submit("t", object=case.op, uploads=("u",))
    assert failures(m)["t"].error.type_name == case.type_name
    assert len(m.of(StartObject)) == 1 and m.of(SubmitToObject) == []
    assert Unlink(("u",), soon=False) in m.actions


@dataclass(frozen=True)
class Death:
    """How an object dies (steps after it is built, with call ``k`` running) and what
    its running call, and a later one, fail with."""

    id: str
    how: str
    reason: str  # in the later call's message


DEATHS = [
    Death("closed", "close", "was closed"),
    Death("released by its owner", "release", "its last proxy was released"),
    Death("its session ended", "end", "the session that created it ended"),
    Death("worker died, no restart", "exit", "is lost: its worker (pid 7) died (killed)"),
]


@pytest.mark.parametrize("case", DEATHS, ids=lambda c: c.id)
def test_an_object_that_dies_fails_its_calls_and_stops(case: Death) -> None:
    m = machine("s", "other")
    built(m)
    m.submit("k", session="other", object=call("o1"))
    m.start("k")
    if case.how == "close":  # by its owner
        m.submit("x", object=ObjectOp("o1", "close"))
        (closed,) = [e.event for e in m.emits() if e.event.task_id == "x"]
        assert closed == Done("x", "srv", (CLOSED,))
    elif case.how == "release":
        m.feed(m.state.release("s", "o1"))
    elif case.how == "end":
        m.feed(m.state.close_session("s", "session_closed", "goodbye"))
    else:
        m.feed(m.state.object_worker_exited("o1", 7, "killed"))
        m.fail("k", "worker_died")  # the pool says so next: dropped, it has failed
    assert m.sent("other")[:2] == ["started k", "failed k ObjectLost"]
    (lost,) = [a for a in m.of(Log) if a.event == "task_failed" and a.get("task") == "k"]
    assert lost.level == logging.WARNING  # another session's call: news to the server's log
    assert m.of(StopObject) == [StopObject("o1")]
    m.submit("k2", session="other", object=call("o1"))
    assert case.reason in failures(m, "other")["k2"].error.message
    assert m.state.objects.alive == {}


def test_the_calls_of_the_session_that_closes_an_object_fail_quietly() -> None:
    """Its own calls in flight fail (a flow closes its hosts while it watches them): logged
    as info, not as a warning."""
    m = machine("s")
    built(m)
    m.submit("k", object=call("o1"))
    m.start("k")
    m.submit("x", object=ObjectOp("o1", "close"))
    assert m.sent("s")[-2:] == ["failed k ObjectLost", "done x"]
    (lost,) = [a for a in m.of(Log) if a.event == "task_failed" and a.get("task") == "k"]
    assert lost.level == logging.INFO


@pytest.mark.parametrize(("name", "closes"), [("", False), ("shared", True)])
def test_another_session_closes_a_named_object_only(name: str, closes: bool) -> None:
    m = machine("s", "other")
    built(m, name=name)
    other, owner = m.state.sessions["other"], m.state.sessions["s"]
    # Listings: another session sees a named object only; its owner sees it either way.
    for viewer, sees in ((owner, True), (other, bool(name)), (None, True)):
        infos = m.state.objects.infos("", lambda _: 0, viewer)
        assert [i.object_id for i in infos] == (["o1"] if sees else [])
    m.submit("x", session="other", object=ObjectOp("o1", "close"))
    (event,) = [e.event for e in m.emits("other") if e.event.task_id == "x"]
    if closes:
        assert event == Done("x", "srv", (CLOSED,)) and m.of(StopObject) == [StopObject("o1")]
    else:
        assert isinstance(event, Failed) and event.error.type_name == "PermissionError"
        assert "only that client may close it" in event.error.message
        assert "o1" in m.state.objects.alive and m.of(StopObject) == []


def test_a_restart_object_is_rebuilt_when_its_worker_dies() -> None:
    m = machine("s", "other")
    m.submit("c", object=create("o1", restart=True), uploads=("u",))
    m.done("c", value("", files()))
    m.submit("k1", session="other", object=call("o1"))
    m.start("k1")
    rebuild = m.feed(m.state.object_worker_exited("o1", 7, "killed"))
    (again,) = [a for a in rebuild if isinstance(a, SubmitToObject)]
    assert again.front and again.pool_id == f"{REBUILD}o1/1"
    assert again.payload == m.of(StartObject)[0].payload  # its create, kept
    m.fail("k1", "worker_died")
    assert "was rebuilt after its worker (pid 7) died" in failures(m, "other")["k1"].error.message
    m.feed(m.state.rebuilt("o1", again.pool_id, [value("", files("cf"))]))
    assert m.of(Unlink) == [Unlink(("cf",), soon=False)]  # its constructor's value
    assert m.state.objects.alive["o1"].built
    m.feed(m.state.object_worker_exited("o1", 8, "killed"))
    failed = ErrorInfo("raised", "OSError", "no disk")
    m.feed(m.state.rebuilt("o1", f"{REBUILD}o1/2", failed))
    assert m.state.objects.alive == {} and m.of(StopObject) == [StopObject("o1")]
    assert Unlink(("u",)) in m.actions  # the create's uploads, kept till now


def test_a_constructor_that_raises_leaves_no_object() -> None:
    m = machine()
    m.submit("c", object=create("o1"))
    m.raised("c")
    assert m.state.objects.alive == {} and m.of(StopObject) == [StopObject("o1")]
    m.submit("k", object=call("o1"))
    assert "its constructor raised ZeroDivisionError" in failures(m)["k"].error.message


def test_calls_count_and_objects_are_logged() -> None:
    m = machine()
    built(m)
    for k in ("k1", "k2"):
        m.submit(k, object=call("o1"))
        m.done(k)
    assert m.state.objects.alive["o1"].calls == 2
    assert "object_created" in [a.event for a in m.of(Log)]
