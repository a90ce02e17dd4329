"""Flows that call flows, in this process: async operators (``map`` of an ``async def``)
that ``await sperse.service(name).request(x)``, chains and cycles of services under many
concurrent requests, the in-flight bound, order, errors and timeouts. Waits are on
Pendings and events with deadlines, never sleeps."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import sperse
from sperse._flow.api import InProcess

WAIT = 60.0


def serve(name: str, fn: Any, **options: Any) -> sperse.Service:
    f = sperse.Flow(name)
    f.requests().map(fn, name=f"{name}_op", **options).respond()
    return f.serve(name, executor=InProcess())


@pytest.fixture
def stopping() -> Iterator[list[sperse.Service]]:
    """The services a test serves, stopped at its end."""
    served: list[sperse.Service] = []
    yield served
    for svc in served:
        if svc.running:
            svc.stop()


class Gauge:
    """The most calls running at once (calls run on one loop thread: no lock needed)."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0

    def __enter__(self) -> None:
        self.now += 1
        self.most = max(self.most, self.now)

    def __exit__(self, *_: object) -> None:
        self.now -= 1


def test_a_service_that_calls_another_answers_1000_concurrent_requests(
    stopping: list[sperse.Service],
) -> None:
    gauge = Gauge()

    async def front(x: int) -> int:
        with gauge:
            return await sperse.service("double").request(x) + 1

    stopping.append(serve("double", lambda x: 2 * x))
    svc = serve("front", front, max_in_flight=16)
    stopping.append(svc)
    pendings = [svc.request(i) for i in range(1000)]
    assert [p.result(WAIT) for p in pendings] == [2 * i + 1 for i in range(1000)]
    assert 1 < gauge.most <= 16  # concurrent, within the bound


async def even(n: int) -> bool:
    return True if n == 0 else await sperse.service("odd").request(n - 1)


async def odd(n: int) -> bool:
    return False if n == 0 else await sperse.service("even").request(n - 1)


