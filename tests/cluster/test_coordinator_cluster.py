"""A client on a coordinator with three real servers of different tags (`LocalCluster`, as
`sperse up` starts): membership followed live, routing, a server that joins mid-run, a
server killed mid-map, a stale heartbeat."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

import sperse
from sperse._backends.multi import ClusterBackend
from sperse._up import LocalCluster

WAIT = 60.0  # a deadline, never a delay


def where_am_i() -> int:
    return os.getpid()


def big_array(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64)


def total(a: np.ndarray) -> int:
    return int(a.sum())


def gated_square(x: int, gate: str) -> int:
    """Waits (bounded) until the test opens the gate: keeps chunks in flight."""
    deadline = time.monotonic() + 60
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.005)
    return x * x


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        threading.Event().wait(0.02)


def names(cluster: sperse.Cluster) -> set[str]:
    return {s.name for s in cluster.servers()}


@pytest.fixture
def local_cluster() -> Iterator[LocalCluster]:
    """A coordinator (heartbeat timeout 2 s) and servers server-1 (gpu), server-2 (db) and
    server-3 (no tags), one worker each."""
    with LocalCluster(3, tags=[["gpu"], ["db"], []], heartbeat_timeout=2.0) as cluster:
        yield cluster


@pytest.fixture
def client(local_cluster: LocalCluster) -> Iterator[sperse.Cluster]:
    cluster = sperse.connect(local_cluster.url, token=local_cluster.token)
    try:
        assert isinstance(cluster.backend, ClusterBackend)
        yield cluster
    finally:
        cluster.close()


def test_connect_to_a_coordinator_lists_its_servers(client: sperse.Cluster) -> None:
    servers = {s.name: s for s in client.servers()}
    assert set(servers) == {"server-1", "server-2", "server-3"}
    assert servers["server-1"].tags == {"gpu"} and servers["server-2"].tags == {"db"}


def test_routed_work_and_data_moving_between_servers(client: sperse.Cluster) -> None:
    on_gpu = sperse.remote(on="gpu")(where_am_i)()
    on_db = sperse.remote(on="db")(where_am_i)()
    assert on_gpu.result(WAIT) != on_db.result(WAIT)
    assert (on_gpu.where, on_db.where) == ("server-1", "server-2")

    n = 1 << 19
    made = sperse.remote(on="gpu")(big_array)(n)
    summed = sperse.remote(on="db")(total)(made)
    assert summed.result(WAIT) == n * (n - 1) // 2
    backend = client.backend
    assert isinstance(backend, ClusterBackend)
    stats = backend.server_stats()
    assert stats["server-2"]["bytes_pulled"] >= n * 8
    assert stats["server-1"]["bytes_served"] >= n * 8
    assert stats["server-3"]["bytes_pulled"] == 0


def test_a_server_that_joins_mid_run_receives_work(
    local_cluster: LocalCluster, client: sperse.Cluster, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    items = list(range(80))
    mapped = sperse.map(lambda x: gated_square(x, str(gate)), items, chunksize=1)
    local_cluster.add_server("late-1", tags=["late"])
    wait_until(lambda: "late-1" in names(client), "the client to see late-1 join")
    gate.touch()
    assert mapped.result(WAIT) == [x * x for x in items]
    assert "late-1" in {c.where for c in mapped.chunks}
    assert sperse.remote(on="late")(where_am_i)().result(WAIT) > 0


def test_a_server_killed_mid_map_has_its_chunks_rerun(
    local_cluster: LocalCluster, client: sperse.Cluster, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    items = list(range(64))
    mapped = sperse.map(lambda x: gated_square(x, str(gate)), items, chunksize=1)
    busy = {s.name: s.busy for s in client.servers()}
    assert busy["server-3"] > 0, busy
    local_cluster.kill_server("server-3")
    wait_until(lambda: "server-3" not in names(client), "the client to drop server-3")
    gate.touch()
    assert mapped.result(WAIT) == [x * x for x in items]
    assert "server-3" not in {c.where for c in mapped.chunks}


def test_a_stale_heartbeat_removes_a_server(
    local_cluster: LocalCluster, client: sperse.Cluster
) -> None:
    frozen = local_cluster.server("server-1")
    os.kill(frozen.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: "server-1" not in names(client), "the coordinator to drop server-1")
        p = sperse.remote(where_am_i)()
        p.result(WAIT)
        assert p.where in {"server-2", "server-3"}
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    wait_until(lambda: "server-1" in names(client), "server-1 to join again")
