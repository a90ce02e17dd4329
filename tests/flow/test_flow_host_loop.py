"""A flow host's methods that wake what waits on its event loop run on that loop.

A remote object runs its ``async def`` methods on its event loop and its other methods in
the thread of the call (:mod:`sperse._exec.objects`). An ``asyncio.Event`` set from another
thread does not wake the loop: what waits on it goes on only when the loop wakes for
something else (a flow host's ``watch``, up to a heartbeat later). So ``retire``, which ends
the long polls of a respond replica's clients after a reshape, must be a coroutine."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import sperse
from sperse._flow.host import ReplicaHost
from sperse._flow.plan import physical
from sperse._flow.rehost import shippable
from sperse._flow.service import Moved
from sperse._serialize import dumps

WAIT = 30.0  # what a poll waits for answers: it must end long before, once retired


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop in a thread of its own, as a remote object has."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(WAIT)
    loop.close()


def call(loop: asyncio.AbstractEventLoop, method: Any, *args: Any) -> Any:
    """As a remote object calls ``method``: on its loop if a coroutine, else right here."""
    if inspect.iscoroutinefunction(method):
        return asyncio.run_coroutine_threadsafe(method(*args), loop).result(WAIT)
    return method(*args)


def test_retiring_a_respond_host_ends_its_clients_polls_at_once(
    loop: asyncio.AbstractEventLoop,
) -> None:
    f = sperse.Flow("svc")
    f.requests().map(str.upper).respond()
    plan = physical(f.plan)
    host = call(loop, ReplicaHost, dumps(shippable(plan)), 0, 0, {})
    poll = asyncio.run_coroutine_threadsafe(host.take("client-1", WAIT), loop)
    asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(WAIT)  # it waits now
    moved = Moved(1, [])
    call(loop, host.retire, moved)
    assert poll.result(WAIT / 3) == [moved]  # not after the poll's own wait
