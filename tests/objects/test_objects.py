"""Remote objects (DESIGN §5) on real servers: one server, and two behind one client.

The in-process ``LocalBackend`` has no remote objects (it is a pool for unit tests of the
layers above); the Ray backend maps them to actors (more in tests/ray).
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

import pytest

import sperse
from sperse._backends.memory import MemoryBackend
from sperse._backends.multi import ClusterBackend
from sperse._backends.ray import RayBackend
from sperse._backends.sperse import SperseBackend

WAIT = 60.0  # a deadline, never a delay


class Counter:
    def __init__(self, start: int = 0) -> None:
        self.count = start

    def incr(self, by: int = 1) -> int:
        self.count += by
        return self.count

    def get(self) -> int:
        return self.count

    def pid(self) -> int:
        return os.getpid()

    def fail(self) -> None:
        raise ValueError(f"no good at {self.count}")


class Meeting:
    """Every caller waits until ``size`` of them are inside at once."""

    def __init__(self, size: int) -> None:
        self.barrier = threading.Barrier(size, timeout=30)

    def meet(self) -> int:
        return self.barrier.wait()


class Relay:
    """Async methods: a waiter is released by a later call, on the same event loop."""

    def __init__(self) -> None:
        self.event: asyncio.Event | None = None

    async def wait_for_signal(self) -> str:
        if self.event is None:
            self.event = asyncio.Event()
        await asyncio.wait_for(self.event.wait(), 30)
        return "released"

    async def signal(self) -> bool:
        while self.event is None:  # the waiter has not started yet
            await asyncio.sleep(0.001)
        self.event.set()
        return True


class Broken:
    def __init__(self) -> None:
        raise RuntimeError("cannot build this")


def use_counter(counter: sperse.ObjectProxy, times: int) -> int:
    """Remote code calling a remote object through its proxy (RMI)."""
    last = 0
    for _ in range(times):
        last = counter.incr().result(timeout=30)
    return last


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        threading.Event().wait(0.02)


@pytest.fixture(scope="module")
def servers(cluster: sperse.Cluster) -> Iterator[sperse.Cluster]:
    if not isinstance(cluster.backend, SperseBackend | ClusterBackend | RayBackend | MemoryBackend):
        pytest.skip(f"no remote objects on {type(cluster.backend).__name__}")
    yield cluster


def listed(cluster: sperse.Cluster) -> set[str]:
    return {o.object_id for o in cluster.backend.objects()}


def second_client(cluster: sperse.Cluster) -> sperse.Cluster:
    backend = cluster.backend
    if isinstance(backend, RayBackend):
        return sperse.Cluster(RayBackend())
    if isinstance(backend, SperseBackend):
        return sperse.Cluster(SperseBackend(backend.address, token=backend._token))
    if isinstance(backend, MemoryBackend):
        return sperse.Cluster(backend.client())
    assert isinstance(backend, ClusterBackend)
    urls = [s.address for s in backend.servers()]
    return sperse.Cluster(ClusterBackend(urls, token=backend._token))


def test_calls_run_in_order_and_return_pending(servers: sperse.Cluster) -> None:
    counter = sperse.remote(Counter)(10)
    calls = [counter.incr() for _ in range(50)]
    assert all(isinstance(c, sperse.Pending) for c in calls)
    assert [c.result(WAIT) for c in calls] == list(range(11, 61))
    assert counter.count.result(WAIT) == 60  # an attribute read
    assert counter.where in {s.name for s in servers.servers()}


def test_thousands_of_calls_sent_at_once_run_in_order(servers: sperse.Cluster) -> None:
    # Many calls in a row travel in big batches (hundreds of tasks per message): the
    # server must not let a later batch overtake the rest of an earlier one.
    counter = sperse.remote(Counter)().ready(WAIT)
    calls = [counter.incr() for _ in range(10_000)]
    sperse.wait(calls, timeout=WAIT)
    assert [c.result(0) for c in calls] == list(range(1, 10_001))


def test_a_thousand_calls_from_four_threads_end_at_a_thousand(servers: sperse.Cluster) -> None:
    counter = sperse.remote(Counter)()
    pendings: list[sperse.Pending[int]] = []
    lock = threading.Lock()

    def caller() -> None:
        mine = [counter.incr() for _ in range(250)]
        with lock:
            pendings.extend(mine)

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert sorted(p.result(WAIT) for p in pendings) == list(range(1, 1001))
    assert counter.get().result(WAIT) == 1000


def test_a_proxy_passed_to_remote_code_calls_the_same_object(servers: sperse.Cluster) -> None:
    counter = sperse.remote(Counter)().ready(WAIT)
    names = sorted(s.name for s in servers.servers())
    elsewhere = next((n for n in names if n != counter.where), counter.where)
    user = sperse.remote(on=f"@{elsewhere}")(use_counter)
    done = user(counter, 5)
    assert done.result(WAIT) == 5
    assert done.where == elsewhere
    assert counter.get().result(WAIT) == 5


def test_a_named_object_is_found_from_a_second_client(servers: sperse.Cluster) -> None:
    counter = sperse.remote(Counter)(100, name="hits")
    assert counter.incr().result(WAIT) == 101
    listed = {o.name: o for o in sperse.objects()}
    assert listed["hits"].type_name == "Counter" and "incr" in listed["hits"].methods
    with second_client(servers):
        found = sperse.get_object("hits")
        assert found.incr(9).result(WAIT) == 110
    assert counter.get().result(WAIT) == 110
    with pytest.raises(sperse.UnknownObject, match="no remote object named 'nobody'"):
        sperse.get_object("nobody")


def test_releasing_the_last_proxy_frees_the_object(servers: sperse.Cluster) -> None:
    counter = sperse.remote(Counter)()
    pid = counter.pid().result(WAIT)
    object_id = counter.object_id
    assert object_id in listed(servers)
    del counter
    gc.collect()
    wait_until(lambda: object_id not in listed(servers), "the object to be freed")
    wait_until(lambda: not _alive(pid), "the object's worker process to exit")


def test_close_then_call_is_object_lost(servers: sperse.Cluster) -> None:
    counter = sperse.remote(Counter)().ready(WAIT)
    counter.close()
    with pytest.raises(sperse.ObjectLost, match="closed"):
        counter.incr().result(WAIT)


def test_max_concurrency_runs_calls_at_once(servers: sperse.Cluster) -> None:
    meeting = sperse.remote(Meeting).options(max_concurrency=4).new(4)
    calls = [meeting.meet() for _ in range(4)]
    assert sorted(c.result(WAIT) for c in calls) == [0, 1, 2, 3]


def test_async_methods_share_the_objects_event_loop(servers: sperse.Cluster) -> None:
    relay = sperse.remote(Relay)(max_concurrency=2)
    waiting = relay.wait_for_signal()
    assert relay.signal().result(WAIT) is True
    assert waiting.result(WAIT) == "released"


def test_exceptions_come_back_with_the_remote_traceback(servers: sperse.Cluster) -> None:
    counter = sperse.remote(Counter)(3)
    with pytest.raises(sperse.RemoteError, match="no good at 3") as caught:
        counter.fail().result(WAIT)
    assert "in fail" in caught.value.remote_traceback
    assert counter.incr().result(WAIT) == 4  # the object lives on


def test_a_failing_constructor_fails_every_call(servers: sperse.Cluster) -> None:
    broken = sperse.remote(Broken)()
    with pytest.raises(sperse.ObjectLost, match="cannot build this"):
        broken.ready(WAIT)
    with pytest.raises(sperse.ObjectLost, match="cannot build this"):
        broken.anything.result(WAIT)


def test_worker_killed_is_object_lost_and_restart_rebuilds(servers: sperse.Cluster) -> None:
    lost = sperse.remote(Counter)(5)
    os.kill(lost.pid().result(WAIT), signal.SIGKILL)
    with pytest.raises(sperse.ObjectLost, match="Counter"):
        lost.incr().result(WAIT)

    kept = sperse.remote(Counter)(5, restart=True)
    assert kept.incr().result(WAIT) == 6
    first = kept.pid().result(WAIT)
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: not _alive(first), "the worker to die")
    outcome = kept.incr()
    try:
        value = outcome.result(WAIT)
    except sperse.ObjectLost as exc:  # in flight when the worker died: says the state reset
        assert "state" in str(exc)
        value = kept.incr().result(WAIT)
    assert value == 6  # rebuilt from its constructor's arguments: count was 5
    assert kept.pid().result(WAIT) != first


def test_bad_input_is_a_clear_error(servers: sperse.Cluster) -> None:
    counter = sperse.remote(Counter)()
    with pytest.raises(AttributeError, match="private"):
        counter._secret  # noqa: B018
    with pytest.raises(TypeError, match="not a method"):
        counter.no_such_method()
    with pytest.raises(sperse.RemoteError, match="no_such_attribute"):
        counter.no_such_attribute.result(WAIT)
    with pytest.raises(sperse.SerializationError):
        counter.incr(threading.Lock()).result(WAIT)
    assert counter.incr().result(WAIT) == 1  # none of that reached or broke the object


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


PROMPT_COUNTER = """
class Counter:
    def __init__(self, start=0):
        self.n = start

    def incr(self):
        self.n += 1
        return self.n
"""


def test_the_prompt_makes_remote_objects_and_pending_cells(servers: sperse.Cluster) -> None:
    ws = sperse.Workspace(servers)
    try:
        ws.run(PROMPT_COUNTER)
        ws.run("start = 5")
        ws.run("c = remote Counter(start)")
        ws.run("n = remote c.incr()")  # `remote`: the value, like every remote statement
        assert ws.wait("n", WAIT) == 6
        assert isinstance(ws["c"], sperse.ObjectProxy)
        assert ws.cell("c").where == ws["c"].where != ""
        ws.run("start = 10")  # a new object; n runs again, on it
        assert ws.wait("n", WAIT) == 11
        ws.run("remote c.n")  # an attribute: its value is the cell's value
        ws.wait(timeout=WAIT)
        assert ws.cells()[-1].value == 11
        ws.run("c.n")  # without `remote`: a Pending, shown as its value when it arrives
        ws.wait(timeout=WAIT)
        assert ws.cells()[-1].value == 11
        ws.run("p = c.incr()")  # the script form: a Pending, as under plain Python
        p = ws.wait("p", WAIT)
        assert isinstance(p, sperse.Pending) and p.value() == 12
    finally:
        ws.close()
