"""Async operators on Ray: a flow's hosts are Ray actors, whose async methods run on one
event loop of the actor (docs/ray.md), and an async operator's calls run as tasks there; a
call's ``sperse.service(name)`` reaches the service's hosts through the nested Ray cluster
of the call's context (docs/flows.md, "Flows that call flows"). Waits are on Pendings with
deadlines; results against a plain computation."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

import sperse
from sperse._flow.api import OnServers

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.ray

WAIT = 120.0  # a deadline, never a delay


async def square_later(x: int) -> int:
    for _ in range(x % 3):  # calls end out of order
        await asyncio.sleep(0)
    return x * x


def double(x: int) -> int:
    return 2 * x


async def front(x: int) -> int:
    return await sperse.service("rdouble").request(x) + 1


async def step(item: tuple[int, int, int]) -> tuple[int, int, int]:
    """A step down to 1 of ``n``'s walk: an even x halves, an odd one loses 1 (the service
    doubles it, and the step halves that again), counting trips."""
    n, x, k = item
    if x % 2:
        return n, await sperse.service("rdouble").request(x) // 2 - 1, k + 1
    return n, x // 2, k + 1


def halvings(x: int) -> int:
    k = 0
    while x > 1:
        x = x - 1 if x % 2 else x // 2
        k += 1
    return k


@pytest.fixture(scope="module")
def rdouble(ray_cluster: sperse.Cluster) -> Iterator[sperse.Service]:
    f = sperse.Flow("rdouble", cluster=ray_cluster)
    f.requests().map(double, name="double").respond()
    svc = f.serve("rdouble")
    yield svc
    svc.stop()


def test_an_async_map_on_ray_actors(ray_cluster: sperse.Cluster) -> None:
    f = sperse.Flow("squares", cluster=ray_cluster)
    out = f.source(range(500)).map(square_later, max_in_flight=8).on(replicas=2).collect()
    run = f.run()
    assert isinstance(run._handle._config, OnServers)  # type: ignore[attr-defined]
    assert sorted(out.result(WAIT)) == [x * x for x in range(500)]


def test_a_service_on_ray_that_awaits_another(
    ray_cluster: sperse.Cluster, rdouble: sperse.Service
) -> None:
    g = sperse.Flow("rfront", cluster=ray_cluster)
    g.requests().map(front, name="front", max_in_flight=16).respond()
    svc = g.serve("rfront")
    try:
        pendings = [svc.request(i) for i in range(300)]
        assert [p.result(WAIT) for p in pendings] == [2 * i + 1 for i in range(300)]
    finally:
        svc.stop()


def test_a_per_item_loop_on_ray_whose_body_awaits_a_service(
    ray_cluster: sperse.Cluster, rdouble: sperse.Service
) -> None:
    numbers = list(range(1, 100))
    f = sperse.Flow("halve", cluster=ray_cluster)
    out = (
        f.source([(n, n, 0) for n in numbers])
        .iterate(
            lambda s: s.map(step, name="step", max_in_flight=8),
            until=lambda t: t[1] == 1,
            max_rounds=100,
        )
        .collect()
    )
    f.run().result(WAIT)
    assert sorted((n, k) for n, _, k in out.result(WAIT)) == [(n, halvings(n)) for n in numbers]
