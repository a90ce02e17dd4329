"""``sperse.state()`` and ``sperse.worker_cache()`` (DESIGN §5), on real servers.

Every test runs remote functions on every backend (``cluster``, from conftest's
``BACKENDS``), pinned to the server named "local" (each backend has one): the store is per
server, and the cluster of two servers would otherwise spread a test's tasks over two
stores. Each test uses keys of its own, since a module's tests share one cluster. Remote
code may sleep, that is its workload; the tests themselves only ever wait on results with a
deadline. The wire protocol is tested in ``test_store.py``.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import sperse
from sperse._state import snapshot as state_snapshot

WAIT = 30.0  # a deadline, never a delay: every wait returns as soon as it can
LONG = 60.0  # a task that would outlive the test if it were not cancelled

LOCAL = "@local"  # the server every backend has, by name


@pytest.fixture(autouse=True)
def _uses_cluster(cluster: sperse.Cluster) -> Iterator[None]:
    # Remote functions run on `sperse.current()`: the fixture's `with cluster:` makes it so.
    assert sperse.current() is cluster
    yield


@pytest.fixture
def local_workers(cluster: sperse.Cluster) -> int:
    return next(s.workers for s in cluster.servers() if s.name == "local")


@pytest.fixture
def key(request: pytest.FixtureRequest) -> str:
    """A key no other test uses."""
    return f"{request.node.name}-{uuid.uuid4().hex[:8]}"


# ---- remote functions -----------------------------------------------------------------


@sperse.remote(on=LOCAL)
def basics(key: str) -> list[Any]:
    s = sperse.state()
    out: list[Any] = [s.get(key), s.get(key, "fallback")]
    s.set(key, {"a": [1, 2]})
    out += [s.get(key), s.setdefault(key, "ignored"), s.setdefault(key + "-new", 2.5)]
    out += [s.delete(key), s.delete(key), s.get(key)]
    s.set(key + "-n", 7)
    out += [s.incr(key + "-n"), s.incr(key + "-n", -10), s.incr(key + "-f", 0.5)]
    out += [s.get(key + "-n"), type(s.get(key + "-n")).__name__, s.get(key + "-f")]
    s.set(key + "-bool", True)  # a bool is not kept as a number: it comes back a bool
    out.append(s.get(key + "-bool"))
    names = s.keys()  # a list, taken now
    out.append(sorted(k for k in names if k.startswith(key)))
    out.append(sorted((k, v) for k, v in s.items() if k.startswith(key)))
    return out


@sperse.remote(on=LOCAL)
def incr(key: str) -> int:
    return int(sperse.state().incr(key))


@sperse.remote(on=LOCAL)
def read(key: str) -> Any:
    return sperse.state().get(key)


@sperse.remote(on=LOCAL)
def write(key: str, value: Any) -> None:
    sperse.state().set(key, value)


@sperse.remote(on=LOCAL)
def once_after_rendezvous(key: str, folder: str, others: bool) -> tuple[int, str]:
    """``once`` from tasks of both workers at the same time: the factory, once it runs,
    waits until the other worker (if ``others``) has asked too, and then takes a moment, so
    that the other asks while the key is locked."""
    me = os.getpid()
    Path(folder, f"asked-{me}").write_text("")

    def factory() -> str:
        sperse.state().incr(key + "-runs")
        give_up = time.monotonic() + 10.0
        while others and time.monotonic() < give_up:
            if any(p.name != f"asked-{me}" for p in Path(folder).iterdir()):
                break
            time.sleep(0.01)
        time.sleep(0.2)  # the other worker is in once() now, waiting for the lock
        return uuid.uuid4().hex

    return me, sperse.state().once(key, factory)


@sperse.remote(on=LOCAL)
def once_failing(key: str, message: str) -> None:
    def factory() -> str:
        sperse.state().incr(key + "-runs")
        raise ValueError(message)

    sperse.state().once(key, factory)


@sperse.remote(on=LOCAL)
def once_value(key: str, value: str) -> str:
    def factory() -> str:
        sperse.state().incr(key + "-runs")
        return value

    return sperse.state().once(key, factory)


@sperse.remote(on=LOCAL)
def cas(key: str, expected: Any, new: Any) -> bool:
    return sperse.state().cas(key, expected, new)


@sperse.remote(on=LOCAL)
def append(key: str, item: int) -> int:
    new = sperse.state().update(key, lambda items: [*items, item], default=[])
    return len(new)


@sperse.remote(on=LOCAL)
def die_in_update(key: str, marker: str) -> None:
    def fn(value: Any) -> Any:
        Path(marker).write_text("locked")
        os.kill(os.getpid(), signal.SIGKILL)
        return value

    sperse.state().update(key, fn)


@sperse.remote(on=LOCAL)
def sleep_in_update(key: str, marker: str) -> None:
    def fn(value: Any) -> Any:
        Path(marker).write_text("locked")
        time.sleep(LONG)
        return value

    sperse.state().update(key, fn)


@sperse.remote(on=LOCAL)
def bump(key: str) -> int:
    new: int = sperse.state().update(key, lambda n: n + 1, default=0)
    return new


@sperse.remote(on=LOCAL)
def nested_update(key: str) -> None:
    sperse.state().update(key, lambda v: sperse.state().update(key, lambda w: w))


@sperse.remote(on=LOCAL)
def threads_incr(key: str, threads: int, each: int) -> int:
    def work() -> None:
        for _ in range(each):
            sperse.state().incr(key)
        sperse.state().update(key + "-list", lambda v: [*v, 1], default=[])

    started = [threading.Thread(target=work) for _ in range(threads)]
    for t in started:
        t.start()
    for t in started:
        t.join()
    return len(sperse.state().get(key + "-list"))


@sperse.remote(on=LOCAL)
def cached(key: str) -> tuple[int, str]:
    def factory() -> dict[str, Any]:
        sperse.state().incr(f"{key}-runs-{os.getpid()}")
        return {"lock": threading.Lock(), "token": uuid.uuid4().hex}  # not picklable

    return os.getpid(), sperse.worker_cache(key, factory)["token"]


@sperse.remote(on=LOCAL)
def set_unpicklable(key: str) -> None:
    sperse.state().set(key, threading.Lock())


snapshot = sperse.remote(on=LOCAL)(state_snapshot)


# ---- the store on every backend ---------------------------------------------------------


def test_get_set_delete_setdefault_incr(key: str) -> None:
    out = basics(key).result(timeout=WAIT)
    assert out[:8] == [None, "fallback", {"a": [1, 2]}, {"a": [1, 2]}, 2.5, True, False, None]
    assert out[8:14] == [8, -2, 0.5, -2, "int", 0.5]
    assert out[14] is True
    items = [(key + "-bool", True), (key + "-f", 0.5), (key + "-n", -2), (key + "-new", 2.5)]
    assert out[15] == [name for name, _ in items]
    assert out[16] == items


def test_incr_from_200_tasks_sums_exactly(key: str) -> None:
    results = sperse.gather(*[incr(key) for _ in range(200)], timeout=WAIT)
    assert sorted(results) == list(range(1, 201))  # every incr saw its own new value
    assert read(key).result(timeout=WAIT) == 200


def test_once_runs_the_factory_once_for_16_concurrent_tasks(
    key: str, tmp_path: Path, local_workers: int
) -> None:
    others = local_workers > 1
    results = sperse.gather(
        *[once_after_rendezvous(key, str(tmp_path), others) for _ in range(16)], timeout=WAIT
    )
    assert read(key + "-runs").result(timeout=WAIT) == 1
    assert len({value for _, value in results}) == 1
    # Every worker asked (on Ray, more worker processes may: a task that waits for the store
    # gives its CPU back to Ray while it waits, so Ray may start more workers).
    assert len({pid for pid, _ in results}) >= min(local_workers, 2)


def test_a_factory_that_raises_fails_its_task_and_the_next_once_tries_again(key: str) -> None:
    with pytest.raises(sperse.RemoteError, match="factory broke") as info:
        once_failing(key, "factory broke").result(timeout=WAIT)
    assert info.value.type_name.endswith("ValueError")
    assert read(key).result(timeout=WAIT) is None
    assert once_value(key, "second").result(timeout=WAIT) == "second"
    assert once_value(key, "third").result(timeout=WAIT) == "second"
    assert read(key + "-runs").result(timeout=WAIT) == 2


def test_cas_race_has_exactly_one_winner(key: str) -> None:
    write(key, "free").result(timeout=WAIT)
    won = sperse.gather(*[cas(key, "free", f"task-{i}") for i in range(16)], timeout=WAIT)
    assert won.count(True) == 1
    assert read(key).result(timeout=WAIT) == f"task-{won.index(True)}"


def test_cas_compares_numbers_as_numbers_and_misses_a_missing_key(key: str) -> None:
    write(key, 1).result(timeout=WAIT)
    assert cas(key, 1.0, 2).result(timeout=WAIT) is True
    assert cas(key, 1, 3).result(timeout=WAIT) is False
    assert read(key).result(timeout=WAIT) == 2
    assert cas(key + "-missing", None, 1).result(timeout=WAIT) is False


def test_update_from_100_tasks_is_atomic(key: str) -> None:
    lengths = sperse.gather(*[append(key, i) for i in range(100)], timeout=WAIT)
    assert sorted(lengths) == list(range(1, 101))
    assert sorted(read(key).result(timeout=WAIT)) == list(range(100))


def test_threads_of_one_task_share_the_store_safely(key: str) -> None:
    assert threads_incr(key, 4, 50).result(timeout=WAIT) == 4
    assert read(key).result(timeout=WAIT) == 200


def test_a_worker_killed_inside_update_leaves_the_key_unlocked(key: str, tmp_path: Path) -> None:
    marker = tmp_path / "locked"
    with pytest.raises(sperse.WorkerDied):
        die_in_update(key, str(marker)).result(timeout=WAIT)
    assert marker.exists()  # it died holding the lock
    assert bump(key).result(timeout=WAIT) == 1
    assert bump(key).result(timeout=WAIT) == 2


def test_a_task_cancelled_inside_update_leaves_the_key_unlocked(key: str, tmp_path: Path) -> None:
    marker = tmp_path / "locked"
    p = sleep_in_update(key, str(marker))
    deadline = time.monotonic() + WAIT
    while not marker.exists():  # it holds the lock now
        assert time.monotonic() < deadline, "the update never started"
        time.sleep(0.01)
    assert p.cancel()
    with pytest.raises(sperse.TaskCancelled):
        p.result(timeout=WAIT)
    assert bump(key).result(timeout=WAIT) == 1


def test_update_inside_update_of_the_same_key_is_a_clear_error(key: str) -> None:
    with pytest.raises(sperse.RemoteError, match="already locked by this thread"):
        nested_update(key).result(timeout=WAIT)
    assert bump(key).result(timeout=WAIT) == 1  # and the key was released


def test_worker_cache_runs_its_factory_once_per_worker_process(key: str) -> None:
    results = sperse.gather(*[cached(key) for _ in range(20)], timeout=WAIT)
    tokens: dict[int, set[str]] = {}
    for pid, token in results:
        tokens.setdefault(pid, set()).add(token)
    assert all(len(seen) == 1 for seen in tokens.values())
    runs = {pid: read(f"{key}-runs-{pid}").result(timeout=WAIT) for pid in tokens}
    assert set(runs.values()) == {1}


def test_each_server_has_a_store_of_its_own(key: str, cluster: sperse.Cluster) -> None:
    names = [server.name for server in cluster.servers()]
    for name in names:
        write.options(on=f"@{name}")(key, name).result(timeout=WAIT)
    found = [read.options(on=f"@{name}")(key).result(timeout=WAIT) for name in names]
    assert found == names


def test_snapshot_returns_keys_and_values(key: str) -> None:
    write(key, ("a", 1)).result(timeout=WAIT)
    write(key + "-n", 3).result(timeout=WAIT)
    found = snapshot().result(timeout=WAIT)
    assert found[key] == ("a", 1)
    assert found[key + "-n"] == 3


# ---- bad input ---------------------------------------------------------------------------


def test_state_outside_remote_code_is_a_clear_error() -> None:
    with pytest.raises(sperse.SperseError, match="only inside remote code"):
        sperse.state()


def test_incr_of_a_string_is_a_type_error_naming_the_key(key: str) -> None:
    write(key, "text").result(timeout=WAIT)
    with pytest.raises(
        sperse.RemoteError, match=re.escape(f"{key!r} holds a str, not a number")
    ) as info:
        incr(key).result(timeout=WAIT)
    assert info.value.type_name.endswith("TypeError")
    assert read(key).result(timeout=WAIT) == "text"


def test_an_unpicklable_value_is_a_clear_error(key: str) -> None:
    with pytest.raises(sperse.RemoteError, match=re.escape(f"state key {key!r}")) as info:
        set_unpicklable(key).result(timeout=WAIT)
    assert info.value.type_name.endswith("SerializationError")
    assert read(key).result(timeout=WAIT) is None


def test_the_client_can_look_at_a_servers_store(cluster: sperse.Cluster, key: str) -> None:
    write(key, {"rows": 3}).result(WAIT)
    incr(key + "-n").result(WAIT)
    seen = cluster.state("local")
    assert seen[key] == {"rows": 3} and seen[key + "-n"] == 1
