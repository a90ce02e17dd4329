"""Flows that call flows: a service that calls another, and a pair that call each other.

    python examples/flows/calls.py [--requests R] [--in-flight N] [--depth D]
        [--servers N | --connect URL] [--json]

Four services, each a flow whose operator is an ``async def`` (an async operator: its
calls run concurrently on the event loop of its replica's host, at most N at once per
replica and call depth, and a call that waits does not hold its stream):

- ``square`` answers ``x * x``; ``norm`` answers the sum of the squares of a list, asking
  ``square`` for each element at once (``asyncio.gather``): a service that calls another.
- ``even`` and ``odd`` answer whether ``n`` is even by asking each other about ``n - 1``
  down to 0: a pair that call each other, ``n`` calls deep.

R requests are sent to ``norm`` and R to ``even``/``odd`` (in turn), all at once, and every
answer is checked against a plain computation. Prints a summary, or with ``--json``:
``{"requests": ..., "chain": {"answered": ..., "wrong": [...]}, "cycle": {"answered": ...,
"wrong": [...]}, "seconds": ...}``; the run fails (exit code 1) if an answer is wrong.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import flowcli

import sperse


def square(x: int) -> int:
    return x * x


async def norm(xs: list[int]) -> int:
    squares = sperse.service("square")
    return sum(await asyncio.gather(*(squares.request(x) for x in xs)))


async def even(n: int) -> bool:
    return True if n == 0 else await sperse.service("odd").request(n - 1)


async def odd(n: int) -> bool:
    return False if n == 0 else await sperse.service("even").request(n - 1)


def serve(client: sperse.Cluster, name: str, fn: Any, in_flight: int) -> sperse.Service:
    flow = sperse.Flow(name, cluster=client)
    step = flow.requests()
    if name == "square":
        step = step.map(fn, name=name)
    else:
        step = step.map(fn, name=name, max_in_flight=in_flight).on(replicas="per_server")
    step.respond()
    return flow.serve(name)


def run(client: sperse.Cluster, requests: int, in_flight: int, depth: int) -> dict[str, Any]:
    served = [
        serve(client, name, fn, in_flight)
        for name, fn in (("square", square), ("norm", norm), ("even", even), ("odd", odd))
    ]
    try:
        flowcli.progress(f"4 services up; {requests} requests to each of a chain and a cycle")
        started = time.perf_counter()
        lists = [[i % 7, i % 5, i % 3] for i in range(requests)]
        chain = [(xs, served[1].request(xs, timeout=600)) for xs in lists]
        cycle = [
            (i % depth, served[2 + i % 2].request(i % depth, timeout=600)) for i in range(requests)
        ]
        wrong_chain = [
            f"norm({xs}) was answered {got}"
            for xs, pending in chain
            if (got := pending.result(flowcli.WAIT)) != sum(x * x for x in xs)
        ]
        wrong_cycle = []
        for i, (n, pending) in enumerate(cycle):
            asked, expected = ("even", n % 2 == 0) if i % 2 == 0 else ("odd", n % 2 == 1)
            if (got := pending.result(flowcli.WAIT)) != expected:
                wrong_cycle.append(f"{asked}({n}) was answered {got}")
        seconds = time.perf_counter() - started
    finally:
        for svc in reversed(served):
            svc.stop()
    result = {
        "requests": requests,
        "chain": {"answered": len(chain), "wrong": wrong_chain},
        "cycle": {"answered": len(cycle), "wrong": wrong_cycle},
        "seconds": round(seconds, 3),
    }
    if wrong_chain or wrong_cycle:
        raise flowcli.ExampleError(f"wrong answers: {result}")
    return result


def show(result: dict[str, Any]) -> str:
    return (
        f"{result['chain']['answered']} requests to a service that calls another and "
        f"{result['cycle']['answered']} to a pair that call each other, answered in "
        f"{result['seconds']:.2f} s, each checked"
    )


def main(argv: list[str] | None = None) -> int:
    p = flowcli.parser(__doc__.splitlines()[0])
    p.add_argument("--requests", type=flowcli.positive_int, default=1000, metavar="R")
    p.add_argument("--in-flight", type=flowcli.positive_int, default=8, metavar="N")
    p.add_argument("--depth", type=flowcli.positive_int, default=10, metavar="D")
    args = flowcli.parse(p, argv)
    if args.depth > 30:
        p.error(f"--depth {args.depth}: at most 30 (requests nest at most 32 calls deep)")
    return flowcli.main(
        args, lambda client: run(client, args.requests, args.in_flight, args.depth), show
    )


if __name__ == "__main__":
    sys.exit(main())
