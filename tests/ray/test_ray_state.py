"""``sperse.state()`` on Ray (docs/state.md "On Ray"): one store actor per node.

The store's semantics are tested on every backend, Ray's included, in
tests/state/test_state.py. Here is what only Ray shows: the store actor itself (its name,
namespace, node, lifetime and resources), one store shared by the tasks and the remote
objects of a node, a lock request withdrawn by a cancel, and the liveness check of a lock's
holder: by ``/proc`` for a process of the node, by Ray's record of the worker otherwise.
The actor's class and the worker's side, in this process, are in test_ray_state_shell.py.
Remote code may sleep (its workload); the tests only wait with a deadline.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import sperse

ray = pytest.importorskip("ray")

from sperse._backends.ray.state import STATE_NAMESPACE  # noqa: E402  (needs Ray)
from sperse._state.table import Value, read_reply  # noqa: E402
from sperse._state.wire import ErrorCode, Kind, Op, Status  # noqa: E402

pytestmark = pytest.mark.ray

WAIT = 60.0  # a deadline, never a delay
LOCAL = "@local"  # the session Ray's node


@pytest.fixture(autouse=True)
def _current(ray_cluster: sperse.Cluster) -> Iterator[None]:
    assert sperse.current() is ray_cluster
    yield


@pytest.fixture
def key(request: pytest.FixtureRequest) -> str:
    return f"{request.node.name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def store() -> Any:
    """A handle of the session node's store actor (made by a first task if need be)."""
    write(f"made-{uuid.uuid4().hex[:8]}", 0).result(timeout=WAIT)
    return ray.get_actor(_node_id(), namespace=STATE_NAMESPACE)


def _node_id() -> str:
    (node,) = [n for n in ray.nodes() if n["Alive"]]
    return str(node["NodeID"])


