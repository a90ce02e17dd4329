"""Collatz as a flow: how many steps each of 1..N takes to reach 1, by per-item iteration.

    python examples/flows/collatz.py --upto N [--steps-per-trip S]
        [--servers N | --connect URL] [--json]

A step takes ``x`` to ``x / 2`` if it is even, else to ``3x + 1``. Prints ``{n: steps}``
for every ``n`` from 1 to N: the keys are JSON strings of the ints (``"27"``), the values
JSON numbers (``{"1": 0, "2": 1, "3": 7, ...}``).

The flow: items ``(n, x, steps)`` go round a per-item loop (``iterate``) whose body, one
replica per server, takes up to S steps of each item per trip (default 16); an item leaves
the loop as soon as its ``x`` is 1, whatever the others do. S trades trips (each a pass
through the loop's machinery and, between servers, the network) against how long an item
stays in one replica.
"""

from __future__ import annotations

import sys
from functools import partial
from typing import Any

import flowcli

import sperse

MAX_TRIPS = 100_000  # a bound on the loop, far above any n that fits in memory


def advance(steps: int, item: tuple[int, int, int]) -> tuple[int, int, int]:
    """``item`` after up to ``steps`` Collatz steps (fewer if it reaches 1)."""
    n, x, k = item
    for _ in range(steps):
        if x == 1:
            break
        x = x // 2 if x % 2 == 0 else 3 * x + 1
        k += 1
    return n, x, k


def reached_one(item: tuple[int, int, int]) -> bool:
    return item[1] == 1


def collatz(flow: sperse.Flow, upto: int, steps_per_trip: int) -> sperse.Pending[list[Any]]:
    """Add Collatz steps of ``1..upto`` to ``flow``; the Pending of ``(n, steps)`` pairs."""
    step = partial(advance, steps_per_trip)
    return (
        flow.source(((n, n, 0) for n in range(1, upto + 1)), name="numbers")
        .iterate(
            lambda s: s.map(step, name="steps").on(replicas="per_server"),
            until=reached_one,
            max_rounds=MAX_TRIPS,
            name="trips",
        )
        .map(lambda item: (item[0], item[2]), name="result")
        .collect(name="out")
    )


def run(client: sperse.Cluster, upto: int, steps_per_trip: int) -> dict[str, int]:
    flow = sperse.Flow("collatz", cluster=client)
    out = collatz(flow, upto, steps_per_trip)
    progress = flow.run().result(timeout=flowcli.WAIT)
    flowcli.progress(f"{upto} numbers, {progress.items.get('steps', 0)} trips round the loop")
    return {str(n): steps for n, steps in sorted(out.result(0))}


def show(steps: dict[str, int]) -> str:
    if not steps:
        return "no numbers"
    longest = max(steps.items(), key=lambda kv: (kv[1], -int(kv[0])))
    return f"{len(steps)} numbers; the longest: {longest[0]} takes {longest[1]} steps"


def main(argv: list[str] | None = None) -> int:
    p = flowcli.parser(__doc__.splitlines()[0])
    p.add_argument("--upto", required=True, type=flowcli.positive_int, metavar="N")
    p.add_argument("--steps-per-trip", type=flowcli.positive_int, default=16, metavar="S")
    args = flowcli.parse(p, argv)
    return flowcli.main(args, lambda client: run(client, args.upto, args.steps_per_trip), show)


if __name__ == "__main__":
    sys.exit(main())
