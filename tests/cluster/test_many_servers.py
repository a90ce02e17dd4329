"""One client, many real servers (DESIGN §4): routing, data moving server to server, a server
lost in the middle of a map. Servers are real ``sperse server`` processes on loopback behind
one ``ClusterBackend`` (a fixed list here; tests/cluster/test_coordinator_cluster.py has the
coordinator)."""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import sperse
from sperse._backends.multi import ClusterBackend
from sperse._backends.sperse import EmbeddedServer
from sperse.errors import NoMatchingServer, ServerLost

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


def wait_until(predicate: object, timeout: float = WAIT, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        threading.Event().wait(0.02)


def start_servers(token: str, specs: list[tuple[str, list[str]]]) -> list[EmbeddedServer]:
    servers: list[EmbeddedServer] = []
    try:
        for name, tags in specs:
            servers.append(EmbeddedServer(workers=1, name=name, tags=tags, token=token))
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers


@pytest.fixture(scope="module")
def three() -> Iterator[sperse.Cluster]:
    """Servers gpu-1 (gpu), db-1 (db, fast) and plain-1 (no tags)."""
    token = secrets.token_urlsafe(16)
    servers = start_servers(token, [("gpu-1", ["gpu"]), ("db-1", ["db", "fast"]), ("plain-1", [])])
    backend = ClusterBackend([s.address for s in servers], token=token, processes=servers)
    with sperse.Cluster(backend) as cluster:
        yield cluster


def test_the_cluster_lists_every_server(three: sperse.Cluster) -> None:
    servers = {s.name: s for s in three.servers()}
    assert set(servers) == {"gpu-1", "db-1", "plain-1"}
    assert servers["db-1"].tags == {"db", "fast"}
    assert servers["gpu-1"].workers == 1


@pytest.mark.parametrize(
    ("on", "expected"),
    [
        ("gpu", "gpu-1"),
        ("db", "db-1"),
        ("db & fast", "db-1"),
        ("gpu | db", None),
        ("!gpu & !db", "plain-1"),
        ("@plain-1", "plain-1"),
        ("@gpu-1", "gpu-1"),
    ],
)
def test_routed_work_lands_where_it_must(
    three: sperse.Cluster, on: str, expected: str | None
) -> None:
    f = sperse.remote(on=on)(where_am_i)
    places: set[str] = set()
    pendings = [f() for _ in range(4)]
    for p in pendings:
        p.result(WAIT)
        places.add(p.where)
    if expected is None:
        assert places <= {"gpu-1", "db-1"}
    else:
        assert places == {expected}


def test_unconstrained_work_spreads_over_every_server(three: sperse.Cluster) -> None:
    f = sperse.remote(where_am_i)
    pendings = [f() for _ in range(30)]
    sperse.wait(pendings, timeout=WAIT)
    assert {p.where for p in pendings} == {"gpu-1", "db-1", "plain-1"}


def test_no_matching_server_names_the_constraint_and_the_servers(three: sperse.Cluster) -> None:
    f = sperse.remote(on="tpu")(where_am_i)
    with pytest.raises(NoMatchingServer) as caught:
        f().result(WAIT)
    message = str(caught.value)
    assert "[tpu]" in message and "no server has the tag tpu" in message
    assert "db-1 (db, fast)" in message and "plain-1 (no tags)" in message
    assert message.count("where_am_i()") == 1  # the task's label once, not twice


def test_the_workspace_routes_remote_statements(three: sperse.Cluster) -> None:
    ws = sperse.Workspace(cluster=three)
    ws.run("import os\npid = remote[db] os.getpid()\nhere = pid > 0")
    assert ws.wait("here", WAIT) is True
    assert ws.cell("pid").where == "db-1"


def test_a_value_moves_from_server_to_server_without_the_client(three: sperse.Cluster) -> None:
    n = 1 << 19  # 4 MiB of int64: stays on the server that made it
    made = sperse.remote(on="@gpu-1")(big_array)(n)
    summed = sperse.remote(on="@db-1")(total)(made)
    assert summed.result(WAIT) == n * (n - 1) // 2
    assert made.where == "gpu-1" and summed.where == "db-1"
    backend = three.backend
    assert isinstance(backend, ClusterBackend)
    pulled = backend.backend_of("db-1").stats()
    served = backend.backend_of("gpu-1").stats()
    assert pulled["objects_pulled"] >= 1 and pulled["bytes_pulled"] >= n * 8
    assert served["objects_served"] >= 1 and served["bytes_served"] >= n * 8


def test_a_put_value_stays_where_it_was_put_and_moves_where_it_is_used(
    three: sperse.Cluster,
) -> None:
    n = 1 << 19
    kept = sperse.put(big_array(n), on="@plain-1")
    here = sperse.remote(on="@plain-1")(total)(kept)
    there = sperse.remote(on="@db-1")(total)(kept)  # db-1 pulls it from plain-1
    assert here.result(WAIT) == there.result(WAIT) == n * (n - 1) // 2
    assert (kept.where, here.where, there.where) == ("plain-1", "plain-1", "db-1")
    assert kept.remote_value is not None and kept.remote_value.ref.server == "plain-1"


def test_a_server_killed_mid_map_has_its_chunks_run_elsewhere(tmp_path: Path) -> None:
    token = secrets.token_urlsafe(16)
    servers = start_servers(token, [("stays", []), ("dies", [])])
    victim = servers[1]
    backend = ClusterBackend(
        [s.address for s in servers], token=token, processes=servers, reconnect_timeout=0.5
    )
    gate = tmp_path / "gate"
    with sperse.Cluster(backend) as cluster:
        items = list(range(64))
        mapped = sperse.map(lambda x: gated_square(x, str(gate)), items, chunksize=1)
        busy = {s.name: s.busy for s in cluster.servers()}
        assert busy["dies"] > 0, f"no chunk in flight on the server to kill: {busy}"
        victim.process.kill()
        gate.touch()
        assert mapped.result(WAIT) == [x * x for x in items]
        assert {c.where for c in mapped.chunks} == {"stays"}
        assert [s.name for s in cluster.servers()] == ["stays"]


def test_work_pinned_to_a_lost_server_fails_with_server_lost(tmp_path: Path) -> None:
    token = secrets.token_urlsafe(16)
    servers = start_servers(token, [("stays", []), ("dies", [])])
    backend = ClusterBackend(
        [s.address for s in servers], token=token, processes=servers, reconnect_timeout=0.5
    )
    gate = tmp_path / "gate"
    with sperse.Cluster(backend):
        pinned = sperse.remote(on="@dies")(gated_square)(3, str(gate))
        wait_until(lambda: pinned.where == "dies", what="the pinned call to start")
        servers[1].process.kill()
        with pytest.raises(ServerLost, match="pinned to dies"):
            pinned.result(WAIT)
