"""Flows on real servers (``LocalCluster``: a coordinator and two server processes): the
five algorithms against the oracles of the in-process tests, placement, back-pressure
measured by the transport's counters, bad input, a server killed mid-flow, and restart.
No sleeps: each wait is on a Pending or a condition, with a deadline."""

from __future__ import annotations

import collections
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import test_flow_algorithms as alg
from networkx.algorithms.link_analysis.pagerank_alg import _pagerank_python
from wasm_modules import UPPER_WAT

import sperse
from sperse._flow.api import OnServers
from sperse._up import LocalCluster

WAIT = 90.0  # a deadline, never a delay


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        threading.Event().wait(0.02)


@pytest.fixture(scope="module")
def two() -> Iterator[LocalCluster]:
    """server-1 (gpu) and server-2 (db), two workers each."""
    with LocalCluster(2, tags=[["gpu"], ["db"]], workers=2) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def client(two: LocalCluster) -> Iterator[sperse.Cluster]:
    cluster = sperse.connect(two.url, token=two.token)
    try:
        with cluster:
            yield cluster
    finally:
        cluster.close()


def on(client: sperse.Cluster, **kw: Any) -> OnServers:
    return OnServers(client, **kw)


# -- the five algorithms ---------------------------------------------------------------------


def test_flow_runs_on_servers_by_default(client: sperse.Cluster) -> None:
    f = sperse.Flow("default", cluster=client)
    out = f.source(range(10)).map(lambda x: x + 1).collect()
    run = f.run()
    assert sorted(out.result(WAIT)) == list(range(1, 11))
    assert {h["server"] for h in run.hosts()} <= {"server-1", "server-2"}
    assert run.result(WAIT).items["map#1"] == 10


def test_word_count(client: sperse.Cluster) -> None:
    rng = np.random.default_rng(1)
    words = ["a", "b", "c", "dd", "eee"]
    lines = [" ".join(rng.choice(words, size=int(rng.integers(0, 8)))) for _ in range(5000)]
    expected = collections.Counter(w for line in lines for w in line.split())
    assert alg.word_count(lines, on(client), 2, 2) == dict(expected)


def test_word_count_with_map_side_combining(client: sperse.Cluster) -> None:
    lines = [f"a b {i % 50} a" for i in range(20_000)]
    f = sperse.Flow("wc", cluster=client)
    out = (
        f.source(lines)
        .flat_map(str.split)
        .on(replicas=2)
        .key_by(lambda w: w)
        .fold(0, lambda n, w: n + 1, combine=lambda a, b: a + b, name="count")
        .on(replicas=2)
        .collect()
    )
    run = f.run(executor=on(client))
    assert out.result(WAIT) == dict(collections.Counter(w for line in lines for w in line.split()))
    items = run.result(WAIT).items
    assert items["count"] < items["count.combine"] / 10  # partials, not words, crossed


def test_pagerank(client: sperse.Cluster) -> None:
    g = alg.random_graph(7)
    expected = _pagerank_python(g, alpha=alg.DAMPING, tol=alg.TOL, max_iter=1000)
    got = alg.pagerank(g, on(client), 2)
    assert max(abs(got[u] - expected[u]) for u in got) < 1e-8


def test_connected_components(client: sperse.Cluster) -> None:
    rng = np.random.default_rng(3)
    edges = [(int(a), int(b)) for a, b in rng.integers(0, 40, size=(30, 2))]
    nodes = list(range(40))
    assert alg.components(edges, nodes, on(client), 2) == alg.union_find(edges, nodes)


def test_collatz(client: sperse.Cluster) -> None:
    numbers = list(range(1, 400))
    f = sperse.Flow("collatz", cluster=client)
    out = (
        f.source([(n, n, 0) for n in numbers])
        .iterate(
            lambda s: s.map(alg.step).on(replicas=2), until=lambda t: t[1] == 1, max_rounds=1000
        )
        .map(lambda t: (t[0], t[2]))
        .collect()
    )
    f.run(executor=on(client))
    assert sorted(out.result(WAIT)) == [(n, alg.collatz_steps(n)) for n in numbers]


