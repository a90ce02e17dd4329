"""The replica and the controller as pure state machines: events in, actions out, no
threads, no executor. Each case is a flow, a stage and replica, and steps of (event,
the actions expected)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import pytest

import sperse
from sperse._flow.control import Controller, RoundDone
from sperse._flow.messages import (
    Batch,
    Cancel,
    Deliver,
    End,
    FlowError,
    LoopDone,
    LoopWeight,
    OuterEnded,
    Partial,
    Report,
    RoundState,
    Send,
    Settle,
    SinkDone,
    StartRound,
    Stopped,
    Tick,
    WriteFile,
)
from sperse._flow.plan import LoopId, NodeId, PhysicalPlan, StageId, physical
from sperse._flow.replica import Replica

S0, S1, S2, S3 = StageId(0), StageId(1), StageId(2), StageId(3)
L0 = LoopId(0)


def wc(f: sperse.Flow) -> None:
    """source x1 -> split, key_by x2 =hash=> fold x2 -> collect."""
    (
        f.source([])
        .flat_map(str.split)
        .on(replicas=2)
        .key_by(lambda w: w)
        .fold(0, lambda n, w: n + 1)
        .on(replicas=2)
        .collect()
    )


def words(f: sperse.Flow) -> None:
    f.source([]).flat_map(str.split).on(replicas=2).collect()


def halve(f: sperse.Flow) -> None:
    f.source([]).iterate(lambda s: s.map(lambda x: x // 2), lambda x: x <= 1, 3, name="h").collect()


def bulk(f: sperse.Flow) -> None:
    f.source([]).iterate_bulk(
        0,
        lambda s, st: s.map(lambda x: x + st.get()),
        lambda acc, x: acc + x,
        lambda old, parts: sum(parts),
        lambda old, new: new > 100,
        name="b",
        zero=0,
    ).collect()


def timed(f: sperse.Flow) -> None:
    f.source([]).window(seconds=10).collect()


def to_dir(f: sperse.Flow) -> None:
    f.source([]).to_dir("/out")


def plan_of(build: Callable[[sperse.Flow], None]) -> PhysicalPlan:
    f = sperse.Flow("t")
    build(f)
    return physical(f.plan)


def h(word: str, n: int = 2) -> int:
    from sperse._flow.ops import stable_hash

    return stable_hash(word) % n


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[sperse.Flow], None]
    stage: StageId
    replica: int
    steps: list[tuple[Any, list[Any]]]


A = "a"
B = next(c for c in "bcdefgh" if h(c) != h(A))

CASES = [
    Case(
        "a chain splits, keys and spreads by hash; ends go to every replica",
        wc,
        S1,
        0,
        [
            (
                Batch(0, 0, [f"{A} {B} {A}"]),
                sorted(
                    [
                        Send(S2, h(A), Batch(0, 0, [(A, A), (A, A)])),
                        Send(S2, h(B), Batch(0, 0, [(B, B)])),
                    ],
                    key=lambda send: send.replica,
                ),
            ),
            (End(0, 0), [Send(S2, 0, End(0, 0)), Send(S2, 1, End(0, 0))]),
        ],
    ),
    Case(
        "a fold waits for every sender's end, then emits one item per key",
        wc,
        S2,
        1,
        [
            (Batch(0, 0, [("x", "x")]), []),
            (Batch(0, 1, [("x", "x"), ("y", "y")]), []),
            (End(0, 1), []),
            (End(0, 0), [Send(S3, 0, Batch(0, 1, [("x", 2), ("y", 1)])), Send(S3, 0, End(0, 1))]),
        ],
    ),
    Case(
        "round-robin into fewer replicas deals items in turn across batches",
        words,
        S0,
        0,
        [
            (Batch(0, 0, ["a b c"]), [Send(S1, 0, Batch(0, 0, ["a b c"]))]),
            (
                Batch(0, 0, ["d", "e"]),
                [Send(S1, 0, Batch(0, 0, ["e"])), Send(S1, 1, Batch(0, 0, ["d"]))],
            ),
        ],
    ),
    Case(
        "a per-item gate: out, round again (weight 1 created, passed on), or dropped at max",
        halve,
        S1,
        0,
        [
            (
                Batch(0, 0, [1, 8]),
                [
                    Send(S3, 0, Batch(0, 0, [1])),
                    Send(S2, 0, Batch(0, 0, [8], 0, Fraction(1))),
                    Report(LoopWeight(L0, created=Fraction(1))),
                ],
            ),
            (
                Batch(1, 0, [4, 0], 3, Fraction(1, 2)),
                [
                    Send(S3, 0, Batch(0, 0, [0])),
                    Report(LoopWeight(L0, returned=Fraction(1, 2), exceeded=1, example="4")),
                ],
            ),
            (End(0, 0), [Report(OuterEnded(L0, 0))]),
            (LoopDone(L0), [Send(S3, 0, End(0, 0))]),
        ],
    ),
    Case(
        "a per-item body passes its weight on, one round more; returns it when nothing is left",
        halve,
        S2,
        0,
        [
            (
                Batch(0, 0, [8], 0, Fraction(1, 2)),
                [Send(S1, 0, Batch(1, 0, [4], 1, Fraction(1, 2)))],
            ),
        ],
    ),
    Case(
        "a bulk gate holds its input until a round starts; the chain runs the round",
        bulk,
        S1,
        0,
        [
            (Batch(0, 0, [1, 2]), []),
            (End(0, 0), [Report(OuterEnded(L0, 0))]),
            (
                StartRound(L0, 0, 10),
                [
                    Send(S1, 0, Batch(1, 0, [11, 12])),
                    Send(S1, 0, End(1, 0, 0)),
                    Report(Partial(L0, 0, 0, 23)),
                ],
            ),
            (StartRound(L0, 1, 23), []),  # waits for the items of round 0 to come back
            (Batch(1, 0, [11, 12]), []),
            (
                End(1, 0, 0),
                [
                    Send(S1, 0, Batch(1, 0, [34, 35], 1)),
                    Send(S1, 0, End(1, 0, 1)),
                    Report(Partial(L0, 1, 0, 69)),
                ],
            ),
            (LoopDone(L0, 69), [Send(S2, 0, Batch(0, 0, [69])), Send(S2, 0, End(0, 0))]),
        ],
    ),
    Case(
        "a time window closes on a tick",
        timed,
        S0,
        0,
        [
            (Batch(0, 0, [1, 2], now=5.0), []),
            (Batch(0, 0, [3], now=12.0), []),  # into the next window: the first closes...
            (Tick(25.0), []),
        ],
    ),
    Case(
        "to_dir asks for its file and reports its path",
        to_dir,
        S0,
        0,
        [
            (Batch(0, 0, ["x", "y"]), []),
            (
                End(0, 0),
                [
                    WriteFile("/out/part-00000", "x\ny\n"),
                    Report(SinkDone(NodeId(1), 0, ["/out/part-00000"])),
                ],
            ),
        ],
    ),
    Case(
        "an operator that raises fails with its name and the item; then nothing",
        wc,
        S1,
        1,
        [
            (Batch(0, 0, [3]), ["FAIL flat_map#1 3"]),
            (Batch(0, 0, ["a"]), []),
        ],
    ),
]


def shown(actions: list[Any]) -> list[Any]:
    out = []
    for a in actions:
        if isinstance(a, Report) and isinstance(a.what, FlowError):
            out.append(f"FAIL {a.what.operator} {a.what.item}")
        else:
            out.append(a)
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_replica(case: Case) -> None:
    replica = Replica(plan_of(case.build), case.stage, case.replica)
    for n, (event, expected) in enumerate(case.steps):
        assert shown(replica.handle(event)) == expected, f"step {n}: {event}"


def test_a_time_window_emits_when_its_span_is_over() -> None:
    f = sperse.Flow("t")
    f.source([]).window(seconds=10).collect()
    plan = physical(f.plan)
    replica = Replica(plan, S0, 0)
    assert replica.handle(Batch(0, 0, [1, 2], now=5.0)) == []
    # The collect is chained: the window's lists reach it; its value says what came out.
    replica.handle(Batch(0, 0, [3], now=12.0))
    replica.handle(Tick(25.0))
    (done,) = replica.handle(End(0, 0))
    assert done == Report(SinkDone(NodeId(2), 0, [[1, 2], [3]]))


# -- the controller ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ControlCase:
    id: str
    build: Callable[[sperse.Flow], None]
    steps: list[tuple[Any, list[Any]]]
    rounds: list[RoundDone] | None = None


ERR = FlowError("m", "1", sperse._core.ErrorInfo("raised", "ValueError", "no"))  # type: ignore[attr-defined]

CONTROL = [
    ControlCase(
        "a sink settles when each replica reported; then the run stops",
        wc,
        [(Report(SinkDone(NodeId(4), 0, {"a": 1})), [Settle(NodeId(4), {"a": 1}), Stopped()])],
    ),
    ControlCase(
        "a per-item loop ends when its gates saw their input end and all weight came back",
        halve,
        [
            (Report(LoopWeight(L0, created=Fraction(1))), []),
            (Report(OuterEnded(L0, 0)), []),
            (Report(LoopWeight(L0, returned=Fraction(1, 2))), []),
            (Report(LoopWeight(L0, returned=Fraction(1, 2))), [Deliver(S1, 0, LoopDone(L0))]),
        ],
    ),
    ControlCase(
        "weight returned before it was reported created: no early end",
        halve,
        [
            (Report(LoopWeight(L0, returned=Fraction(1))), []),
            (Report(OuterEnded(L0, 0)), []),  # its creation is reported before this, always
        ],
    ),
    ControlCase(
        "bulk rounds: start with the initial state, combine the partials, stop on until",
        bulk,
        [
            (Report(OuterEnded(L0, 0)), [Deliver(S1, 0, StartRound(L0, 0, 0))]),
            (Report(Partial(L0, 0, 0, 60)), [Deliver(S1, 0, StartRound(L0, 1, 60))]),
            (Report(Partial(L0, 1, 0, 180)), [Deliver(S1, 0, LoopDone(L0, 180))]),
        ],
        [RoundDone("b", 0, None), RoundDone("b", 1, None)],
    ),
    ControlCase(
        "a failure settles every sink with it, once",
        wc,
        [(Report(ERR), [Settle(NodeId(4), error=ERR), Stopped(ERR)]), (Report(ERR), [])],
    ),
    ControlCase(
        "a cancel settles every sink cancelled",
        wc,
        [(Cancel(), [Settle(NodeId(4), cancelled=True), Stopped(cancelled=True)])],
    ),
]


@pytest.mark.parametrize("case", CONTROL, ids=[c.id for c in CONTROL])
def test_controller(case: ControlCase) -> None:
    controller = Controller(plan_of(case.build))
    for n, (event, expected) in enumerate(case.steps):
        assert controller.handle(event) == expected, f"step {n}: {event}"
    if case.rounds is not None:
        assert controller.rounds == case.rounds


def test_items_dropped_at_max_rounds_fail_the_loop_saying_how_many() -> None:
    controller = Controller(plan_of(halve))
    controller.handle(Report(LoopWeight(L0, created=Fraction(1))))
    controller.handle(Report(OuterEnded(L0, 0)))
    settle, stopped = controller.handle(
        Report(LoopWeight(L0, returned=Fraction(1), exceeded=2, example="7"))
    )
    assert isinstance(settle, Settle) and settle.error is not None
    error = settle.error.to_exception("t")
    assert "2 items were still going round after max_rounds=3" in str(error)
    assert error.operator == "h" and error.item == "7"
    assert stopped == Stopped(settle.error)


def test_round_state_is_forwarded_once_per_round() -> None:
    f = sperse.Flow("t")
    f.source([]).replay(
        0, lambda s, st: s.map(lambda x: x).on(replicas=2).map(lambda x: x), max, max, max
    ).collect()
    plan = physical(f.plan)
    # the gate runs with the source (a replay's gate chains to it); the body's first map has
    # a stage of its own (2 replicas)
    (stage,) = [s.id for s in plan.stages if plan.node(s.nodes[0]).kind == "map"]
    body = Replica(plan, stage, 0)
    assert body.handle(RoundState(L0, 0, 5)) == []  # chained to the fold: nothing further
    assert plan.loops[L0].ref is not None and plan.loops[L0].ref.get() == 5
    assert body.handle(RoundState(L0, 0, 6)) == []
    assert plan.loops[L0].ref.get() == 5
