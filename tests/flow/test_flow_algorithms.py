"""Five algorithms as flows against independent oracles on generated inputs, and the same
results whatever order the in-process executor delivers messages in (Hypothesis draws the
seed of the interleaving, the replica counts and the input)."""

from __future__ import annotations

import collections
from typing import Any

import networkx as nx
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from networkx.algorithms.link_analysis.pagerank_alg import _pagerank_python

import sperse
from sperse._flow.api import Executor, InProcess

SETTINGS = settings(max_examples=25, deadline=None)


def run(f: sperse.Flow, seed: int | Executor | None) -> None:
    """Run in this process, delivering in the interleaving ``seed`` draws, or on an
    executor (the same builders run on servers in test_flow_servers.py)."""
    if seed is None or isinstance(seed, int):
        f.run(executor=InProcess(seed=seed, batch=16))
    else:
        f.run(executor=seed)


# -- word count ----------------------------------------------------------------------------------


def word_count(lines: list[str], seed: int | Executor | None, r1: int, r2: int) -> dict[str, int]:
    f = sperse.Flow("wc")
    counts = (
        f.source(lines)
        .flat_map(str.split)
        .on(replicas=r1)
        .key_by(lambda w: w)
        .fold(0, lambda n, w: n + 1)
        .on(replicas=r2)
    )
    out = counts.collect()
    run(f, seed)
    result: dict[str, int] = out.result(timeout=60)
    return result


@SETTINGS
@given(
    st.lists(st.text(alphabet="abc \n", max_size=12), max_size=40),
    st.integers(0, 10**6) | st.none(),
    st.integers(1, 4),
    st.integers(1, 4),
)
def test_word_count_is_counter(lines: list[str], seed: int | None, r1: int, r2: int) -> None:
    expected = collections.Counter(w for line in lines for w in line.split())
    assert word_count(lines, seed, r1, r2) == dict(expected)


# -- PageRank ------------------------------------------------------------------------------------

TOL = 1e-10
DAMPING = 0.85


def random_graph(seed: int, n: int = 40, p: float = 0.08) -> nx.DiGraph:
    g = nx.gnp_random_graph(n, p, seed=seed, directed=True)
    return g


def pagerank(g: nx.DiGraph, seed: int | Executor | None, replicas: int) -> dict[int, float]:
    nodes = sorted(g.nodes)
    n = len(nodes)
    adjacency = [(u, sorted(g.successors(u))) for u in nodes]

    def contributions(st: Any) -> Any:
        def emit(entry: tuple[int, list[int]]) -> list[tuple[int, float]]:
            u, outs = entry
            rank = st.get()[u]
            if not outs:  # dangling: spread over every node
                return [(-1, rank)]
            return [(v, rank / len(outs)) for v in outs]

        return emit

    def body(s: sperse._flow.stream.Stream, st: Any) -> Any:
        return s.flat_map(contributions(st)).on(replicas=replicas)

    def fold(acc: dict[int, float], kv: tuple[int, float]) -> dict[int, float]:
        acc[kv[0]] = acc.get(kv[0], 0.0) + kv[1]
        return acc

    def combine(old: dict[int, float], parts: list[dict[int, float]]) -> dict[int, float]:
        total: dict[int, float] = {}
        for part in parts:
            for k, v in part.items():
                total[k] = total.get(k, 0.0) + v
        dangling = total.pop(-1, 0.0)
        return {u: (1 - DAMPING) / n + DAMPING * (total.get(u, 0.0) + dangling / n) for u in nodes}

    def l1(old: dict[int, float], new: dict[int, float]) -> float:
        return sum(abs(new[u] - old[u]) for u in nodes)

    f = sperse.Flow("pagerank")
    ranks = f.source(adjacency).replay(
        {u: 1 / n for u in nodes},
        body,
        fold,
        combine,
        until=lambda old, new: l1(old, new) < n * TOL,
        max_rounds=1000,
        zero={},
        delta=l1,
    )
    out = ranks.collect()
    run(f, seed)
    (result,) = out.result(timeout=60)
    return dict(result)


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 1000), st.integers(0, 10**6) | st.none(), st.integers(1, 3))
def test_pagerank_is_networkx(graph_seed: int, seed: int | None, replicas: int) -> None:
    g = random_graph(graph_seed)
    # networkx's own power iteration (nx.pagerank itself needs scipy, not installed here).
    expected = _pagerank_python(g, alpha=DAMPING, tol=TOL, max_iter=1000)
    got = pagerank(g, seed, replicas)
    assert got.keys() == expected.keys()
    assert max(abs(got[u] - expected[u]) for u in got) < 1e-8


# -- connected components ------------------------------------------------------------------------


def components(
    edges: list[tuple[int, int]], nodes: list[int], seed: int | Executor | None, r: int
) -> dict[int, int]:
    def body(s: Any, st: Any) -> Any:
        def spread(edge: tuple[int, int]) -> list[tuple[int, int]]:
            label = st.get()
            u, v = edge
            return [(v, label[u]), (u, label[v])]

        return (
            s.flat_map(spread)
            .on(replicas=r)
            .key_by(lambda kv: kv[0])
            .map_values(lambda kv: kv[1])
            .reduce(min)
            .on(replicas=r)
        )

    def fold(acc: dict[int, int], kv: tuple[int, int]) -> dict[int, int]:
        acc[kv[0]] = min(kv[1], acc.get(kv[0], kv[1]))
        return acc

    def combine(old: dict[int, int], parts: list[dict[int, int]]) -> dict[int, int]:
        new = dict(old)
        for part in parts:
            for k, v in part.items():
                new[k] = min(new[k], v)
        return new

    f = sperse.Flow("cc")
    out = (
        f.source(edges)
        .replay(
            {u: u for u in nodes}, body, fold, combine, lambda old, new: old == new, 10_000, zero={}
        )
        .collect()
    )
    run(f, seed)
    (labels,) = out.result(timeout=60)
    return dict(labels)


