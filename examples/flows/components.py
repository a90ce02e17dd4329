"""Connected components as a flow: each node's component, named by its smallest node.

    python examples/flows/components.py --edges FILE [--servers N | --connect URL] [--json]

FILE has one ``src dst`` pair of int node ids per line; the graph is undirected (a pair
joins both ways) and its nodes are every id that occurs. Prints ``{node: smallest node id
in its component}``: the keys are JSON strings of the ids as read (``"7"`` for ``007``),
the values the ids as JSON numbers.

The flow: label propagation as a bulk iteration (``replay``) over the edges, cut into
blocks of numpy arrays and spread over one replica per server. Nodes are numbered in
increasing id order, so the smallest index is the smallest id. Each node starts with its
own index as its label; each round, each replica offers every node the smallest label of
its neighbours in its blocks (``np.minimum.at``), the fold keeps the smallest offer per
node, and the driver takes the smallest of the old label and the offers, then shortcuts
(``label = label[label]`` until it holds still: a label is always a node of the same
component, with a label no larger), which cuts the rounds from the graph's diameter to
about its logarithm. It stops when a round changes no label.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import flowcli
import numpy as np

import sperse

BLOCK = 65_536  # edges per item


def components(
    flow: sperse.Flow, src: np.ndarray, dst: np.ndarray, n: int
) -> sperse.Pending[list[np.ndarray]]:
    """Add connected components of the undirected edges ``src[i] -- dst[i]`` (node indices
    below ``n``) to ``flow``; the Pending of ``[labels]``: each node's smallest index in
    its component."""
    blocks = [(src[i : i + BLOCK], dst[i : i + BLOCK]) for i in range(0, len(src), BLOCK)]

    def body(edges: sperse.Stream, labels: Any) -> sperse.Stream:
        def offers(batch: list[Any]) -> list[np.ndarray]:
            label = labels.get()
            out = []
            for s, d in batch:
                best = np.full(n, n, dtype=np.int64)  # n: no offer
                np.minimum.at(best, d, label[s])
                np.minimum.at(best, s, label[d])
                out.append(best)
            return out

        return edges.batch_map(offers, name="offers")

    def fold(best: np.ndarray, offer: np.ndarray) -> np.ndarray:
        np.minimum(best, offer, out=best)
        return best

    def combine(old: np.ndarray, parts: list[np.ndarray]) -> np.ndarray:
        new = np.minimum.reduce([old, *parts])
        for _ in range(64):  # shortcut; 64 halvings cover any int64 chain
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        return new

    labels = (
        flow.source(blocks, name="edges")
        .on(replicas="per_server")
        .replay(
            np.arange(n, dtype=np.int64),
            body,
            fold,
            combine,
            until=lambda old, new: bool(np.array_equal(old, new)),
            max_rounds=n + 1,  # each round that changes a label lowers one: it ends by then
            zero=np.full(n, n, dtype=np.int64),
            delta=lambda old, new: float(np.count_nonzero(old != new)),
            name="rounds",
        )
    )
    return labels.collect(name="labels")


def run(
    client: sperse.Cluster, ids: np.ndarray, src: np.ndarray, dst: np.ndarray
) -> dict[str, int]:
    n = len(ids)
    if n == 0:
        return {}
    flow = sperse.Flow("components", cluster=client)
    out = components(flow, src, dst, n)
    progress = flow.run().result(timeout=flowcli.WAIT)
    (labels,) = out.result(0)
    smallest = ids[labels]
    flowcli.progress(
        f"{n} nodes, {len(src)} edges: {len(np.unique(labels))} components "
        f"in {len(progress.rounds)} rounds"
    )
    return dict(zip(map(str, ids.tolist()), smallest.tolist(), strict=True))


def show(labels: dict[str, int]) -> str:
    sizes: dict[int, int] = {}
    for label in labels.values():
        sizes[label] = sizes.get(label, 0) + 1
    top = sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))[:20]
    lines = [f"{len(labels)} nodes in {len(sizes)} components; the largest (smallest node: size):"]
    return "\n".join(lines + [f"{label:>12}: {size}" for label, size in top])


def main(argv: list[str] | None = None) -> int:
    p = flowcli.parser(__doc__.splitlines()[0])
    p.add_argument("--edges", required=True, type=flowcli.existing_file, metavar="FILE")
    args = flowcli.parse(p, argv)
    try:
        ids, src, dst = flowcli.read_edges(Path(args.edges))
    except (flowcli.BadInput, UnicodeDecodeError) as exc:
        p.error(f"--edges: {exc}")
    return flowcli.main(args, lambda client: run(client, ids, src, dst), show)


if __name__ == "__main__":
    sys.exit(main())
