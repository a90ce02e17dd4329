"""k-means as a flow: Lloyd's algorithm, by bulk iteration.

    python examples/flows/kmeans.py --points FILE --k K --rounds R
        [--servers N | --connect URL] [--json]

FILE has one point per line, its coordinates as comma-separated floats (every point with
as many; blank lines skipped). The first K points are the initial centroids. Each of the R
rounds assigns every point to its nearest centroid (squared Euclidean distance, the lower
index on a tie) and moves each centroid to the mean of its points; a centroid without
points stays where it is. Prints the final centroids as a list of K lists of floats.

The flow: a bulk iteration (``replay``) over the points, cut into blocks of numpy arrays
and spread over one replica per server; each round, each replica assigns its blocks' points
from the round's centroids (``centroids.get()``) and folds per-centroid sums and counts;
the driver combines them into the new centroids.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import flowcli
import numpy as np

import sperse

BLOCK = 16_384  # points per item


def kmeans(
    flow: sperse.Flow, points: np.ndarray, k: int, rounds: int
) -> sperse.Pending[list[np.ndarray]]:
    """Add ``rounds`` rounds of Lloyd's algorithm from ``points[:k]`` to ``flow``; the
    Pending of ``[centroids]``."""
    dims = points.shape[1]
    blocks = [points[i : i + BLOCK] for i in range(0, len(points), BLOCK)]

    def body(blocks: sperse.Stream, centroids: Any) -> sperse.Stream:
        def assign(batch: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
            c = centroids.get()
            out = []
            for xs in batch:
                nearest = ((xs[:, None, :] - c[None, :, :]) ** 2).sum(axis=2).argmin(axis=1)
                sums = np.zeros((k, dims))
                np.add.at(sums, nearest, xs)
                out.append((sums, np.bincount(nearest, minlength=k)))
            return out

        return blocks.batch_map(assign, name="assign")

    def fold(acc: tuple[np.ndarray, np.ndarray], part: tuple[np.ndarray, np.ndarray]) -> Any:
        acc[0][:] += part[0]
        acc[1][:] += part[1]
        return acc

    def combine(old: np.ndarray, parts: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        sums = np.sum([p[0] for p in parts], axis=0)
        counts = np.sum([p[1] for p in parts], axis=0)
        new = old.copy()
        has = counts > 0
        new[has] = sums[has] / counts[has][:, None]
        return new

    centroids = (
        flow.source(blocks, name="points")
        .on(replicas="per_server")
        .replay(
            points[:k].copy(),
            body,
            fold,
            combine,
            until=lambda old, new: False,  # R rounds, no fewer
            max_rounds=rounds,
            zero=(np.zeros((k, dims)), np.zeros(k, dtype=np.int64)),
            name="rounds",
        )
    )
    return centroids.collect(name="centroids")


def read_points(path: Path) -> np.ndarray:
    rows: list[list[float]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = [float(x) for x in line.split(",")]
        except ValueError:
            raise flowcli.BadInput(
                f"{path}, line {number}: {line!r} is not comma-separated floats"
            ) from None
        if rows and len(row) != len(rows[0]):
            raise flowcli.BadInput(
                f"{path}, line {number}: {len(row)} coordinates where the first point has "
                f"{len(rows[0])}"
            )
        rows.append(row)
    return np.array(rows, dtype=np.float64)


def run(client: sperse.Cluster, points: np.ndarray, k: int, rounds: int) -> list[list[float]]:
    flow = sperse.Flow("kmeans", cluster=client)
    out = kmeans(flow, points, k, rounds)
    flow.run().result(timeout=flowcli.WAIT)
    flowcli.progress(f"{len(points)} points, {k} centroids, {rounds} rounds")
    (centroids,) = out.result(0)
    result: list[list[float]] = np.asarray(centroids).tolist()
    return result


def show(centroids: list[list[float]]) -> str:
    return "\n".join(", ".join(f"{x:.6g}" for x in c) for c in centroids)


def main(argv: list[str] | None = None) -> int:
    p = flowcli.parser(__doc__.splitlines()[0])
    p.add_argument("--points", required=True, type=flowcli.existing_file, metavar="FILE")
    p.add_argument("--k", required=True, type=flowcli.positive_int, metavar="K")
    p.add_argument("--rounds", required=True, type=flowcli.positive_int, metavar="R")
    args = flowcli.parse(p, argv)
    try:
        points = read_points(args.points)
    except (flowcli.BadInput, UnicodeDecodeError) as exc:
        p.error(f"--points: {exc}")
    if len(points) < args.k:
        p.error(f"--k {args.k}: {args.points} has only {len(points)} points (K are needed)")
    return flowcli.main(args, lambda client: run(client, points, args.k, args.rounds), show)


if __name__ == "__main__":
    sys.exit(main())