def union_find(edges: list[tuple[int, int]], nodes: list[int]) -> dict[int, int]:
    parent = {u: u for u in nodes}

    def find(u: int) -> int:
        while parent[u] != u:
            parent[u] = parent[parent[u]]
            u = parent[u]
        return u

    for u, v in edges:
        a, b = find(u), find(v)
        if a != b:
            parent[max(a, b)] = min(a, b)
    return {u: find(u) for u in nodes}


@SETTINGS
@given(
    st.lists(st.tuples(st.integers(0, 25), st.integers(0, 25)), max_size=40),
    st.integers(0, 10**6) | st.none(),
    st.integers(1, 3),
)
def test_connected_components_is_union_find(
    edges: list[tuple[int, int]], seed: int | None, r: int
) -> None:
    nodes = list(range(26))
    assert components(edges, nodes, seed, r) == union_find(edges, nodes)


# -- Collatz, by per-item iteration ----------------------------------------------------------------


def collatz_steps(n: int) -> int:
    steps = 0
    while n != 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return steps


def step(item: tuple[int, int, int]) -> tuple[int, int, int]:
    n, x, k = item
    return n, x // 2 if x % 2 == 0 else 3 * x + 1, k + 1


@SETTINGS
@given(
    st.lists(st.integers(1, 3000), max_size=60),
    st.integers(0, 10**6) | st.none(),
    st.integers(1, 3),
)
def test_collatz_by_per_item_iteration(numbers: list[int], seed: int | None, r: int) -> None:
    f = sperse.Flow("collatz")
    out = (
        f.source([(n, n, 0) for n in numbers])
        .iterate(lambda s: s.map(step).on(replicas=r), until=lambda t: t[1] == 1, max_rounds=1000)
        .map(lambda t: (t[0], t[2]))
        .collect()
    )
    run(f, seed)
    assert sorted(out.result(timeout=60)) == sorted((n, collatz_steps(n)) for n in numbers)


# -- k-means, by bulk iteration ----------------------------------------------------------------------


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


def kmeans_flow(
    points: np.ndarray, k: int, rounds: int, seed: int | Executor | None, r: int
) -> np.ndarray:
    def body(s: Any, st: Any) -> Any:
        def assign(batch: list[np.ndarray]) -> list[tuple[int, np.ndarray]]:
            xs = np.array(batch)
            c = st.get()
            nearest = ((xs[:, None, :] - c[None, :, :]) ** 2).sum(axis=2).argmin(axis=1)
            return list(zip(nearest.tolist(), batch, strict=True))

        return s.batch_map(assign).on(replicas=r)

    def fold(acc: tuple[np.ndarray, np.ndarray], kp: tuple[int, np.ndarray]) -> Any:
        sums, counts = acc
        sums[kp[0]] += kp[1]
        counts[kp[0]] += 1
        return acc

    def combine(old: np.ndarray, parts: list[Any]) -> np.ndarray:
        sums = sum(p[0] for p in parts)
        counts = sum(p[1] for p in parts)
        new = old.copy()
        mask = counts > 0
        new[mask] = sums[mask] / counts[mask][:, None]
        return new

    f = sperse.Flow("kmeans")
    zero = (np.zeros((k, points.shape[1])), np.zeros(k))
    out = (
        f.source(list(points))
        .replay(points[:k].copy(), body, fold, combine, lambda o, n: False, rounds, zero=zero)
        .collect()
    )
    run(f, seed)
    (centroids,) = out.result(timeout=60)
    return np.asarray(centroids)


@SETTINGS
@given(
    st.integers(0, 10**6),
    st.integers(10, 80),
    st.integers(1, 4),
    st.integers(1, 6),
    st.integers(0, 10**6) | st.none(),
    st.integers(1, 3),
)
def test_kmeans_is_lloyd_in_numpy(
    data_seed: int, n: int, k: int, rounds: int, seed: int | None, r: int
) -> None:
    points = np.random.default_rng(data_seed).normal(size=(n, 2))
    expected = kmeans_numpy(points, k, rounds)
    got = kmeans_flow(points, k, rounds, seed, r)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_bulk_rounds_report_their_delta_while_running() -> None:
    f = sperse.Flow("halving")
    out = (
        f.source([1.0])
        .iterate_bulk(
            64.0,
            lambda s, st: s.map(lambda x: x),
            lambda acc, x: acc,
            lambda old, parts: old / 2,
            until=lambda old, new: new < 1,
            zero=0,
            delta=lambda old, new: old - new,
            name="half",
        )
        .collect()
    )
    r = f.run()
    progress = r.result(30)
    assert out.result(0) == [0.5]
    assert [(d.round, d.delta) for d in progress.rounds] == [
        (0, 32.0), (1, 16.0), (2, 8.0), (3, 4.0), (4, 2.0), (5, 1.0), (6, 0.5)
    ]  # fmt: skip


def test_iterate_bulk_feeds_each_round_the_last_rounds_output() -> None:
    f = sperse.Flow("grow")
    out = (
        f.source([1, 2, 3])
        .iterate_bulk(
            0,
            lambda s, st: s.map(lambda x: x * 2).on(replicas=2),
            lambda acc, x: acc + x,
            lambda old, parts: sum(parts),
            until=lambda old, new: new > 40,
            zero=0,
        )
        .collect()
    )
    run(f, 7)
    assert out.result(30) == [48]  # 12, 24, 48
