"""Flows that call flows on real servers (a 2-server ``LocalCluster``): async operators on
the hosts' event loops awaiting other services, a chain and a cycle of services under
1,000 concurrent requests, a callee's failure, and a plain flow calling a service. Waits
are on Pendings with deadlines."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import sperse
from sperse._up import LocalCluster

WAIT = 90.0


def double(x: int) -> int:
    if x < 0:
        raise ValueError(f"negative: {x}")
    return 2 * x


async def front(x: int) -> int:
    return await sperse.service("double").request(x) + 1


async def even(n: int) -> bool:
    return True if n == 0 else await sperse.service("odd").request(n - 1)


async def odd(n: int) -> bool:
    return False if n == 0 else await sperse.service("even").request(n - 1)


def serve(cluster: sperse.Cluster, name: str, fn: Any, replicas: int = 1, **kw: Any) -> Any:
    f = sperse.Flow(name, cluster=cluster)
    f.requests().map(fn, name=f"{name}_op", **kw).on(replicas=replicas).respond()
    return f.serve(name)


@pytest.fixture(scope="module")
def client() -> Iterator[sperse.Cluster]:
    with LocalCluster(2, workers=2) as up:
        cluster = sperse.connect(up.url, token=up.token)
        try:
            with cluster:
                yield cluster
        finally:
            cluster.close()


@pytest.fixture(scope="module")
def chain(client: sperse.Cluster) -> Iterator[tuple[sperse.Service, sperse.Service]]:
    """``front`` (2 replicas, one per server) calls ``double``."""
    inner = serve(client, "double", double)
    outer = serve(client, "front", front, replicas=2, max_in_flight=16)
    yield outer, inner
    outer.stop()
    inner.stop()


def test_a_service_that_calls_another_answers_1000_concurrent_requests(
    chain: tuple[sperse.Service, sperse.Service],
) -> None:
    outer, _ = chain
    hosts = outer._run._handle.hosts() if outer._run is not None else []
    assert {h["server"] for h in hosts if "front_op" in h["operators"]} == {
        "server-1",
        "server-2",
    }
    results: dict[int, list[Any]] = {}

    def user(t: int) -> None:
        pendings = [outer.request(t * 1000 + i) for i in range(250)]
        results[t] = [p.result(WAIT) for p in pendings]

    threads = [threading.Thread(target=user, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    for t in range(4):
        assert results[t] == [2 * (t * 1000 + i) + 1 for i in range(250)]


def test_a_failure_in_the_called_service_fails_the_callers_request_naming_both(
    chain: tuple[sperse.Service, sperse.Service],
) -> None:
    outer, _ = chain
    bad, good = outer.request(-3), outer.request(3)
    with pytest.raises(sperse.FlowFailed) as info:
        bad.result(WAIT)
    message = str(info.value)
    assert "flow 'front': the operator 'front_op' on the item -3" in message
    assert "flow 'double': the operator 'double_op' on the item -3 raised ValueError" in message
    assert "negative: -3" in info.value.remote_traceback
    assert good.result(WAIT) == 7


@pytest.mark.slow
def test_a_pair_of_services_that_call_each_other_answers_1000_concurrent_requests(
    client: sperse.Cluster,
) -> None:
    # 4 calls at once per replica and depth, 1,000 requests in, recursions up to 9 deep
    pair = [
        serve(client, "even", even, max_in_flight=4),
        serve(client, "odd", odd, max_in_flight=4),
    ]
    try:
        results: dict[int, list[Any]] = {}

        def user(t: int) -> None:
            svc = pair[t % 2]
            pendings = [svc.request((t + i) % 10) for i in range(250)]
            results[t] = [p.result(WAIT) for p in pendings]

        threads = [threading.Thread(target=user, args=(t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        for t in range(4):
            parity = t % 2
            assert results[t] == [(t + i) % 10 % 2 == parity for i in range(250)]
    finally:
        for svc in pair:
            svc.stop()


async def fact(n: int) -> int:
    return 1 if n <= 1 else n * await sperse.service("fact").request(n - 1)


@pytest.mark.slow
def test_a_service_that_calls_itself_with_one_call_at_a_time_answers_1000_requests(
    client: sperse.Cluster,
) -> None:
    svc = serve(client, "fact", fact, replicas=2, max_in_flight=1)
    try:
        pendings = [svc.request(i % 8) for i in range(1000)]
        assert [p.result(WAIT) for p in pendings] == [math.factorial(i % 8) for i in range(1000)]
    finally:
        svc.stop()


def test_a_plain_flow_on_servers_calls_a_service_from_an_async_map(
    chain: tuple[sperse.Service, sperse.Service],
    client: sperse.Cluster,
) -> None:
    f = sperse.Flow("caller", cluster=client)
    out = f.source(range(3000)).map(front, name="call", max_in_flight=32).collect()
    f.run().result(WAIT)
    assert out.result(WAIT) == [2 * x + 1 for x in range(3000)]


async def step_by_service(item: tuple[int, int, int]) -> tuple[int, int, int]:
    """Collatz's step, its arithmetic done by the ``double`` service (an even x halves;
    an odd one goes to 3x + 1 = double(x) + x + 1)."""
    n, x, k = item
    if x % 2 == 0:
        return n, x // 2, k + 1
    return n, await sperse.service("double").request(x) + x + 1, k + 1


def collatz_steps(n: int) -> int:
    steps = 0
    while n != 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return steps


def test_a_per_item_loop_on_servers_whose_body_awaits_a_service(
    chain: tuple[sperse.Service, sperse.Service],
    client: sperse.Cluster,
) -> None:
    """Items awaiting their calls count as in the loop: every number comes out, each after
    its own number of trips."""
    numbers = list(range(1, 300))
    f = sperse.Flow("collatz_calls", cluster=client)
    out = (
        f.source([(n, n, 0) for n in numbers])
        .iterate(
            lambda s: s.map(step_by_service, name="step", max_in_flight=8).on(replicas=2),
            until=lambda t: t[1] == 1,
            max_rounds=1000,
        )
        .map(lambda t: (t[0], t[2]))
        .collect()
    )
    f.run().result(WAIT)
    assert sorted(out.result(WAIT)) == [(n, collatz_steps(n)) for n in numbers]


def test_replay_on_servers_whose_body_awaits_a_service(
    chain: tuple[sperse.Service, sperse.Service],
    client: sperse.Cluster,
) -> None:
    data = list(range(200))
    f = sperse.Flow("replay_calls", cluster=client)
    out = (
        f.source(data)
        .replay(
            0,
            lambda s, st: s.map(front, name="front", max_in_flight=16).on(replicas=2),
            lambda acc, x: acc + x,
            lambda old, parts: old + sum(parts),
            until=lambda old, new: False,
            max_rounds=3,
            zero=0,
        )
        .collect()
    )
    f.run().result(WAIT)
    assert out.result(WAIT) == [3 * sum(2 * x + 1 for x in data)]