def test_kmeans(client: sperse.Cluster) -> None:
    points = np.random.default_rng(5).normal(size=(300, 2))
    expected = alg.kmeans_numpy(points, 3, 4)
    got = alg.kmeans_flow(points, 3, 4, on(client), 2)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_read_lines_on_the_servers_and_to_dir(client: sperse.Cluster, tmp_path: Any) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        (src / f"f{i}.txt").write_text("".join(f"{i} {j}\n" for j in range(100)))
    f = sperse.Flow("files", cluster=client)
    paths = (
        f.read_lines(src)
        .on(replicas=2)
        .map(lambda line: int(line.split()[1]))
        .to_dir(tmp_path / "out")
    )
    f.run(executor=on(client))
    numbers = sorted(
        int(x) for p in paths.result(WAIT) for x in Path(p).read_text(encoding="utf-8").split()
    )
    assert numbers == sorted(list(range(100)) * 4)


# -- placement -----------------------------------------------------------------------------


def test_placement_by_tag_pin_and_per_server(two: LocalCluster, client: sperse.Cluster) -> None:
    f = sperse.Flow("placed", cluster=client)
    s = f.source(range(100), name="src").map(lambda x: x, name="everywhere")
    s = s.on(replicas="per_server")
    s = s.map(lambda x: x, name="gpu_map").on("gpu", replicas=3)
    s = s.map(lambda x: x, name="pinned").on("@server-2", replicas=1)
    out = s.collect(name="out")
    run = f.run(executor=on(client))
    assert sorted(out.result(WAIT)) == list(range(100))
    wait_until(lambda: all("ppid" in h for h in run.hosts()), "every host's process")
    where: dict[str, list[str]] = collections.defaultdict(list)
    for h in run.hosts():
        where[h["operators"]].append(h["server"])
        assert h["ppid"] == two.server(h["server"]).pid  # the host really runs there
    assert sorted(where["everywhere"]) == ["server-1", "server-2"]
    assert where["gpu_map"] == ["server-1"] * 3
    assert where["pinned -> out"] == ["server-2"]


def test_no_matching_server_is_refused_at_run(client: sperse.Cluster) -> None:
    f = sperse.Flow("nowhere", cluster=client)
    f.source([1]).map(lambda x: x).on("tpu").collect()
    with pytest.raises(sperse.NoMatchingServer):
        f.run(executor=on(client))


# -- back-pressure ---------------------------------------------------------------------------


def slow(x: int) -> int:
    total = 0
    for i in range(2000):
        total += i
    return x + total - total


def test_a_slow_operator_bounds_what_its_sources_have_in_flight(client: sperse.Cluster) -> None:
    f = sperse.Flow("slow", cluster=client)
    out = (
        f.source(range(20_000))
        .map(lambda x: x, name="fast")
        .on(replicas=2)
        .map(slow, name="slow")
        .on(replicas=1)
        .filter(lambda x: x % 1000 == 0, name="few")
        .collect()
    )
    run = f.run(executor=on(client, window=2, batch_items=500))
    backlog = []  # the slow stage's, while it runs (as %flows shows it)
    while not out.done():
        backlog.append({op.name: op.backlog for op in run.operators()}["slow"])
        sperse.wait([out], timeout=0.05)
    assert len(out.result(WAIT)) == 20
    # What %flows shows never passes the inbox's bound, in items (sampled: it may be 0).
    assert max(backlog, default=0) <= (2 * 2 + 1) * 500
    run.result(WAIT)  # the hosts' final counts
    final = {op.name: op for op in run.operators()}
    assert (final["slow"].items_in, final["slow"].items_out, final["slow"].backlog) == (
        20_000,
        20_000,
        0,
    )
    assert (final["few"].items_in, final["few"].items_out) == (20_000, 20)
    hosts = {h["operators"].split(" -> ")[0]: h for h in run.hosts()}
    # The fast replicas never had more than `window` deliveries unprocessed by the slow
    # one, whatever its pace; its inbox held at most window x senders deliveries.
    for h in run.hosts():
        assert h["unacked_most"] <= 2, h
    assert 2 <= hosts["slow"]["inbox_most"] <= 2 * 2 + 1  # deliveries did wait for it
    assert hosts["slow"]["processed"] > 10  # many deliveries went through it


# -- bad input -------------------------------------------------------------------------------


def boom(x: int) -> int:
    if x == 77:
        raise ValueError("no 77")
    return x


