"""examples/flows as a user runs them: each program a subprocess on a local cluster of 2
real servers it starts itself, its ``--json`` output against an independent computation on
generated input (``collections.Counter``, networkx, a plain loop, numpy); ``--connect`` once,
against a cluster this test starts; bad arguments and bad input refused with exit code 2
before any cluster starts; a failed flow, exit code 1; Ctrl-C stops the cluster."""

from __future__ import annotations

import collections
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

from sperse._up import LocalCluster

ROOT = Path(__file__).resolve().parents[2]
FLOWS = ROOT / "examples" / "flows"
DEADLINE = 110.0  # seconds, under the per-test timeout


def example(name: str, *args: str) -> list[str]:
    return [sys.executable, str(FLOWS / f"{name}.py"), *args]


def run_json(name: str, *args: str) -> object:
    done = subprocess.run(
        example(name, *args, "--json"), capture_output=True, text=True, timeout=DEADLINE
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # stdout is the JSON and nothing else


# -- the five examples against their oracles ---------------------------------------------------


def write_text(tmp_path: Path) -> Path:
    rng = np.random.default_rng(11)
    words = ["the", "a", "flow", "Ünïcode", "x1", "it's", "—", "end."]
    folder = tmp_path / "text"
    folder.mkdir()
    for i in range(5):
        lines = []
        for _ in range(400):
            picked = rng.choice(words, size=int(rng.integers(0, 9)))
            seps = rng.choice([" ", "  ", "\t", " \t "], size=len(picked))
            lines.append("".join(f"{w}{s}" for w, s in zip(picked, seps, strict=True)))
        (folder / f"part-{i}.txt").write_text("\n".join(lines), encoding="utf-8")
    (folder / "empty.txt").write_text("", encoding="utf-8")
    return folder


@pytest.mark.slow
def test_wordcount_is_counter(tmp_path: Path) -> None:
    folder = write_text(tmp_path)
    expected = collections.Counter[str]()
    for path in folder.iterdir():
        expected.update(path.read_text(encoding="utf-8").split())
    assert run_json("wordcount", "--input", str(folder)) == dict(expected)


def write_edges(path: Path, edges: list[tuple[int, int]], zeros: bool = False) -> None:
    """One pair a line; with ``zeros``, some ids padded with leading zeros (as read: ints)."""
    lines = [f"{u:03d} {v}" if zeros and u % 7 == 0 and u >= 0 else f"{u} {v}" for u, v in edges]
    path.write_text("\n".join(lines) + "\n\n", encoding="utf-8")


def random_edges(seed: int, nodes: int, count: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    ids = rng.choice(np.arange(-50, 10 * nodes), size=nodes, replace=False)
    pairs = rng.integers(0, nodes, size=(count, 2))
    return [(int(ids[a]), int(ids[b])) for a, b in pairs]


def networkx_pagerank(g: nx.DiGraph, damping: float, tol: float) -> dict[int, float]:
    try:
        import scipy  # noqa: F401  (nx.pagerank needs it)
    except ImportError:  # networkx's own pure-Python power iteration
        from networkx.algorithms.link_analysis.pagerank_alg import _pagerank_python

        result: dict[int, float] = _pagerank_python(g, alpha=damping, tol=tol, max_iter=1000)
        return result
    return dict(nx.pagerank(g, alpha=damping, tol=tol, max_iter=1000))


@pytest.mark.slow
def test_pagerank_is_networkx(tmp_path: Path) -> None:
    edges = random_edges(3, 300, 1200)
    edges += [edges[0], edges[1]]  # duplicates are one edge, as in a DiGraph
    edges += [(10_000, 10_001)]  # 10_001 has no successors (there are others too)
    path = tmp_path / "edges.txt"
    write_edges(path, edges, zeros=True)
    g = nx.DiGraph(edges)
    expected = networkx_pagerank(g, 0.9, 1e-10)
    got = run_json("pagerank", "--edges", str(path), "--damping", "0.9", "--tol", "1e-10")
    assert isinstance(got, dict)
    assert set(got) == {str(u) for u in g.nodes}
    assert max(abs(got[str(u)] - r) for u, r in expected.items()) < 1e-9
    assert abs(sum(got.values()) - 1.0) < 1e-9


def union_find(edges: list[tuple[int, int]]) -> dict[int, int]:
    parent: dict[int, int] = {}

    def find(u: int) -> int:
        parent.setdefault(u, u)
        while parent[u] != u:
            parent[u] = parent[parent[u]]
            u = parent[u]
        return u

    for u, v in edges:
        a, b = find(u), find(v)
        if a != b:
            parent[max(a, b)] = min(a, b)
    return {u: find(u) for u in parent}


@pytest.mark.slow
def test_components_are_union_find_and_networkx(tmp_path: Path) -> None:
    edges = random_edges(5, 400, 300)
    edges += [(20_000 + i, 20_001 + i) for i in range(200)]  # a long path: many hops
    edges += [(-7, -7)]  # a node alone (with itself)
    path = tmp_path / "edges.txt"
    write_edges(path, edges, zeros=True)
    expected = union_find(edges)
    by_networkx = {u: min(c) for c in nx.connected_components(nx.Graph(edges)) for u in c}
    assert expected == by_networkx
    assert run_json("components", "--edges", str(path)) == {
        str(u): label for u, label in expected.items()
    }


def collatz_steps(n: int) -> int:
    steps = 0
    while n != 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return steps


@pytest.mark.slow
def test_collatz_is_a_plain_loop() -> None:
    got = run_json("collatz", "--upto", "3000", "--steps-per-trip", "5")
    assert got == {str(n): collatz_steps(n) for n in range(1, 3001)}


def kmeans_numpy(points: np.ndarray, k: int, rounds: int) -> np.ndarray:
    centroids = points[:k].copy()
    for _ in range(rounds):
        d = ((points[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
        nearest = d.argmin(axis=1)
        for c in range(k):
            members = points[nearest == c]
            if len(members):
                centroids[c] = members.mean(axis=0)
    return centroids


@pytest.mark.slow
def test_kmeans_is_lloyd_in_numpy(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    centres = np.array([[0.0, 0.0, 0.0], [5.0, 5.0, 0.0], [0.0, 5.0, 5.0]])
    points = np.concatenate([c + rng.normal(size=(700, 3)) for c in centres])
    rng.shuffle(points)
    points = np.concatenate([[[100.0, 100.0, 100.0]], points])  # a centroid that loses its points
    path = tmp_path / "points.csv"
    path.write_text("\n".join(",".join(repr(float(x)) for x in p) for p in points) + "\n")
    got = run_json("kmeans", "--points", str(path), "--k", "4", "--rounds", "6")
    np.testing.assert_allclose(np.array(got), kmeans_numpy(points, 4, 6), rtol=1e-9, atol=1e-12)


@pytest.mark.slow
def test_service_answers_concurrent_clients_each_with_its_own_answer() -> None:
    got = run_json("service", "--clients", "8", "--requests", "150", "--users", "6")
    assert isinstance(got, dict)
    assert got["requests"] == got["answered"] == 1200
    assert got["wrong"] == []
    # every user's counter ends at the number of requests sent with that user
    assert got["counts"] == got["expected"] == {f"user-{u}": 200 for u in range(6)}


@pytest.mark.slow
def test_service_scaled_and_moved_while_clients_send_loses_no_request_and_no_count() -> None:
    args = ("--clients", "8", "--requests", "150", "--users", "6", "--reshape")
    got = run_json("service", *args)
    assert isinstance(got, dict)
    assert got["reshaped"] == [
        "scale count to 3",
        "scale count to 1",
        "move count to @server-2",
    ]
    assert got["requests"] == got["answered"] == 1200
    assert got["wrong"] == []
    assert got["counts"] == got["expected"] == {f"user-{u}": 200 for u in range(6)}


@pytest.mark.slow
def test_calls_a_chain_and_a_cycle_of_services_answer_every_request() -> None:
    got = run_json("calls", "--requests", "1000")
    assert isinstance(got, dict)
    assert got["requests"] == 1000
    assert got["chain"] == got["cycle"] == {"answered": 1000, "wrong": []}


# -- --connect, against a cluster started here -------------------------------------------------


@pytest.mark.slow
def test_connect_runs_on_a_running_cluster(tmp_path: Path) -> None:
    token = tmp_path / "token"
    with LocalCluster(2) as up:
        token.write_text(up.token + "\n", encoding="utf-8")
        got = run_json("collatz", "--upto", "500", "--connect", up.url, "--token-file", str(token))
        assert got == {str(n): collatz_steps(n) for n in range(1, 501)}
        folder = write_text(tmp_path)
        done = subprocess.run(  # without --json: the human-readable form
            example("wordcount", "--input", str(folder), "--connect", up.url),
            capture_output=True,
            text=True,
            timeout=DEADLINE,
            env={**os.environ, "SPERSE_TOKEN": up.token},
        )
        assert done.returncode == 0, done.stderr
        assert "distinct; the most frequent:" in done.stdout
        assert "starting a local cluster" not in done.stderr
        served = run_json(
            "service", "--requests", "20", "--connect", up.url, "--token-file", str(token)
        )
        assert isinstance(served, dict) and served["answered"] == 160 and served["wrong"] == []
        assert up.coordinator.alive() and all(s.alive() for s in up.servers)


# -- bad arguments, bad input, a failed flow, Ctrl-C ---------------------------------------------


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    (tmp_path / "edges.txt").write_text("1 2\n2 3\n", encoding="utf-8")
    (tmp_path / "bad_edges.txt").write_text("1 2\n2 three\n", encoding="utf-8")
    (tmp_path / "points.csv").write_text("1,2\n3,4\n", encoding="utf-8")
    (tmp_path / "ragged.csv").write_text("1,2\n3,4,5\n", encoding="utf-8")
    (tmp_path / "token").write_text("secret\n", encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("wordcount", [], "the following arguments are required: --input"),
        ("wordcount", ["--input", "{tmp}/nowhere"], "is not a directory"),
        ("wordcount", ["--input", "{tmp}", "--servers", "0"], "0 is not positive"),
        ("wordcount", ["--input", "{tmp}", "--servers", "two"], "'two' is not a whole number"),
        ("wordcount", ["--input", "{tmp}", "--servers", "2", "--connect", "x"], "not allowed"),
        ("wordcount", ["--input", "{tmp}", "--token-file", "{tmp}/token"], "goes with --connect"),
        (
            "wordcount",
            ["--input", "{tmp}", "--connect", "x", "--token-file", "{tmp}/no"],
            "no file",
        ),
        ("pagerank", ["--edges", "{tmp}/missing.txt"], "no file"),
        ("pagerank", ["--edges", "{tmp}/bad_edges.txt"], "line 2: '2 three' is not two node ids"),
        ("pagerank", ["--edges", "{tmp}/edges.txt", "--damping", "1.5"], "invalid fraction"),
        ("pagerank", ["--edges", "{tmp}/edges.txt", "--tol", "-1"], "invalid positive_float"),
        ("components", ["--edges", "{tmp}/bad_edges.txt"], "is not two node ids"),
        ("collatz", ["--upto", "0"], "0 is not positive"),
        ("collatz", [], "the following arguments are required: --upto"),
        ("kmeans", ["--points", "{tmp}/points.csv", "--k", "3", "--rounds", "2"], "only 2 points"),
        (
            "kmeans",
            ["--points", "{tmp}/ragged.csv", "--k", "1", "--rounds", "2"],
            "line 2: 3 coord",
        ),
        ("kmeans", ["--points", "{tmp}/points.csv", "--k", "1"], "required: --rounds"),
        ("service", ["--clients", "0"], "0 is not positive"),
        ("calls", ["--depth", "40"], "at most 30"),
    ],
)
def test_bad_arguments_are_refused_before_any_cluster_starts(
    inputs: Path, name: str, args: list[str], message: str
) -> None:
    argv = [a.replace("{tmp}", str(inputs)) for a in args]
    done = subprocess.run(
        example(name, *argv, "--json"), capture_output=True, text=True, timeout=DEADLINE
    )
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "starting a local cluster" not in done.stderr
    assert done.stdout == ""


@pytest.mark.slow
def test_a_run_that_fails_exits_1_saying_why(inputs: Path) -> None:
    edges = inputs / "cycle.txt"
    write_edges(edges, [(i, (i + 1) % 50) for i in range(50)] + [(0, 25)])
    done = subprocess.run(
        example("pagerank", "--edges", str(edges), "--max-rounds", "2", "--json"),
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert done.returncode == 1
    assert "pagerank.py: error: NotConverged: PageRank did not converge in 2 rounds" in done.stderr
    assert done.stdout == ""


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"  # a zombie has exited


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc (Linux)")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupt_stops_the_local_cluster(sig: signal.Signals) -> None:
    proc = subprocess.Popen(
        example("collatz", "--upto", "50000000", "--steps-per-trip", "1", "--json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + DEADLINE / 2
        seen = ""
        while "cluster ready at" not in seen:
            left = deadline - time.monotonic()
            assert left > 0 and proc.poll() is None, f"the cluster did not start: {seen}"
            if select.select([proc.stderr], [], [], left)[0]:
                seen += proc.stderr.readline()
        cluster = children(proc.pid)
        assert len(cluster) == 3  # the coordinator and two servers
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=DEADLINE / 2)
        assert proc.returncode == 130, err
        assert "interrupted" in err and out == ""
        assert all(gone(pid) for pid in cluster)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
