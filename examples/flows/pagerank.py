"""PageRank as a flow: the rank of every node of a directed graph, by power iteration.

    python examples/flows/pagerank.py --edges FILE [--damping 0.85] [--tol 1e-10]
        [--servers N | --connect URL] [--json]

FILE has one ``src dst`` pair of int node ids per line: an edge from ``src`` to ``dst``. The
graph is the set of distinct pairs (a pair given twice is one edge, as networkx's
``DiGraph`` makes it); its nodes are every id that occurs. Prints ``{node: rank}``: the keys
are JSON strings of the ids as read (``"7"`` for ``007``), the ranks sum to 1.

The iteration is networkx's: from ``1/N`` everywhere, each round every node gives
``damping * rank / outdegree`` to each of its successors, a node without successors gives
``damping * rank`` to every node evenly, and every node gets ``(1 - damping) / N``; it
stops when the ranks moved less than ``N * tol`` in total (L1). A run that has not
converged after ``--max-rounds`` rounds is an error.

The flow: a bulk iteration (``replay``) over the edges, cut into blocks of numpy arrays and
spread over one replica per server; each round, each replica computes its blocks'
contributions with numpy from the round's ranks (``ranks.get()``), sums them into one
vector (the fold), and the driver combines the replicas' vectors into the new ranks.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import flowcli
import numpy as np

import sperse

BLOCK = 65_536  # edges per item


def pagerank(
    flow: sperse.Flow,
    src: np.ndarray,
    dst: np.ndarray,
    n: int,
    *,
    damping: float = 0.85,
    tol: float = 1e-10,
    max_rounds: int = 1000,
) -> sperse.Pending[list[np.ndarray]]:
    """Add PageRank over the edges ``src[i] -> dst[i]`` (node indices below ``n``, each
    pair once) to ``flow``; the Pending of ``[ranks]``, a vector indexed like the nodes."""
    outdegree = np.bincount(src, minlength=n)
    dangling = outdegree == 0
    share = 1.0 / outdegree[src]
    blocks = [
        (src[i : i + BLOCK], dst[i : i + BLOCK], share[i : i + BLOCK])
        for i in range(0, len(src), BLOCK)
    ]

    def body(edges: sperse.Stream, ranks: Any) -> sperse.Stream:
        def contributions(batch: list[Any]) -> list[np.ndarray]:
            r = ranks.get()
            return [np.bincount(d, weights=r[s] * w, minlength=n) for s, d, w in batch]

        return edges.batch_map(contributions, name="contributions")

    def fold(total: np.ndarray, part: np.ndarray) -> np.ndarray:
        total += part
        return total

    def combine(old: np.ndarray, parts: list[np.ndarray]) -> np.ndarray:
        given = np.sum(parts, axis=0) if parts else np.zeros(n)
        return damping * (given + old[dangling].sum() / n) + (1.0 - damping) / n  # type: ignore[no-any-return]

    def moved(old: np.ndarray, new: np.ndarray) -> float:
        return float(np.abs(new - old).sum())

    ranks = (
        flow.source(blocks, name="edges")
        .on(replicas="per_server")
        .replay(
            np.full(n, 1.0 / n),
            body,
            fold,
            combine,
            until=lambda old, new: moved(old, new) < n * tol,
            max_rounds=max_rounds,
            zero=np.zeros(n),
            delta=moved,
            name="rounds",
        )
    )
    return ranks.collect(name="ranks")


def edges_of(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ids, src, dst)`` of ``path`` with every pair once."""
    ids, src, dst = flowcli.read_edges(path)
    pairs = np.unique(np.stack([src, dst], axis=1), axis=0)
    return ids, pairs[:, 0].copy(), pairs[:, 1].copy()


def run(
    client: sperse.Cluster,
    ids: np.ndarray,
    src: np.ndarray,
    dst: np.ndarray,
    damping: float,
    tol: float,
    max_rounds: int,
) -> dict[str, float]:
    n = len(ids)
    if n == 0:
        return {}
    flow = sperse.Flow("pagerank", cluster=client)
    out = pagerank(flow, src, dst, n, damping=damping, tol=tol, max_rounds=max_rounds)
    progress = flow.run().result(timeout=flowcli.WAIT)
    last = progress.rounds[-1]
    if last.delta is not None and not last.delta < n * tol:
        raise flowcli.NotConverged(
            f"PageRank did not converge in {max_rounds} rounds (the ranks still moved "
            f"{last.delta:.3g} in the last one, above N * tol = {n * tol:.3g}): raise "
            "--max-rounds or --tol"
        )
    flowcli.progress(f"{n} nodes, {len(src)} edges, converged in {len(progress.rounds)} rounds")
    (ranks,) = out.result(0)
    return {str(node): float(rank) for node, rank in zip(ids.tolist(), ranks, strict=True)}


def show(ranks: dict[str, float]) -> str:
    top = sorted(ranks.items(), key=lambda kv: (-kv[1], int(kv[0])))[:20]
    return "\n".join(
        [f"{len(ranks)} nodes; the highest ranks:"] + [f"{r:.8f}  {u}" for u, r in top]
    )


def fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise ValueError(text)
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0.0:
        raise ValueError(text)
    return value


def main(argv: list[str] | None = None) -> int:
    p = flowcli.parser(__doc__.splitlines()[0])
    p.add_argument("--edges", required=True, type=flowcli.existing_file, metavar="FILE")
    p.add_argument("--damping", type=fraction, default=0.85, help="in [0, 1) (default 0.85)")
    p.add_argument("--tol", type=positive_float, default=1e-10, help="(default 1e-10)")
    p.add_argument("--max-rounds", type=flowcli.positive_int, default=1000, metavar="N")
    args = flowcli.parse(p, argv)
    try:
        ids, src, dst = edges_of(args.edges)
    except (flowcli.BadInput, UnicodeDecodeError) as exc:
        p.error(f"--edges: {exc}")

    def compute(client: sperse.Cluster) -> dict[str, float]:
        return run(client, ids, src, dst, args.damping, args.tol, args.max_rounds)

    return flowcli.main(args, compute, show)


if __name__ == "__main__":
    sys.exit(main())