@pytest.mark.parametrize(
    ("build", "operator", "item", "why"),
    [
        (lambda f: f.source(range(200)).map(boom, name="m").on(replicas=2), "m", "77", "no 77"),
        (
            lambda f: f.source(range(5)).key_by(lambda x: [x], name="k").fold(0, max),
            "k",
            "0",
            "unhashable",
        ),
        (
            lambda f: f.source(range(5)).map(lambda x: threading.Lock(), name="u").on(replicas=2),
            "u",
            "lock",
            "pickled",
        ),
        (lambda f: f.source([1, threading.Lock()], name="s"), "s", "lock", "pickled"),
    ],
    ids=["raises", "unhashable-key", "unpicklable-item", "unpicklable-source"],
)
def test_bad_input_fails_the_run_naming_operator_and_item(
    client: sperse.Cluster, build: Any, operator: str, item: str, why: str
) -> None:
    f = sperse.Flow("bad", cluster=client)
    out = build(f).collect()
    run = f.run(executor=on(client))
    with pytest.raises(sperse.FlowFailed) as info:
        out.result(WAIT)
    assert info.value.operator == operator
    assert item in info.value.item
    assert why in str(info.value)
    with pytest.raises(sperse.FlowFailed):
        run.result(WAIT)
    assert run.progress().state == "failed"


def test_a_file_that_cannot_be_read_fails_the_run_naming_its_source(
    client: sperse.Cluster, tmp_path: Any
) -> None:
    (tmp_path / "a.txt").write_text("fine\n")
    (tmp_path / "b.txt").write_bytes(b"ok\n\xff\xfe not utf-8\n")
    f = sperse.Flow("unreadable", cluster=client)
    out = f.read_lines(tmp_path, name="lines").on(replicas=2).map(len).collect()
    run = f.run(executor=on(client))
    with pytest.raises(sperse.FlowFailed, match="could not read its input: UnicodeDecodeError"):
        out.result(WAIT)
    with pytest.raises(sperse.FlowFailed) as info:
        run.result(WAIT)
    assert info.value.operator == "lines"


def test_cancel_settles_every_sink(client: sperse.Cluster) -> None:
    f = sperse.Flow("cancelled", cluster=client)
    q = f.queue()
    a = q.map(lambda x: x).collect()
    b = q.map(lambda x: -x).collect()
    run = f.run(executor=on(client))
    q.push(1, 2, 3)
    wait_until(lambda: run.progress().items.get("map#1", 0) == 3, "the items to go through")
    assert run.cancel()
    for pending in (a, b):
        with pytest.raises(sperse.TaskCancelled):
            pending.result(WAIT)


# -- map_wasm, and state shared by the operators of a server ---------------------------------


def test_map_wasm_runs_on_the_servers(client: sperse.Cluster) -> None:
    f = sperse.Flow("wasm", cluster=client)
    words = [f"word {i}".encode() for i in range(3000)]
    out = (
        f.source(words)
        .shuffle()
        .map_wasm(UPPER_WAT.encode(), "upper", name="upper")
        .on(replicas="per_server")
        .map(bytes.decode, name="decode")
        .collect()
    )
    run = f.run(executor=on(client))
    assert sorted(out.result(WAIT)) == sorted(w.decode().upper() for w in words)
    assert run.result(WAIT).items["upper"] == 3000
    upper = [h["server"] for h in run.hosts() if h["operators"].startswith("upper")]
    assert sorted(upper) == ["server-1", "server-2"]


def test_map_wasm_on_the_servers_fails_naming_operator_and_item(client: sperse.Cluster) -> None:
    f = sperse.Flow("wasm-bad", cluster=client)
    out = f.source([b"fine", "text"]).map_wasm(UPPER_WAT.encode(), "upper", name="up").collect()
    f.run(executor=on(client))
    with pytest.raises(sperse.FlowFailed) as info:
        out.result(WAIT)
    assert (info.value.operator, info.value.item) == ("up", "'text'")
    assert "map_wasm takes bytes, not str" in str(info.value)
    f = sperse.Flow("wasm-trap", cluster=client)
    out = f.source([b"x"]).map_wasm(UPPER_WAT.encode(), "trap", name="trapped").collect()
    f.run(executor=on(client))
    with pytest.raises(sperse.FlowFailed, match="trapped: wasm trap: wasm `unreachable`"):
        out.result(WAIT)


def lookup_op(key: str) -> Callable[[int], tuple[int, int]]:
    """A map that counts its items in the server's store and reads a table made by
    ``sperse.shared`` (its builds counted in the store too)."""

    def build() -> dict[int, int]:
        sperse.state().incr(f"{key}:builds")
        return {i: i * i for i in range(1000)}

    def lookup(x: int) -> tuple[int, int]:
        sperse.state().incr(f"{key}:seen")
        return sperse.shared(key, build)[x], os.getpid()

    return lookup