def _wait_until(done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


def _stats(store: Any) -> dict[str, int]:
    stats: dict[str, int] = ray.get(store.stats.remote(), timeout=WAIT)
    return stats


class _Requests:
    """Requests to the store actor as one connection of ``process`` sends them."""

    def __init__(self, store: Any, process: tuple[str, int, int, str]) -> None:
        self.store = store
        self.process = process
        self.connection = uuid.uuid4().hex
        self.instance, _ = ray.get(store.hello.remote(), timeout=WAIT)

    def ask(self, op: Op, key: str, *values: Value) -> tuple[int, int, bytes] | None:
        sent = self.store.call.remote(
            self.instance, self.connection, self.process, op, key.encode(), list(values)
        )
        answer = ray.get(sent, timeout=WAIT)
        return None if answer is None else read_reply(answer)


# ---- remote code -------------------------------------------------------------------------


@sperse.remote(on=LOCAL)
def write(key: str, value: Any) -> None:
    sperse.state().set(key, value)


@sperse.remote(on=LOCAL)
def read(key: str) -> Any:
    return sperse.state().get(key)


@sperse.remote(on=LOCAL)
def bump(key: str) -> int:
    new: int = sperse.state().update(key, lambda n: n + 1, default=0)
    return new


@sperse.remote(on=LOCAL)
def hold_until(key: str, folder: str, value: int) -> int:
    """``update`` that sets ``value``, holding the lock until the file ``go`` exists."""

    def fn(_: Any) -> int:
        Path(folder, "locked").write_text("")
        while not Path(folder, "go").exists():
            time.sleep(0.01)
        return value

    new: int = sperse.state().update(key, fn)
    return new


@sperse.remote(on=LOCAL)
def die_saying_who(path: str) -> None:
    """Write this worker's Ray id, then die (SIGKILL): a worker id that Ray knows is dead."""
    Path(path).write_text(ray.get_runtime_context().get_worker_id())
    os.kill(os.getpid(), signal.SIGKILL)


class Tally:
    """A remote object that counts in its node's store."""

    def add(self, key: str) -> int:
        return int(sperse.state().incr(key))

    def worker_id(self) -> str:
        return str(ray.get_runtime_context().get_worker_id())


# ---- the store actor -----------------------------------------------------------------------


def test_the_store_is_a_detached_actor_named_by_its_nodes_id(store: Any) -> None:
    from ray._private import state

    record = state.actors(store._actor_id.hex())
    assert record["ActorClassName"] == "_NodeStore"
    assert record["Name"] == _node_id()
    assert record["Address"]["NodeID"] == _node_id()  # pinned to its node
    assert record["IsDetached"] is True  # it lives as long as its node
    named = ray.util.list_named_actors(all_namespaces=True)
    assert {"name": _node_id(), "namespace": STATE_NAMESPACE} in named
    assert [n for n in named if n["namespace"] == STATE_NAMESPACE] == [
        {"name": _node_id(), "namespace": STATE_NAMESPACE}
    ]  # one per node: every task of the node found the same one


def test_tasks_and_remote_objects_of_a_node_share_its_store(key: str) -> None:
    tally = sperse.remote(Tally)(on=LOCAL)
    try:
        write(key, 10).result(timeout=WAIT)
        assert tally.add(key).result(timeout=WAIT) == 11
        assert bump(key).result(timeout=WAIT) == 12
        assert read(key).result(timeout=WAIT) == 12
    finally:
        tally.close()


def test_the_client_sees_a_nodes_store(ray_cluster: sperse.Cluster, key: str) -> None:
    write(key, ("a", 1)).result(timeout=WAIT)
    assert ray_cluster.state("local")[key] == ("a", 1)


def test_state_in_the_driver_is_still_a_clear_error() -> None:
    assert ray.is_initialized()  # Ray is imported and joined here: still not remote code
    with pytest.raises(sperse.SperseError, match="only inside remote code"):
        sperse.state()


# ---- locks ------------------------------------------------------------------------------------


def test_a_cancelled_request_never_takes_the_lock(key: str, tmp_path: Path, store: Any) -> None:
    holder = hold_until(key, str(tmp_path), 10)
    _wait_until((tmp_path / "locked").exists, "the holder has the lock")
    waiting = _stats(store)["waiting"]
    asker = bump(key)
    _wait_until(lambda: _stats(store)["waiting"] > waiting, "the second update waits")
    assert asker.cancel()
    with pytest.raises(sperse.TaskCancelled):
        asker.result(timeout=WAIT)
    # Ray interrupts a task no sooner than CANCEL_SETTLE after it was sent: the holder lets
    # go once the cancelled request is withdrawn.
    _wait_until(lambda: _stats(store)["waiting"] == waiting, "the cancelled update withdrawn")
    (tmp_path / "go").write_text("")
    assert holder.result(timeout=WAIT) == 10
    # The cancelled update was withdrawn (or its worker, killed, found dead): never applied.
    assert bump(key).result(timeout=WAIT) == 11


def test_a_live_holder_keeps_its_lock_while_others_wait(
    key: str, ray_cluster: sperse.Cluster, store: Any
) -> None:
    tally = sperse.remote(Tally)(on=LOCAL)
    try:
        worker = tally.worker_id().result(timeout=WAIT)
        # A holder in another pid namespace: the store asks Ray, which says it is alive.
        holder = _Requests(store, (worker, 1, 0, "pid:[0]"))
        assert holder.ask(Op.LOCK_GET, key) == (Status.OK, Kind.MISSING, b"")
        checked = _stats(store)["checked"]
        waiter = bump(key)
        _wait_until(lambda: _stats(store)["checked"] > checked, "the waiter checked the holder")
        assert not waiter.done()
        assert holder.ask(Op.SET_UNLOCK, key, 5) == (Status.OK, Kind.MISSING, b"")
        assert waiter.result(timeout=WAIT) == 6
    finally:
        tally.close()


def test_a_dead_holder_outside_the_nodes_pid_namespace_is_found_by_rays_record(
    key: str, tmp_path: Path, store: Any
) -> None:
    said = tmp_path / "worker"
    with pytest.raises(sperse.WorkerDied):
        die_saying_who(str(said)).result(timeout=WAIT)
    # Not a pid the store can look at: it asks Ray.
    holder = _Requests(store, (said.read_text(), 1, 0, "pid:[0]"))
    assert holder.ask(Op.LOCK_GET, key) == (Status.OK, Kind.MISSING, b"")
    assert bump(key).result(timeout=WAIT) == 1  # once a check (each HOLDER_CHECK s) found it dead
    assert _stats(store)["dead"] >= 1


def test_a_lock_released_twice_or_by_another_connection_changes_nothing(
    key: str, store: Any
) -> None:
    holder, other = _Requests(store, ("me", 1, 0, "")), _Requests(store, ("me", 1, 0, ""))
    assert holder.ask(Op.LOCK_GET, key) == (Status.OK, Kind.MISSING, b"")
    refused = other.ask(Op.SET_UNLOCK, key, 1)
    assert refused is not None and refused[:2] == (Status.ERROR, ErrorCode.LOCK)
    assert b"not locked" in refused[2]
    ray.get(store.drop.remote(holder.connection), timeout=WAIT)
    ray.get(store.drop.remote(holder.connection), timeout=WAIT)  # dropped already: harmless
    assert holder.ask(Op.GET, key) is None  # a dropped connection is answered no more
    assert bump(key).result(timeout=WAIT) == 1
