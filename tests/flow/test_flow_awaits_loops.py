"""Async operators inside loops (``iterate``, ``iterate_bulk``, ``replay``): the body
replica keeps an item's share of the loop's weight while its call is in flight (pure, the
test playing the shell), and whole runs in this process under random interleavings, the
calls ending out of order, checked against plain loops."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import pytest
import test_flow_algorithms as alg

import sperse
from sperse._flow.api import InProcess
from sperse._flow.awaits import Call, Resumed
from sperse._flow.looping import split
from sperse._flow.messages import Batch, LoopWeight, Report, Send
from sperse._flow.plan import StageId, physical
from sperse._flow.replica import Replica

WAIT = 60.0  # a deadline, never a delay


async def astep(item: tuple[int, int, int]) -> tuple[int, int, int]:
    """Collatz's step, after yielding to the loop a few times (so calls end out of order)."""
    for _ in range(item[1] % 3):
        await asyncio.sleep(0)
    return alg.step(item)


async def adouble(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


@pytest.mark.parametrize("parts", [1, 2, 3, 5, 8, 1000])
def test_split_is_exact_positive_and_dyadic(parts: int) -> None:
    shares = split(Fraction(3, 4), parts)
    assert len(shares) == parts and sum(shares) == Fraction(3, 4) and min(shares) > 0
    assert all(s.denominator & (s.denominator - 1) == 0 for s in shares)


def body_replica() -> Replica:
    f = sperse.Flow("loop")
    f.source([]).iterate(lambda s: s.map(astep, name="call"), lambda t: t[1] == 1).collect()
    plan = physical(f.plan)
    (stage,) = [s for s in plan.stages if [plan.node(n).name for n in s.nodes] == ["call"]]
    return Replica(plan, StageId(stage.id), 0)


def weights(actions: list[Any]) -> tuple[Fraction, Fraction]:
    """The weight sent on and the weight reported returned by ``actions``."""
    sent = sum((a.message.weight for a in actions if isinstance(a, Send)), Fraction(0))
    returned = sum((a.what.returned for a in actions if isinstance(a, Report)), Fraction(0))
    return sent, returned


def test_a_body_replica_holds_the_weight_of_items_whose_calls_run() -> None:
    replica = body_replica()
    items = [(n, n, 0) for n in (6, 7, 8)]
    calls = replica.handle(Batch(0, 0, items, 2, Fraction(1, 2)))
    assert all(isinstance(c, Call) for c in calls) and len(calls) == 3
    assert weights(calls) == (0, 0)  # nothing sent, nothing returned: all held
    assert replica.calls == 3
    total = Fraction(0)
    for call in reversed(calls):  # they end in reverse: ordered, they go on at the last
        assert isinstance(call, Call)
        actions = replica.handle(Resumed(call.op, call.token, alg.step(call.value)))
        sent, returned = weights(actions)
        total += sent + returned
        for a in actions:
            if isinstance(a, Send):
                assert a.message.round == 3  # one more trip
    assert total == Fraction(1, 2) and replica.calls == 0


def test_a_body_replica_returns_the_weight_of_an_empty_batch() -> None:
    replica = body_replica()
    (report,) = replica.handle(Batch(0, 0, [], 0, Fraction(1)))
    assert isinstance(report, Report) and isinstance(report.what, LoopWeight)
    assert report.what.returned == 1


def collatz(numbers: list[int], seed: int | None, r: int, **kw: Any) -> list[tuple[int, int]]:
    f = sperse.Flow("collatz")
    out = (
        f.source([(n, n, 0) for n in numbers])
        .iterate(
            lambda s: s.map(astep, name="astep", **kw).on(replicas=r),
            until=lambda t: t[1] == 1,
            max_rounds=1000,
        )
        .map(lambda t: (t[0], t[2]))
        .collect()
    )
    f.run(executor=InProcess(seed=seed, batch=16))
    return sorted(out.result(WAIT))


@pytest.mark.parametrize(
    ("seed", "r", "kw"),
    [
        (None, 1, {}),
        (1, 2, {"max_in_flight": 2}),
        (2, 3, {"ordered": False}),
        (3, 2, {"max_in_flight": 1, "ordered": False}),
    ],
)
def test_collatz_with_an_async_step_in_a_per_item_loop(
    seed: int | None, r: int, kw: dict[str, Any]
) -> None:
    numbers = list(range(1, 120))
    assert collatz(numbers, seed, r, **kw) == [(n, alg.collatz_steps(n)) for n in numbers]


def test_a_per_item_loop_with_an_async_body_still_counts_the_items_left() -> None:
    f = sperse.Flow("up")
    f.source(range(10)).iterate(
        lambda s: s.map(adouble, name="double"), until=lambda x: x > 100, max_rounds=3, name="up"
    ).collect()
    with pytest.raises(sperse.FlowFailed) as info:
        f.run(executor=InProcess(seed=4, batch=4)).result(WAIT)
    assert "10 items were still going round after max_rounds=3" in str(info.value)


@pytest.mark.parametrize("seed", [None, 5])
def test_iterate_bulk_with_an_async_body(seed: int | None) -> None:
    f = sperse.Flow("grow")
    out = (
        f.source([1, 2, 3])
        .iterate_bulk(
            0,
            lambda s, st: s.map(adouble, name="double").on(replicas=2).map(lambda x: x),
            lambda acc, x: acc + x,
            lambda old, parts: sum(parts),
            until=lambda old, new: new > 40,
            zero=0,
        )
        .collect()
    )
    f.run(executor=InProcess(seed=seed, batch=2))
    assert out.result(WAIT) == [48]  # 12, 24, 48


@pytest.fixture
def offset_service() -> Iterator[sperse.Service]:
    f = sperse.Flow("offset")
    f.requests().map(lambda x: x + 1000, name="add").respond()
    svc = f.serve("offset")
    yield svc
    svc.stop()


def test_replay_whose_body_awaits_a_service(offset_service: sperse.Service) -> None:
    """Each round adds ``sum(x + 1000 for x in input)`` to the state, the offsets coming
    from a request to another service for every item."""

    async def shifted(x: int) -> int:
        return int(await sperse.service("offset").request(x, timeout=WAIT))

    f = sperse.Flow("shift")
    data = list(range(20))
    out = (
        f.source(data)
        .replay(
            0,
            lambda s, st: s.map(shifted, name="shift", max_in_flight=4),
            lambda acc, x: acc + x,
            lambda old, parts: old + sum(parts),
            until=lambda old, new: False,
            max_rounds=3,
            zero=0,
        )
        .collect()
    )
    f.run(executor=InProcess(seed=6, batch=8))
    assert out.result(WAIT) == [3 * sum(x + 1000 for x in data)]
