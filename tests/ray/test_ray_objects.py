"""Remote objects on Ray (DESIGN §5, docs/ray.md "Remote objects"): one actor per object.

The same behaviour as on sperse servers (tests/objects): calls in order, or N at once;
async methods on one event loop of the object; named objects found from another client;
release and close destroy; a process that dies loses the object, or rebuilds it
(``restart=True``); clear errors for what a proxy may not do. And what only Ray shows: the
actor itself (its name in Sperse's namespace, gone once the object is destroyed), the
events of a call at the backend seam, and proxies used inside remote code on Ray.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import sperse
from conftest import Recorder
from sperse._core import Done, Failed, ObjectCall, ObjectCreate, Output, Started, TaskSpec

ray = pytest.importorskip("ray")

from sperse._backends.ray import OBJECTS_NAMESPACE, RayBackend  # noqa: E402  (Ray is needed)

pytestmark = pytest.mark.ray

WAIT = 60.0  # a deadline, never a delay
BIG = 300_000  # float64s: 2.4 MB, above the 1 MiB inline limit


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

    def hang(self, path: str) -> None:
        """Says it runs (a file), then blocks: a call in flight when its process dies."""
        Path(path).write_text("running")
        threading.Event().wait(WAIT)

    def talk(self, word: str) -> str:
        print(f"saying {word}")
        return word

    def total(self, array: Any) -> float:
        return float(array.sum())

    def ones(self, n: int) -> Any:
        return np.ones(n)


class Meeting:
    """Every caller waits until ``size`` of them are inside at once."""

    def __init__(self, size: int) -> None:
        self.barrier = threading.Barrier(size, timeout=30)

    def meet(self, tag: str = "") -> int:
        print(f"{tag} arrived", flush=True)
        index = self.barrier.wait()
        print(f"{tag} left")
        return index


class Relay:
    """Async methods: a waiter is released by a later call, on the same event loop."""

    def __init__(self) -> None:
        self.event: asyncio.Event | None = None
        self.loops: set[int] = set()

    async def wait_for_signal(self) -> str:
        self.loops.add(id(asyncio.get_running_loop()))
        if self.event is None:
            self.event = asyncio.Event()
        await asyncio.wait_for(self.event.wait(), 30)
        return "released"

    async def signal(self) -> int:
        self.loops.add(id(asyncio.get_running_loop()))
        while self.event is None:  # the waiter has not started yet
            await asyncio.sleep(0.001)
        self.event.set()
        return len(self.loops)


class Broken:
    def __init__(self) -> None:
        raise RuntimeError("cannot build this")


class SlowRebuild:
    """Built at once; rebuilt (after its process died) only once ``dir/go`` exists."""

    def __init__(self, dir: str) -> None:
        built, go = Path(dir) / "built", Path(dir) / "go"
        if built.exists():
            deadline = time.monotonic() + WAIT
            while not go.exists() and time.monotonic() < deadline:
                threading.Event().wait(0.02)  # a poll with a deadline, not a delay to wait
        built.touch()
        self.count = 0

    def pid(self) -> int:
        return os.getpid()

    def incr(self) -> int:
        self.count += 1
        return self.count


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
        threading.Event().wait(0.02)  # a poll with a deadline, not a delay to wait


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def actor_names(object_id: str) -> list[str]:
    """The names of the Ray actors of this remote object (one while it exists)."""
    listed = ray.util.list_named_actors(all_namespaces=True)
    return [
        e["name"]
        for e in listed
        if e["namespace"] == OBJECTS_NAMESPACE and e["name"].startswith(object_id + "/")
    ]


@pytest.fixture(autouse=True)
def _current(ray_cluster: sperse.Cluster) -> None:
    assert sperse.current() is ray_cluster


# ---- calls -------------------------------------------------------------------------------------


def test_calls_run_in_order_and_read_attributes(ray_cluster: sperse.Cluster) -> None:
    counter = sperse.remote(Counter)(10)
    calls = [counter.incr() for _ in range(50)]
    assert [c.result(WAIT) for c in calls] == list(range(11, 61))
    assert counter.count.result(WAIT) == 60  # an attribute read
    assert counter.where == "local"  # the node's name, as for tasks
    assert all(c.where == "local" for c in calls)


def test_a_thousand_calls_from_four_threads_end_at_a_thousand() -> None:
    counter = sperse.remote(Counter)()
    by_thread: list[list[sperse.Pending[int]]] = []
    lock = threading.Lock()

    def caller() -> None:
        mine = [counter.incr() for _ in range(250)]
        with lock:
            by_thread.append(mine)

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    results = [[p.result(WAIT) for p in mine] for mine in by_thread]
    assert sorted(r for mine in results for r in mine) == list(range(1, 1001))
    for mine in results:  # each thread's calls ran in the order it made them
        assert mine == sorted(mine)
    assert counter.get().result(WAIT) == 1000


def test_max_concurrency_runs_calls_at_once() -> None:
    meeting = sperse.remote(Meeting).options(max_concurrency=4).new(4)
    calls = [meeting.meet() for _ in range(4)]
    assert sorted(c.result(WAIT) for c in calls) == [0, 1, 2, 3]


def test_async_methods_share_the_objects_event_loop() -> None:
    relay = sperse.remote(Relay)(max_concurrency=2)
    waiting = relay.wait_for_signal()
    assert relay.signal().result(WAIT) == 1  # one loop for both calls
    assert waiting.result(WAIT) == "released"


def test_exceptions_come_back_with_the_remote_traceback() -> None:
    counter = sperse.remote(Counter)(3)
    with pytest.raises(sperse.RemoteError, match="no good at 3") as caught:
        counter.fail().result(WAIT)
    assert caught.value.type_name == "ValueError"
    trace = caught.value.remote_traceback
    assert "in fail" in trace and "raise ValueError" in trace
    assert "_backends/ray/" not in trace  # starts at the user's code
    assert counter.incr().result(WAIT) == 4  # the object lives on


def test_held_values_go_in_and_come_out_as_for_tasks(ray_cluster: sperse.Cluster) -> None:
    counter = sperse.remote(Counter)()
    big = counter.ones(BIG)  # a result above the inline limit stays in Ray
    assert ray_cluster.run_until(big.done, WAIT)
    assert big.remote_value is not None and big.remote_value.ref.server == "local"
    assert counter.total(big).result(WAIT) == BIG  # a held value as an argument
    assert not big.remote_value.fetched
    assert big.result(WAIT).shape == (BIG,)


def test_a_proxy_passed_to_remote_code_calls_the_same_object() -> None:
    counter = sperse.remote(Counter)().ready(WAIT)
    done = sperse.remote(use_counter)(counter, 5)
    assert done.result(WAIT) == 5
    assert counter.get().result(WAIT) == 5


# ---- names, listing ----------------------------------------------------------------------------


def test_a_named_object_is_found_from_a_second_client(ray_cluster: sperse.Cluster) -> None:
    counter = sperse.remote(Counter)(100, name="hits")
    assert counter.incr().result(WAIT) == 101
    listed = {o.name: o for o in sperse.objects()}
    info = listed["hits"]
    assert (info.type_name, info.server, info.object_id) == ("Counter", "local", counter.object_id)
    assert "incr" in info.methods and "hang" in info.methods
    assert (info.max_concurrency, info.restart, info.calls) == (1, False, 1)
    assert info.pid == counter.pid().result(WAIT)
    with sperse.Cluster(RayBackend()) as second:
        assert [o.object_id for o in second.backend.objects("hits")] == [counter.object_id]
        found = sperse.get_object("hits")
        assert found.incr(9).result(WAIT) == 110
        assert found.where == "local"
    assert counter.get().result(WAIT) == 110
    with pytest.raises(sperse.UnknownObject, match="no remote object named 'nobody'"):
        sperse.get_object("nobody")
    counter.close()


def test_a_name_is_taken_once() -> None:
    first = sperse.remote(Counter)(name="unique").ready(WAIT)
    second = sperse.remote(Counter)(name="unique")
    with pytest.raises(sperse.ObjectLost, match="named 'unique' exists already"):
        second.ready(WAIT)
    first.close()
    wait_until(lambda: not actor_names(first.object_id), "the first to be gone")
    third = sperse.remote(Counter)(name="unique")  # free again
    assert third.incr().result(WAIT) == 1


# ---- destruction -------------------------------------------------------------------------------


def test_releasing_the_last_proxy_kills_the_actor(ray_cluster: sperse.Cluster) -> None:
    gc.collect()  # the proxies earlier tests left to the collector are released now
    before = ray_cluster.stats()["remote_objects"]
    counter = sperse.remote(Counter)()
    pid = counter.pid().result(WAIT)
    object_id = counter.object_id
    assert len(actor_names(object_id)) == 1
    assert ray_cluster.stats()["remote_objects"] == before + 1
    del counter
    gc.collect()
    wait_until(lambda: not actor_names(object_id), "the actor to be gone from Ray")
    wait_until(lambda: not alive(pid), "the actor's process to exit")
    assert ray_cluster.stats()["remote_objects"] == before


def test_close_then_call_is_object_lost() -> None:
    counter = sperse.remote(Counter)(name="closing").ready(WAIT)
    borrowed = sperse.get_object("closing")  # another proxy, in the same client
    counter.close()
    with pytest.raises(sperse.ObjectLost, match="closed"):
        counter.incr().result(WAIT)
    with pytest.raises(sperse.ObjectLost, match=r"'closing' \(Counter [0-9a-f]{8}\) was closed"):
        borrowed.incr().result(WAIT)
    wait_until(lambda: not actor_names(counter.object_id), "the actor to be gone from Ray")


def test_a_failing_constructor_fails_the_creation_and_every_call() -> None:
    broken = sperse.remote(Broken)()
    with pytest.raises(sperse.ObjectLost, match=r"its creation failed.*cannot build this"):
        broken.ready(WAIT)
    with pytest.raises(sperse.ObjectLost, match="creation failed"):
        broken.anything.result(WAIT)
    wait_until(lambda: not actor_names(broken.object_id), "the actor to be removed")


def test_a_failing_constructor_is_a_remote_error_at_the_seam(
    backend: RayBackend, recorder: Recorder
) -> None:
    backend.submit([TaskSpec("t-broken", ObjectCreate("b" * 32, Broken, (), {}, type_name="B"))])
    end = recorder.end_of("t-broken")
    assert isinstance(end, Failed) and end.error.kind == "raised"
    assert end.error.type_name == "RuntimeError" and end.error.message == "cannot build this"
    assert 'raise RuntimeError("cannot build this")' in end.error.traceback
    assert end.where == "local"


def test_a_killed_process_loses_the_object(tmp_path: Path) -> None:
    lost = sperse.remote(Counter)(5)
    pid = lost.pid().result(WAIT)
    marker = tmp_path / "running"
    in_flight = lost.hang(str(marker))
    wait_until(marker.exists, "the call to run")
    os.kill(pid, signal.SIGKILL)
    name = rf"remote object \(Counter {lost.object_id[:8]}\)"
    with pytest.raises(sperse.ObjectLost, match=f"{name} is lost: its process died"):
        in_flight.result(WAIT)
    with pytest.raises(sperse.ObjectLost, match=f"{name} is lost"):
        lost.incr().result(WAIT)


def test_restart_rebuilds_the_object_with_its_state_reset(tmp_path: Path) -> None:
    kept = sperse.remote(Counter)(5, restart=True, name="phoenix")
    assert kept.incr().result(WAIT) == 6
    first = kept.pid().result(WAIT)
    marker = tmp_path / "running"
    in_flight = kept.hang(str(marker))
    wait_until(marker.exists, "the call to run")
    os.kill(first, signal.SIGKILL)
    with pytest.raises(sperse.ObjectLost, match="its state reset") as caught:
        in_flight.result(WAIT)
    assert f"'phoenix' (Counter {kept.object_id[:8]})" in str(caught.value)
    assert kept.incr().result(WAIT) == 6  # rebuilt from its constructor's arguments: 5 + 1
    assert kept.pid().result(WAIT) != first
    (info,) = sperse.objects("phoenix")
    assert info.restarts == 1 and info.restart


def test_calls_made_while_the_object_is_rebuilt_wait_for_it(tmp_path: Path) -> None:
    # With an actor's max_task_retries=0, Ray fails at once (ActorUnavailableError, "The actor
    # is restarting") the calls made while it rebuilds the actor: the cause of the flaky
    # test above, whose call sometimes came before the rebuild had ended.
    slow = sperse.remote(SlowRebuild)(str(tmp_path), restart=True)
    first = slow.pid().result(WAIT)
    os.kill(first, signal.SIGKILL)
    (name,) = actor_names(slow.object_id)
    handle = ray.get_actor(name, namespace=OBJECTS_NAMESPACE)
    restarting = ray.core.generated.gcs_pb2.ActorTableData.RESTARTING
    wait_until(lambda: handle._get_local_state() == restarting, "Ray to rebuild the actor")
    later = slow.incr()
    assert not later.done()  # waits for the rebuild
    (tmp_path / "go").touch()
    assert later.result(WAIT) == 1  # the new instance
    assert slow.pid().result(WAIT) != first


# ---- what a proxy may not do -------------------------------------------------------------------


def test_bad_input_is_a_clear_error() -> None:
    counter = sperse.remote(Counter)()
    with pytest.raises(AttributeError, match="private"):
        counter._secret  # noqa: B018
    with pytest.raises(TypeError, match="not a method"):
        counter.no_such_method()
    with pytest.raises(
        sperse.RemoteError,
        match=r"Counter has no attribute 'no_such_attribute'; its public methods: fail, get",
    ):
        counter.no_such_attribute.result(WAIT)
    with pytest.raises(sperse.SerializationError, match="lock"):
        counter.incr(threading.Lock()).result(WAIT)
    assert counter.incr().result(WAIT) == 1  # none of that reached or broke the object


def test_private_names_and_reading_methods_are_refused_in_the_actor(
    backend: RayBackend, recorder: Recorder
) -> None:
    # What a proxy refuses itself, the actor refuses too (for a client that is not a proxy).
    object_id = "c" * 32
    backend.submit([TaskSpec("t-new", ObjectCreate(object_id, Counter, (), {}, type_name="C"))])
    assert isinstance(recorder.end_of("t-new"), Done)
    backend.submit(
        [
            TaskSpec("t-private", ObjectCall(object_id, "_secret")),
            TaskSpec("t-dunder", ObjectCall(object_id, "__class__", attribute=True)),
            TaskSpec("t-read-method", ObjectCall(object_id, "incr", attribute=True)),
            TaskSpec("t-call-value", ObjectCall(object_id, "count")),
        ]
    )
    for task_id, kind, text in [
        ("t-private", "AttributeError", "'_secret' of remote object C is not exposed"),
        ("t-dunder", "AttributeError", "'__class__' of remote object C is not exposed"),
        ("t-read-method", "TypeError", "'incr' of remote object C is a method: call it"),
        ("t-call-value", "TypeError", "'count' of remote object C is an int, not a method"),
    ]:
        end = recorder.end_of(task_id)
        assert isinstance(end, Failed) and end.error.kind == "raised", end
        assert end.error.type_name == kind and text in end.error.message
        assert end.error.traceback == ""


# ---- the backend seam --------------------------------------------------------------------------


@pytest.fixture
def backend(ray_session: str, recorder: Recorder) -> Iterator[RayBackend]:
    """A RayBackend of its own, whose sink is ``recorder``."""
    b = RayBackend()
    b.start(recorder)
    try:
        yield b
    finally:
        b.close()


def test_a_call_reports_start_output_and_end_as_a_task(
    backend: RayBackend, recorder: Recorder
) -> None:
    object_id = "d" * 32
    backend.submit([TaskSpec("t-new", ObjectCreate(object_id, Counter, (), {}, type_name="C"))])
    backend.submit([TaskSpec("t-talk", ObjectCall(object_id, "talk", ("hi",)))])
    end = recorder.end_of("t-talk")
    assert isinstance(end, Done) and end.value == "hi" and end.where == "local"
    events = recorder.of("t-talk")
    assert [type(e) for e in events] == [Started, Output, Done]
    assert isinstance(events[1], Output) and events[1].text == "saying hi\n"


def test_output_of_concurrent_calls_goes_to_each_call(
    backend: RayBackend, recorder: Recorder
) -> None:
    object_id = "e" * 32
    create = ObjectCreate(object_id, Meeting, (2,), {}, max_concurrency=2, type_name="Meeting")
    backend.submit([TaskSpec("t-new", create)])
    backend.submit([TaskSpec(f"t-{tag}", ObjectCall(object_id, "meet", (tag,))) for tag in "ab"])
    for tag in "ab":
        assert isinstance(recorder.end_of(f"t-{tag}"), Done)
        text = "".join(e.text for e in recorder.of(f"t-{tag}") if isinstance(e, Output))
        assert text == f"{tag} arrived\n{tag} left\n"


def test_closing_the_backend_kills_the_actors_it_created(
    ray_session: str, recorder: Recorder
) -> None:
    b = RayBackend()
    b.start(recorder)
    object_id = "f" * 32
    b.submit([TaskSpec("t-new", ObjectCreate(object_id, Counter, (), {}, type_name="C"))])
    assert isinstance(recorder.end_of("t-new"), Done)
    assert len(actor_names(object_id)) == 1
    b.close()
    wait_until(lambda: not actor_names(object_id), "the actor to be gone from Ray")
