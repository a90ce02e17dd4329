"""Issue 17, item 3: restarting the coordinator (kill -9, then a new one on the same address
with the same token) loses no work while every server stays alive. The servers re-join the
new coordinator by themselves; the client keeps its sessions with them: a task running on a
server finishes there exactly once, a value held there stays usable, and the client's view
lists both servers again."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

import sperse
from sperse._backends.membership import MembershipWatch, members
from sperse._backends.multi import ClusterBackend
from sperse._up import LocalCluster

WAIT = 60.0  # a deadline, never a delay
HELD = 1 << 18  # int64s: 2 MiB, a value its server keeps (1 MiB and more)


def where_am_i() -> int:
    return os.getpid()


def big_array(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64)


def total(a: np.ndarray) -> int:
    return int(a.sum())


def gated_run(runs: str, gate: str, value: int) -> int:
    """Counts its run (one line in ``runs``), then waits (bounded) until the test opens
    ``gate``: a task in flight while the coordinator restarts."""
    with open(runs, "a") as file:
        file.write(f"{os.getpid()}\n")
    deadline = time.monotonic() + 90
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.005)
    return value


def wait_until(predicate: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        threading.Event().wait(0.02)  # the poll period, not a wait for an event


def runs_of(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.fixture
def local_cluster() -> Iterator[LocalCluster]:
    """A coordinator (heartbeat timeout 2 s: heartbeats every 0.4 s) and two servers of two
    workers each (a task waiting at the gate leaves a worker free)."""
    with LocalCluster(2, workers=2, heartbeat_timeout=2.0) as cluster:
        yield cluster


@pytest.fixture
def client(local_cluster: LocalCluster) -> Iterator[sperse.Cluster]:
    cluster = sperse.connect(local_cluster.url, token=local_cluster.token)
    try:
        yield cluster
    finally:
        cluster.close()


def listed(local_cluster: LocalCluster) -> set[str]:
    """The servers the coordinator lists now."""
    return {m.name for m in members(local_cluster.url, local_cluster.token)}


def test_a_coordinator_restart_loses_no_work(
    local_cluster: LocalCluster, client: sperse.Cluster, tmp_path: Path
) -> None:
    backend = client.backend
    assert isinstance(backend, ClusterBackend)
    watch = backend.watch
    assert isinstance(watch, MembershipWatch)
    held = sperse.remote(on="@server-1")(big_array)(HELD)
    wait_until(held.done, "the big value to be made on server-1")
    assert held.remote_value is not None, "a 2 MiB result stays on its server"

    gate, pinned_runs, free_runs = tmp_path / "gate", tmp_path / "pinned", tmp_path / "free"
    pinned = sperse.remote(on="@server-1")(gated_run)(str(pinned_runs), str(gate), 1)
    free = sperse.remote(gated_run)(str(free_runs), str(gate), 2)  # anywhere: movable
    wait_until(lambda: runs_of(pinned_runs) and runs_of(free_runs), "both tasks to start")
    streams = watch.streams

    local_cluster.restart_coordinator()
    wait_until(
        lambda: listed(local_cluster) == {"server-1", "server-2"},
        "both servers to re-join the new coordinator",
    )
    # The client watches the new coordinator, and has seen it list both servers.
    wait_until(lambda: watch.streams > streams, "the client to watch the new coordinator")
    wait_until(
        lambda: {m.name for m in watch.members()} == {"server-1", "server-2"},
        "the client's view of the new coordinator to list both servers",
    )
    assert {s.name for s in client.servers()} == {"server-1", "server-2"}

    gate.touch()
    assert pinned.result(WAIT) == 1
    assert free.result(WAIT) == 2
    assert (runs_of(pinned_runs), runs_of(free_runs)) == (1, 1), "each task ran exactly once"
    assert pinned.where == "server-1"

    # The value held on server-1 is still there: fetched here, and pulled by server-2.
    assert np.array_equal(held.result(WAIT), np.arange(HELD, dtype=np.int64))
    summed = sperse.remote(on="@server-2")(total)(held)
    assert summed.result(WAIT) == HELD * (HELD - 1) // 2

    # New work runs on both servers, over the sessions that never broke.
    on_1 = sperse.remote(on="@server-1")(where_am_i)()
    on_2 = sperse.remote(on="@server-2")(where_am_i)()
    assert on_1.result(WAIT) != on_2.result(WAIT)
    assert (on_1.where, on_2.where) == ("server-1", "server-2")
    assert {s.name for s in client.servers()} == {"server-1", "server-2"}
