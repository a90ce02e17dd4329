"""The Ray store's shell around the store's table (``sperse._backends.ray.state``), in this
process: the actor's class with its methods on an event loop, and the worker's side (its
``Link``, under the shared ``State`` code) over a handle that runs them here.

The table's own rules are tested in tests/state/test_table.py, and ``sperse.state()`` on a
real Ray in test_ray_state.py and tests/state/test_state.py. Here: what the shell adds (a
request that waits for a lock, the liveness check of the lock's holder and of the request's
own process, connections dropped by their caller or refused after a restart), with no sleep:
the store's coroutines go on at each turn of the loop, and waits have a deadline.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Awaitable, Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest

import sperse

ray = pytest.importorskip("ray")

from sperse._backends.ray import state as ray_state  # noqa: E402  (needs Ray)
from sperse._backends.ray.state import (  # noqa: E402
    Process,
    RayState,
    _Link,
    _NodeStore,
    _pid_namespace,
    _start_time,
)
from sperse._state.client import Connection  # noqa: E402
from sperse._state.table import Value, read_reply  # noqa: E402
from sperse._state.wire import DOUBLE, ErrorCode, Kind, Op, Status  # noqa: E402

pytestmark = pytest.mark.ray

WAIT = 60.0  # a deadline, never a delay
OK, ERR = Status.OK, Status.ERROR


def _in_loop(scenario: Callable[[_NodeStore], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(_NodeStore()), WAIT))


async def _until(done: Callable[[], bool]) -> None:
    while not done():
        await asyncio.sleep(0)  # a turn of the loop: the store's coroutines go on


def _this_process(worker: str = "w1", started: int | None = None) -> Process:
    """This process as Ray worker ``worker``: its start time (or ``started``, as if the pid
    had been reused by another process), in this pid namespace, so the store looks at
    ``/proc``."""
    pid = os.getpid()
    return (worker, pid, _start_time(pid) if started is None else started, _pid_namespace())


async def ask(
    store: _NodeStore, connection: str, op: Op, *values: Value, process: Process | None = None
) -> tuple[int, int, object] | None:
    """One request of ``connection`` for the key "k": the reply, its value decoded; None when
    the store refused the connection."""
    instance, _ = await store.hello()
    answer = await store.call(
        instance, connection, process or _this_process(), op, b"k", list(values)
    )
    if answer is None:
        return None
    status, kind, data = read_reply(answer)
    if status == OK and kind == Kind.INT:
        return status, kind, int.from_bytes(data, "big", signed=True)
    if status == OK and kind == Kind.FLOAT:
        return status, kind, DOUBLE.unpack(data)[0]
    if status == OK and kind == Kind.MISSING:
        return status, kind, None
    return status, kind, data


LOCKED = (OK, Kind.MISSING, None)  # a lock taken of a key that has no value


@pytest.fixture
def quick_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ray_state, "HOLDER_CHECK", 0.01)


# ---- the actor's class ---------------------------------------------------------------------


def test_a_drop_that_comes_before_its_request_refuses_it() -> None:
    async def scenario(store: _NodeStore) -> None:
        await store.drop("c1")  # calls of one caller may start out of order
        assert await ask(store, "c1", Op.LOCK_GET) is None
        assert await ask(store, "c2", Op.LOCK_GET) == LOCKED

    _in_loop(scenario)


def test_a_request_withdrawn_while_it_waits_never_takes_the_lock() -> None:
    async def scenario(store: _NodeStore) -> None:
        assert await ask(store, "c1", Op.LOCK_GET) == LOCKED
        waiter = asyncio.create_task(ask(store, "c2", Op.LOCK_GET))
        await _until(lambda: store._parked == 1)
        await store.drop("c2")  # its caller was cancelled
        assert await ask(store, "c1", Op.SET_UNLOCK, 1) == (OK, Kind.MISSING, None)
        assert await waiter is None
        assert (await store.stats())["locks"] == 0

    _in_loop(scenario)


def test_a_call_cancelled_while_it_waits_drops_its_connection() -> None:
    async def scenario(store: _NodeStore) -> None:
        assert await ask(store, "c1", Op.LOCK_GET) == LOCKED
        waiter = asyncio.create_task(ask(store, "c2", Op.LOCK_GET))
        await _until(lambda: store._parked == 1)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert await ask(store, "c1", Op.UNLOCK) == (OK, Kind.MISSING, None)
        assert (await store.stats())["locks"] == 0  # nobody took the lock for it
        assert await ask(store, "c2", Op.GET) is None

    _in_loop(scenario)


def test_writes_wait_for_the_lock_but_not_its_own_holders() -> None:
    async def scenario(store: _NodeStore) -> None:
        assert await ask(store, "c1", Op.LOCK_GET) == LOCKED
        assert await ask(store, "c1", Op.SET, 1) == (OK, Kind.MISSING, None)  # inside its update
        write = asyncio.create_task(ask(store, "c2", Op.INCR, 5))
        await _until(lambda: store._parked == 1)
        assert not write.done()
        assert await ask(store, "c3", Op.GET) == (OK, Kind.INT, 1)  # reads do not wait
        await ask(store, "c1", Op.SET_UNLOCK, 10)
        assert await write == (OK, Kind.INT, 15)

    _in_loop(scenario)


@pytest.mark.usefixtures("quick_checks")
def test_a_holder_whose_pid_is_another_process_now_is_taken_for_dead() -> None:
    async def scenario(store: _NodeStore) -> None:
        reused = _this_process(started=1)  # the pid lives, but started at another time
        assert await ask(store, "c1", Op.LOCK_GET, process=reused) == LOCKED
        write = ask(store, "c2", Op.INCR, 1, process=_this_process("w2"))
        assert await write == (OK, Kind.INT, 1)  # after a check found the holder dead
        stats = await store.stats()
        assert stats["locks"] == 0 and stats["dead"] == 1
        assert await ask(store, "c1", Op.UNLOCK, process=reused) is None  # dropped

    _in_loop(scenario)


@pytest.mark.usefixtures("quick_checks")
def test_a_live_holder_is_checked_and_kept() -> None:
    async def scenario(store: _NodeStore) -> None:
        assert await ask(store, "c1", Op.LOCK_GET) == LOCKED
        waiter = asyncio.create_task(ask(store, "c2", Op.ONCE_GET))
        await _until(lambda: store._checks >= 3)
        assert not waiter.done()
        await ask(store, "c1", Op.SET_UNLOCK, b"made")
        assert await waiter == (OK, Kind.PICKLE, b"made")  # once(): made meanwhile, no lock
        assert (await store.stats())["locks"] == 0

    _in_loop(scenario)


def test_a_requester_that_died_while_it_waited_does_not_keep_the_lock() -> None:
    async def scenario(store: _NodeStore) -> None:
        assert await ask(store, "c1", Op.LOCK_GET) == LOCKED
        dead = _this_process("w2", started=1)
        waiter = asyncio.create_task(ask(store, "c2", Op.LOCK_GET, process=dead))
        await _until(lambda: store._parked == 1)
        await ask(store, "c1", Op.UNLOCK)  # the lock goes to c2, found dead: and on
        assert await waiter is None
        assert await ask(store, "c3", Op.LOCK_GET) == LOCKED
        assert (await store.stats())["dead"] == 1

    _in_loop(scenario)


def test_a_request_of_an_earlier_instance_of_the_store_is_refused() -> None:
    async def scenario(store: _NodeStore) -> None:
        earlier, _ = await _NodeStore().hello()  # as if this store were its restart
        assert await store.call(earlier, "c1", _this_process(), Op.GET, b"k", []) is None
        assert await ask(store, "c1", Op.GET) == (OK, Kind.MISSING, None)

    _in_loop(scenario)


def test_a_malformed_request_is_an_error_and_drops_its_connection() -> None:
    async def scenario(store: _NodeStore) -> None:
        assert await ask(store, "c1", Op.LOCK_GET) == LOCKED
        refused = await ask(store, "c1", Op.GET, 1)  # a GET carries no value
        assert refused is not None and refused[:2] == (ERR, ErrorCode.PROTOCOL)
        assert await ask(store, "c1", Op.GET) is None
        assert (await store.stats())["locks"] == 0  # its lock went with it

    _in_loop(scenario)


def test_connections_that_hold_nothing_are_not_kept() -> None:
    async def scenario(store: _NodeStore) -> None:
        assert await ask(store, "c1", Op.LOCK_GET) == LOCKED
        assert set(store._callers) == {"c1"}
        waiter = asyncio.create_task(ask(store, "c2", Op.SET, 2))
        await _until(lambda: store._parked == 1)
        assert set(store._callers) == {"c1", "c2"}
        await ask(store, "c1", Op.SET_UNLOCK, 1)
        assert await waiter == (OK, Kind.MISSING, None)
        assert await ask(store, "c3", Op.INCR, 1) == (OK, Kind.INT, 3)
        assert store._callers == {}

    _in_loop(scenario)


# ---- the worker's side, over a handle that runs the actor's methods here -------------------


class _Handle:
    """A store actor's handle in this process: ``handle.method.remote(...)`` runs the
    method on this handle's loop at once and gives its result as Ray does, as an object ref
    (``ray.put``). Only for requests that are answered at once (a waiting one would block).
    Replace ``store`` to restart the store; set ``interrupt`` to interrupt the next request
    (``KeyboardInterrupt``, as a cancel does) once the store has answered it."""

    def __init__(self) -> None:
        self.store = _NodeStore()
        self.loop = asyncio.new_event_loop()
        self.interrupt = False

    def __getattr__(self, name: str) -> SimpleNamespace:
        def remote(*args: Any) -> Any:
            result = self.loop.run_until_complete(getattr(self.store, name)(*args))
            if name == "call" and self.interrupt:
                self.interrupt = False
                raise KeyboardInterrupt
            return ray.put(result)

        return SimpleNamespace(remote=remote)

    def stats(self) -> dict[str, int]:
        return self.loop.run_until_complete(self.store.stats())


@pytest.fixture
def handle(monkeypatch: pytest.MonkeyPatch, ray_session: str) -> Iterator[_Handle]:
    here = _Handle()
    monkeypatch.setattr(ray_state, "_store", lambda: (here, _this_process()))
    yield here
    here.loop.close()


@pytest.fixture
def state(handle: _Handle) -> RayState:
    return RayState(_Link())


def test_the_state_code_runs_over_the_link(state: RayState, handle: _Handle) -> None:
    state.set("a", {"rows": 3})
    assert state.incr("n", 2) == 2 and state.cas("n", 2.0, 5) is True
    assert state.update("n", lambda n: n + 1) == 6
    assert state.once("o", lambda: "made") == "made" and state.once("o", lambda: "no") == "made"
    assert sorted(state.items()) == [("a", {"rows": 3}), ("n", 6), ("o", "made")]
    with pytest.raises(TypeError, match="'a' holds a dict, not a number"):
        state.incr("a")
    assert repr(state) == "<sperse.state(): the store of this Ray node>"
    assert handle.store._callers == {}  # every lock released, nothing kept


def test_an_exchange_interrupted_once_the_store_gave_the_lock_releases_it(
    state: RayState, handle: _Handle
) -> None:
    handle.interrupt = True
    with pytest.raises(KeyboardInterrupt):
        state.update("k", lambda _: pytest.fail("fn ran without its lock"))
    assert handle.stats()["locks"] == 0  # the connection was dropped, its lock with it
    assert state.update("k", lambda n: n + 1, default=0) == 1  # on a new connection


def test_a_cancel_inside_update_drops_the_connection(state: RayState, handle: _Handle) -> None:
    def cancelled(_: Any) -> Any:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        state.update("k", cancelled)
    assert handle.stats()["locks"] == 0
    assert state.update("k", lambda n: n + 1, default=0) == 1


def test_after_the_store_restarted_a_read_goes_on_and_an_incr_says_it_was_lost(
    state: RayState, handle: _Handle
) -> None:
    state.set("k", 1)
    handle.store = _NodeStore()  # restarted, empty
    assert state.get("k") is None  # sent once more, on a new connection
    handle.store = _NodeStore()
    with pytest.raises(sperse.SperseError, match=r"connection .* was lost"):
        state.incr("k")


def test_a_lock_lost_with_its_store_is_an_error_and_sets_nothing(
    state: RayState, handle: _Handle
) -> None:
    def restart(_: Any) -> int:
        handle.store = _NodeStore()  # while the lock is held
        return 1

    with pytest.raises(sperse.SperseError, match=r"connection .* was lost"):
        state.update("k", restart)
    assert state.get("k") is None


@pytest.mark.usefixtures("handle")
def test_connections_are_one_per_thread() -> None:
    link = _Link()
    here, fresh = link.connection()
    assert fresh and link.connection() == (here, False)
    there: list[Connection] = []
    thread = threading.Thread(target=lambda: there.append(link.connection()[0]))
    thread.start()
    thread.join(WAIT)
    assert len(there) == 1 and there[0] is not here