def test_a_pair_of_services_that_call_each_other_answers_1000_concurrent_requests(
    stopping: list[sperse.Service],
) -> None:
    # a bound of 4 calls per depth with 1,000 requests in, and recursions 9 deep
    stopping += [serve("even", even, max_in_flight=4), serve("odd", odd, max_in_flight=4)]
    results: dict[int, list[Any]] = {}

    def client(t: int) -> None:
        name = "even" if t % 2 == 0 else "odd"
        svc = sperse.service(name)
        pendings = [svc.request((t + i) % 10) for i in range(250)]
        results[t] = [p.result(WAIT) for p in pendings]

    threads = [threading.Thread(target=client, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    for t in range(4):
        parity = 0 if t % 2 == 0 else 1
        assert results[t] == [(t + i) % 10 % 2 == parity for i in range(250)]


async def fact(n: int) -> int:
    return 1 if n <= 1 else n * await sperse.service("fact").request(n - 1)


def test_a_service_that_calls_itself_with_one_call_at_a_time_answers_1000_requests(
    stopping: list[sperse.Service],
) -> None:
    # one slot per depth: every call waits on a deeper request, which takes the next slot
    svc = serve("fact", fact, max_in_flight=1)
    stopping.append(svc)
    pendings = [svc.request(i % 8) for i in range(1000)]
    assert [p.result(WAIT) for p in pendings] == [math.factorial(i % 8) for i in range(1000)]


def test_a_clients_requests_are_answered_in_order_though_calls_end_out_of_order(
    stopping: list[sperse.Service],
) -> None:
    ended = {"n": 0}
    last_ended = asyncio.Event()  # not bound to a loop until awaited (on the calls' loop)

    async def held(x: int) -> int:
        if x == 0:  # the first request's call ends after every other one
            async with asyncio.timeout(WAIT):
                await last_ended.wait()
        else:
            ended["n"] += 1
            if ended["n"] == 19:
                last_ended.set()
        return x

    f = sperse.Flow("ordered")
    (
        f.requests()
        .map(held, name="held")
        .key_by(lambda x: "all")
        .scan(0, lambda n, x: (n + 1, (x, n + 1)), name="arrival")
        .map(lambda pair: pair[1], name="show")
        .respond()
    )
    svc = f.serve("ordered", executor=InProcess())
    stopping.append(svc)
    pendings = [svc.request(i) for i in range(20)]
    # each request reached the scan after the ones sent before it
    assert [p.result(WAIT) for p in pendings] == [(i, i + 1) for i in range(20)]


def test_a_failure_in_the_called_service_fails_the_callers_request_naming_both(
    stopping: list[sperse.Service],
) -> None:
    def check(x: int) -> int:
        if x < 0:
            raise ValueError(f"negative: {x}")
        return x

    async def front(x: int) -> int:
        return await sperse.service("checker").request(x)

    stopping.append(serve("checker", check))
    svc = serve("caller", front)
    stopping.append(svc)
    bad, good = svc.request(-1), svc.request(1)
    with pytest.raises(sperse.FlowFailed) as info:
        bad.result(WAIT)
    message = str(info.value)
    assert "flow 'caller': the operator 'caller_op' on the item -1" in message
    assert "flow 'checker': the operator 'checker_op' on the item -1 raised ValueError" in message
    assert info.value.operator == "caller_op" and info.value.type_name == "ValueError"
    assert "negative: -1" in info.value.remote_traceback
    assert good.result(WAIT) == 1  # the service goes on


def test_a_call_that_takes_longer_than_its_timeout_fails_its_request(
    stopping: list[sperse.Service],
) -> None:
    never = asyncio.Event()

    async def stuck(x: int) -> int:
        if x == 0:
            await never.wait()
        return x

    svc = serve("stuck", stuck, timeout=0.2)
    stopping.append(svc)
    slow, fast = svc.request(0), svc.request(1)
    with pytest.raises(
        sperse.FlowFailed, match=r"did not end within its timeout of 0\.2 s"
    ) as info:
        slow.result(WAIT)
    assert info.value.type_name == "sperse.errors.TaskTimeout"
    assert fast.result(WAIT) == 1


def test_a_request_sent_from_a_call_ends_with_the_call_at_the_latest(
    stopping: list[sperse.Service],
) -> None:
    never = asyncio.Event()
    sent: list[sperse.Pending[Any]] = []
    loops: list[asyncio.AbstractEventLoop] = []

    async def stuck(x: int) -> int:
        loops.append(asyncio.get_running_loop())
        await never.wait()
        return x

    async def outer(x: int) -> int:
        pending = sperse.service("deep").request(x)  # no timeout of its own
        sent.append(pending)
        return await pending

    stopping.append(serve("deep", stuck, timeout=None))
    svc = serve("shallow", outer, timeout=0.3)
    stopping.append(svc)
    with pytest.raises(sperse.FlowFailed, match=r"timeout of 0\.3 s"):
        svc.request(1).result(WAIT)
    with pytest.raises(sperse.TaskTimeout):  # it had the call's time left as its timeout
        sent[0].result(WAIT)
    loops[0].call_soon_threadsafe(never.set)  # so that the stuck service can stop


def test_a_cycle_without_a_base_case_fails_at_the_depth_limit(
    stopping: list[sperse.Service],
) -> None:
    async def forever(x: int) -> int:
        return await sperse.service("forever").request(x + 1)

    svc = serve("forever", forever)
    stopping.append(svc)
    with pytest.raises(sperse.FlowFailed, match="nested 33 calls deep") as info:
        svc.request(0).result(WAIT)
    assert info.value.type_name == "RecursionError"


def test_stop_answers_the_requests_whose_calls_are_running(
    stopping: list[sperse.Service],
) -> None:
    release = threading.Event()

    async def waits(x: int) -> int:
        await asyncio.to_thread(release.wait, WAIT)
        return x

    svc = serve("draining", waits)
    pendings = [svc.request(i) for i in range(10)]
    stopper = threading.Thread(target=svc.stop)
    stopper.start()
    release.set()
    stopper.join(WAIT)
    assert [p.result(WAIT) for p in pendings] == list(range(10))
    with pytest.raises(sperse.ServiceStopped):
        svc.request(11)


def test_update_of_an_async_operator_takes_an_async_function(
    stopping: list[sperse.Service],
) -> None:
    async def one(x: int) -> str:
        return f"v1:{x}"

    async def two(x: int) -> str:
        return f"v2:{x}"

    svc = serve("swapped", one)
    stopping.append(svc)
    assert svc.request(1).result(WAIT) == "v1:1"
    with pytest.raises(TypeError, match="an async def function for an async map"):
        svc.update("swapped_op", str)
    svc.update("swapped_op", two)
    assert svc.request(2).result(WAIT) == "v2:2"


def test_a_plain_flow_maps_with_an_async_function_in_order_within_its_bound() -> None:
    gauge = Gauge()

    async def square(x: int) -> int:
        with gauge:
            await asyncio.sleep(0)  # let the others start
            return x * x

    f = sperse.Flow("squares")
    out = f.source(range(2000)).map(square, name="square", max_in_flight=8).collect()
    f.run(executor=InProcess())
    assert out.result(WAIT) == [x * x for x in range(2000)]
    assert 1 < gauge.most <= 8
