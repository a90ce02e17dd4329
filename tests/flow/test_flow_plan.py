"""The planner: which operators chain into one stage, how edges are partitioned, and the
errors of a plan that cannot run. Each case builds a flow and names the stages it must get
(``Flow.explain``: one line per stage)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

import sperse
from sperse._flow.plan import Partition, Role, physical


def ident(x: object) -> object:
    return x


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[sperse.Flow], object]
    stages: list[str]
    servers: int = 1


CASES = [
    Case(
        "a pipeline of one replica is one stage",
        lambda f: f.source([1]).map(ident).filter(bool).collect(),
        ["stage 0 x1: source#0 -> map#1 -> filter#2 -> collect#3"],
    ),
    Case(
        "key-hash between single replicas chains too",
        lambda f: f.source([1]).key_by(ident).fold(0, max).collect(),
        ["stage 0 x1: source#0 -> key_by#1 -> fold#2 -> collect#3"],
    ),
    Case(
        "a change of replica count breaks the chain; forward becomes round-robin",
        lambda f: f.source([1]).map(ident).on(replicas=3).filter(bool).collect(),
        [
            "stage 0 x1: source#0 => round-robin to stage 1",
            "stage 1 x3: map#1 -> filter#2 => round-robin to stage 2",
            "stage 2 x1: collect#3",
        ],
    ),
    Case(
        "keyed operators shuffle by key hash; after them a forward edge keeps the chain",
        lambda f: (
            f.source([1])
            .on(replicas=2)
            .key_by(ident)
            .fold(0, max)
            .on(replicas=4)
            .map_values(ident)
            .collect()
        ),
        [
            "stage 0 x2: source#0 -> key_by#1 => key-hash to stage 1",
            "stage 1 x4: fold#2 -> map_values#3 => round-robin to stage 2",
            "stage 2 x1: collect#4",
        ],
    ),
    Case(
        "a placement change breaks the chain",
        lambda f: f.source([1]).map(ident).on("gpu").collect(),
        [
            "stage 0 x1: source#0 => forward to stage 1",
            "stage 1 x1 on gpu: map#1 -> collect#2",
        ],
    ),
    Case(
        "a stream read twice ends its stage",
        lambda f: [s.collect() for s in [f.source([1]).map(ident)] for _ in range(2)],
        [
            "stage 0 x1: source#0 -> map#1 => forward to stage 1, forward to stage 2",
            "stage 1 x1: collect#2",
            "stage 2 x1: collect#3",
        ],
    ),
    Case(
        "broadcast and per_server",
        lambda f: f.source([1]).broadcast().on(replicas="per_server").collect(),
        [
            "stage 0 x1: source#0 => broadcast to stage 1",
            "stage 1 x3: broadcast#1 => round-robin to stage 2",
            "stage 2 x1: collect#2",
        ],
        servers=3,
    ),
    Case(
        "a per-item loop: the gate is a stage, the body feeds back",
        lambda f: f.source([1]).iterate(lambda s: s.map(ident), bool, name="it").collect(),
        [
            "stage 0 x1: source#0 => forward to stage 1",
            "stage 1 x1: it => forward to stage 2 (body), forward to stage 3 (exit)",
            "stage 2 x1: map#2 => forward to stage 1 (feedback)",
            "stage 3 x1: collect#3",
        ],
    ),
    Case(
        "a bulk loop chains gate, body and fold; its state leaves by the exit",
        lambda f: (
            f.source([1])
            .iterate_bulk(0, lambda s, st: s.map(ident), max, max, max, name="b")
            .collect()
        ),
        [
            "stage 0 x1: source#0 => forward to stage 1",
            "stage 1 x1: b -> map#2 -> b.fold => forward to stage 2 (exit), forward to stage 1 (feedback)",
            "stage 2 x1: collect#4",
        ],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_stages(case: Case) -> None:
    f = sperse.Flow("t")
    case.build(f)
    assert f.explain(servers=case.servers).splitlines() == case.stages


def test_stage_inputs_count_senders() -> None:
    f = sperse.Flow("t")
    f.source([1]).on(replicas=2).key_by(ident).on(replicas=2).reduce(max).on(replicas=3).collect()
    plan = physical(f.plan)
    fold = plan.stages[1]
    assert [(i.port, i.senders) for i in fold.inputs] == [(0, 2)]
    assert plan.stages[0].outputs[0].partition is Partition.HASH
    assert plan.stages[0].outputs[0].role is Role.NORMAL


@dataclass(frozen=True)
class Bad:
    id: str
    build: Callable[[sperse.Flow], object]
    error: str


BAD = [
    Bad("no sink", lambda f: f.source([1]).map(ident), "has no sink"),
    Bad(
        "a dangling operator",
        lambda f: (f.source([1]).map(ident, name="lost"), f.source([2]).collect()),
        "lost: its output goes nowhere",
    ),
    Bad(
        "state in a per-item loop",
        lambda f: (
            f.source([1])
            .iterate(lambda s: s.key_by(ident).fold(0, max).pairs(), bool, name="it")
            .collect()
        ),
        r"cannot hold fold\(\) state",
    ),
    Bad(
        "a loop body that reads from outside",
        lambda f: (
            lambda outside: (
                f.source([1]).iterate(lambda s: s.union(outside), bool, name="it").collect()
            )
        )(f.source([2])),
        "reads a stream from outside",
    ),
    Bad(
        "an empty loop body",
        lambda f: f.source([1]).iterate(lambda s: s, bool, name="it").collect(),
        "the loop's body adds no operator",
    ),
    Bad(
        "a sink inside a loop",
        lambda f: f.source([1]).iterate(lambda s: (s.collect(), s.map(ident))[1], bool).collect(),
        "cannot hold a collect",
    ),
]


@pytest.mark.parametrize("case", BAD, ids=[c.id for c in BAD])
def test_plans_that_cannot_run(case: Bad) -> None:
    f = sperse.Flow("t")
    case.build(f)
    with pytest.raises(ValueError, match=case.error):
        f.explain()


def test_build_time_errors() -> None:
    f = sperse.Flow("t")
    s = f.source([1])
    s.map(ident, name="m")
    with pytest.raises(ValueError, match="called 'm' already"):
        s.map(ident, name="m")
    with pytest.raises(TypeError, match="count=N or seconds=T"):
        s.window()
    with pytest.raises(ValueError, match="replicas must be"):
        s.on(replicas=0)
    with pytest.raises(ValueError, match="max_rounds"):
        s.iterate(lambda x: x.map(ident), bool, max_rounds=0)
    with pytest.raises(ValueError, match="different flows"):
        s.union(sperse.Flow("other").source([2]))
    with pytest.raises(ValueError, match=r"map_wasm: cannot read the module 'm\.wasm'"):
        s.map_wasm("m.wasm", "run")
    with pytest.raises(sperse.errors.SperseError):
        s.on("gpu &")
