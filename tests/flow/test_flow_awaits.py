"""Async operators as pure state machines (``sperse._flow.awaits``, and the replica around
one): which calls start, which wait, in what order results go on, and when a stage may end.
No event loop: the test plays the shell, turning ``Call`` actions into ``Resumed`` events."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

import sperse
from sperse._flow.awaits import AsyncMap, Call, Resumed, is_async
from sperse._flow.messages import Batch, End, Report, SinkDone
from sperse._flow.ops import Ctx
from sperse._flow.plan import StageId, physical
from sperse._flow.replica import Replica
from sperse._flow.service import Envelope, Reply

CTX = Ctx(0, 1)


async def fn(x: Any) -> Any:
    return x


def env(client: str, rid: int, depth: int = 0, value: Any = None) -> Envelope:
    return Envelope(client, rid, rid if value is None else value, depth=depth)


@dataclass
class Case:
    """Items come (``items``: (client, rid, depth)), then calls end in ``ends`` (rids, with
    ``rid + 100`` as the value); ``starts``: the rids whose calls have started after the
    items came; ``released``: the rids let go, in order, over the whole case."""

    name: str
    items: list[tuple[str, int, int]]
    ends: list[int]
    starts: list[int]
    released: list[int]
    limit: int = 2
    ordered: bool = True
    later: list[int] = field(default_factory=list)  # calls started after the ends


CASES = [
    Case("at most limit calls per depth", [("c", 0, 0), ("c", 1, 0), ("c", 2, 0)], [], [0, 1], []),
    Case(
        "an ended call makes room for the next",
        [("c", 0, 0), ("c", 1, 0), ("c", 2, 0)],
        [0],
        [0, 1],
        [0],
        later=[2],
    ),
    Case(
        "a deeper request gets a slot of its own depth, whatever the shallower hold",
        [("c", 0, 0), ("c", 1, 0), ("c", 2, 0), ("s", 3, 1)],
        [3],
        [0, 1, 3],
        [3],
    ),
    Case(
        "one client's results go on in the order its requests came",
        [("c", 0, 0), ("c", 1, 0)],
        [1, 0],
        [0, 1],
        [0, 1],
    ),
    Case(
        "another client's result does not wait for this client's",
        [("c", 0, 0), ("d", 1, 0)],
        [1, 0],
        [0, 1],
        [1, 0],
    ),
    Case(
        "a deeper request from the same client does not wait for shallower ones",
        [("c", 0, 0), ("c", 1, 1)],
        [1, 0],
        [0, 1],
        [1, 0],
    ),
    Case(
        "unordered: as they end",
        [("c", 0, 0), ("c", 1, 0)],
        [1, 0],
        [0, 1],
        [1, 0],
        ordered=False,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_async_map_slots_and_order(case: Case) -> None:
    op = AsyncMap("call", fn, case.limit, case.ordered, 5.0, service=True)
    released = op.on_batch(0, [env(c, rid, depth) for c, rid, depth in case.items], CTX)
    calls = {call.value: call for call in op.take_calls()}
    assert sorted(calls) == case.starts
    later: list[int] = []
    for rid in case.ends:
        call = calls[rid]
        released += op.resumed(Resumed(call.op, call.token, rid + 100))
        for new in op.take_calls():
            calls[new.value] = new
            later.append(new.value)
    assert [e.rid for e in released] == case.released
    assert all(e.value == e.rid + 100 for e in released)
    assert later == case.later
    assert op.outstanding == len(case.items) - len(released)


def test_a_failed_request_passes_without_a_call_in_its_turn() -> None:
    op = AsyncMap("call", fn, 4, True, None, service=True)
    failed = env("c", 1).__class__("c", 1, "x", failed=None, answered=True)
    out = op.on_batch(0, [env("c", 0), failed], CTX)
    assert out == []  # it waits for request 0, sent before it
    (call,) = op.take_calls()
    out = op.resumed(Resumed(call.op, call.token, "zero"))
    assert [(e.rid, e.value) for e in out] == [(0, "zero"), (1, "x")]


def test_a_call_that_raised_fails_its_request_naming_the_operator() -> None:
    op = AsyncMap("call_b", fn, 4, True, None, service=True)
    op.on_batch(0, [env("c", 0, value="v")], CTX)
    (call,) = op.take_calls()
    (out,) = op.resumed(Resumed(call.op, call.token, error=ValueError("nope")))
    assert out.failed is not None
    exc = out.failed.to_exception("front")
    assert exc.operator == "call_b" and exc.type_name == "ValueError"
    assert "the operator 'call_b' on the item 'v' raised ValueError: nope" in str(exc)


def test_a_failure_of_an_awaited_service_names_both_and_does_not_nest() -> None:
    op = AsyncMap("call_b", fn, 4, True, None, service=True)
    inner = sperse.FlowFailed(
        "flow 'b': the operator 'check' on the item 1 raised ValueError: nope",
        flow="b",
        operator="check",
        type_name="ValueError",
        remote_traceback="Traceback ...\nValueError: nope\n",
    )
    op.on_batch(0, [env("c", 0, value=1)], CTX)
    (call,) = op.take_calls()
    (out,) = op.resumed(Resumed(call.op, call.token, error=inner))
    exc = out.failed.to_exception("a")
    text = exc.args[0]
    assert text == (
        "flow 'a': the operator 'call_b' on the item 1 failed: a request it awaited failed: "
        "flow 'b': the operator 'check' on the item 1 raised ValueError: nope"
    )
    assert exc.type_name == "ValueError"
    assert exc.remote_traceback == inner.remote_traceback  # the first failure's, once


def test_is_async() -> None:
    class Caller:
        async def __call__(self, x: Any) -> Any:
            return x

    assert is_async(fn) and is_async(Caller())
    assert not is_async(lambda x: x) and not is_async(len)


# -- the replica around it ---------------------------------------------------------------------


def service_plan() -> Any:
    f = sperse.Flow("svc")
    f.requests().map(fn, name="call", max_in_flight=1).map(str, name="show").respond()
    return physical(f.plan)


def test_an_async_map_heads_its_stage_and_the_rest_chains_after_it() -> None:
    plan = service_plan()
    names = [[plan.node(n).name for n in s.nodes] for s in plan.stages]
    assert names == [["requests"], ["call", "show", "respond"]]


def test_a_service_replica_answers_as_calls_end_and_ends_after_them() -> None:
    plan = service_plan()
    replica = Replica(plan, StageId(1), 0)
    actions = replica.handle(Batch(0, 0, [env("c", 0), env("c", 1)]))
    (call,) = actions  # one slot: the second waits
    assert isinstance(call, Call) and call.value == 0 and call.depth == 0
    assert replica.handle(End(0, 0)) == []  # two requests held: the stage does not end yet
    first = replica.handle(Resumed(call.op, call.token, 7))
    reply = [a for a in first if isinstance(a, Reply)]
    assert [(a.rid, a.value) for a in reply[0].answers] == [(0, "7")]
    (second,) = [a for a in first if isinstance(a, Call)]
    last = replica.handle(Resumed(second.op, second.token, 8))
    assert [(a.rid, a.value) for a in last[0].answers] == [(1, "8")]  # type: ignore[union-attr]
    assert replica.calls == 0
    assert not replica.full  # a service's never is


def test_a_plain_flow_replica_is_full_at_its_limit_and_ends_after_its_calls() -> None:
    f = sperse.Flow("plain")
    f.source([]).map(fn, name="call", max_in_flight=2).collect()
    plan = physical(f.plan)
    replica = Replica(plan, StageId(1), 0)
    calls = replica.handle(Batch(0, 0, [1, 2, 3]))
    assert [c.value for c in calls] == [1, 2] and replica.full  # type: ignore[union-attr]
    assert replica.handle(End(0, 0)) == []
    out: list[Any] = []
    pending = list(calls)
    while pending:
        call = pending.pop(0)
        assert isinstance(call, Call)
        for action in replica.handle(Resumed(call.op, call.token, call.value * 10)):
            (pending if isinstance(action, Call) else out).append(action)
    (done,) = out  # the collect after it ends once the last call has: in order
    assert isinstance(done, Report) and isinstance(done.what, SinkDone)
    assert done.what.value == [10, 20, 30]


def test_a_plain_flow_call_that_raises_fails_the_run_naming_the_operator() -> None:
    f = sperse.Flow("plain")
    f.source([]).map(fn, name="call").collect()
    replica = Replica(physical(f.plan), StageId(1), 0)
    (call,) = replica.handle(Batch(0, 0, ["x"]))
    assert isinstance(call, Call)
    (report,) = replica.handle(Resumed(call.op, call.token, error=KeyError("k")))
    assert report.what.operator == "call"  # type: ignore[union-attr]
    assert replica.failed


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda s: s.map(len, max_in_flight=3), r"map\(max_in_flight=...\) is for async def"),
        (lambda s: s.map(fn, max_in_flight=0), "max_in_flight must be a positive int"),
        (lambda s: s.map(fn, timeout=0), "timeout must be positive"),
        (lambda s: s.filter(fn), "filter: an async def function is for map only"),
        (lambda s: s.key_by(len).map_values(fn), "map_values: an async def function"),
        (lambda s: s.key_by(len).scan(0, fn), "scan: an async def function"),
    ],
)
def test_bad_async_map_options_are_refused(build: Any, match: str) -> None:
    f = sperse.Flow("bad")
    with pytest.raises((TypeError, ValueError), match=match):
        build(f.source([]))