def test_replicas_on_one_server_share_its_state_and_one_shared_value(
    client: sperse.Cluster,
) -> None:
    key = f"squares-{uuid.uuid4().hex[:8]}"
    f = sperse.Flow("shared", cluster=client)
    out = (
        f.source(range(1000))
        .shuffle()
        .map(lookup_op(key), name="lookup")
        .on("@server-1", replicas=3)
        .collect()
    )
    run = f.run(executor=on(client))
    found = out.result(WAIT)
    assert sorted(v for v, _ in found) == [i * i for i in range(1000)]
    pids = {pid for _, pid in found}
    hosts = [h for h in run.hosts() if h["operators"].startswith("lookup")]
    assert len(hosts) == 3 and {h["server"] for h in hosts} == {"server-1"}
    store = client.state("server-1")
    assert store[f"{key}:seen"] == 1000  # every replica's incr went to the one store
    assert store[f"{key}:builds"] == 1  # one build for the server...
    assert len(pids) >= 2  # ...though its replicas ran in several processes


def test_each_server_builds_a_shared_value_once(client: sperse.Cluster) -> None:
    key = f"squares-{uuid.uuid4().hex[:8]}"
    f = sperse.Flow("shared2", cluster=client)
    out = f.source(range(1000)).shuffle().map(lookup_op(key)).on(replicas="per_server").collect()
    f.run(executor=on(client))
    assert len(out.result(WAIT)) == 1000
    for server in ("server-1", "server-2"):
        store = client.state(server)
        assert store[f"{key}:builds"] == 1, server
        assert 0 < store[f"{key}:seen"] < 1000


def test_an_unpicklable_shared_value_is_built_once_per_process(client: sperse.Cluster) -> None:
    key = f"lock-{uuid.uuid4().hex[:8]}"

    def build() -> Any:
        sperse.state().incr(f"{key}:builds")
        return threading.Lock()  # cannot be pickled: kept where it was built

    def use(x: int) -> int:
        lock = sperse.shared(key, build)
        assert lock is sperse.shared(key, build)
        return os.getpid()

    f = sperse.Flow("unpicklable", cluster=client)
    out = f.source(range(300)).shuffle().map(use).on("@server-2", replicas=2).collect()
    f.run(executor=on(client))
    pids = set(out.result(WAIT))
    assert client.state("server-2")[f"{key}:builds"] == len(pids)


# -- a server killed mid-flow ----------------------------------------------------------------


def started_queue_flow(
    client: sperse.Cluster, restart: int
) -> tuple[Any, Any, Any, dict[str, Any]]:
    """source (queue) -> map x3 replicas -> collect; the queue has some items in already."""
    f = sperse.Flow("doomed", cluster=client)
    q = f.queue(name="q")
    out = q.map(lambda x: x * 2, name="double").on(replicas=3).collect(name="out")
    run = f.run(executor=on(client, restart=restart))
    q.push(*range(1000))
    wait_until(lambda: run.progress().items.get("double", 0) >= 100, "items to go through")
    victim = next(h for h in run.hosts() if h["operators"] == "double")
    return q, out, run, victim


def test_a_server_killed_mid_flow_fails_the_run_naming_operator_and_server(
    three: tuple[LocalCluster, sperse.Cluster],
) -> None:
    lc, client = three
    q, out, _, victim = started_queue_flow(client, restart=0)
    lc.kill_server(victim["server"])
    with pytest.raises(sperse.FlowFailed) as info:  # not a TimeoutError: the run ends
        out.result(WAIT)
    assert info.value.operator in ("double", "out", "q")
    assert info.value.server == victim["server"]
    assert victim["server"] in str(info.value)
    q.close()


def test_restart_runs_again_from_the_sources_with_an_exact_result(
    three: tuple[LocalCluster, sperse.Cluster],
) -> None:
    lc, client = three
    q, out, run, victim = started_queue_flow(client, restart=2)
    lc.kill_server(victim["server"])
    q.push(*range(1000, 2000))
    q.close()
    assert sorted(out.result(WAIT)) == [2 * x for x in range(2000)]
    assert run.result(WAIT).state == "done"
    assert all(h["attempt"] >= 1 and h["server"] != victim["server"] for h in run.hosts())
