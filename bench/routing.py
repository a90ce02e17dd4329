"""The cost of one routing decision, ``Router.pick_server``, with many servers.

100 servers (``--servers``) with mixed tags, resources and load; for each scenario,
``--decisions`` (20,000) decisions after a warm-up, each with its own reserve/release where the
placement needs resources, as a scheduler would do. Prints µs per decision (the median of 5
runs) and whether it meets the target: ≤ 50 µs per decision with 100 servers.

Scenarios: no constraint; a tag expression (``gpu & !slow | big``); a pin; a resource need
(``gpu=1``, reserved while "running"); a tag plus a resource need with input locations on a
few servers (the full rule chain).

Then the same decision as the many-servers client makes it, its ``Dispatcher`` (pure: no
network): a burst of tasks, then the steady state of a long map (one task ends, the next is
sent). This is the per-task scheduling cost a user pays.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from sperse._backends.dispatch import Dispatcher, depth
from sperse._core import CallTask, ServerInfo, TaskSpec
from sperse._core.routing import Busy, Router
from sperse._lang.placement import Placement, parse_placement

TARGET_US = 50.0
TAG_POOL = ("gpu", "db", "big", "slow", "fast", "ssd", "eu", "us")


def make_servers(n: int, rng: random.Random) -> list[ServerInfo]:
    servers = []
    for i in range(n):
        tags = frozenset(rng.sample(TAG_POOL, rng.randint(0, 4)))
        resources: dict[str, float] = {"cpu": float(rng.choice((4, 8, 16)))}
        if "gpu" in tags:
            resources["gpu"] = float(rng.choice((1, 2, 4)))
        workers = rng.choice((2, 4, 8))
        servers.append(
            ServerInfo(f"s{i}", tags, resources, workers=workers, busy=rng.randint(0, workers))
        )
    return servers


def scenario(
    router: Router,
    servers: list[ServerInfo],
    placement: Placement,
    locations: dict[str, int] | None,
    decisions: int,
) -> float:
    """Seconds per decision; a resource need is reserved, and released 8 decisions later."""
    needs = placement.resources
    running: list[str] = []
    pick = router.pick_server
    start = time.perf_counter()
    for _ in range(decisions):
        chosen = pick(placement, servers, locations)
        if needs:
            if isinstance(chosen, Busy):
                router.release(running.pop(0), needs)
                continue
            router.reserve(chosen.name, needs)
            running.append(chosen.name)
            if len(running) > 8:
                router.release(running.pop(0), needs)
    elapsed = time.perf_counter() - start
    for name in running:
        router.release(name, needs)
    return elapsed / decisions


def _work(x: int) -> int:
    return x


def scheduling(servers: list[ServerInfo], tasks: int) -> tuple[float, float]:
    """Seconds per task of the many-servers ``Dispatcher``: a burst (``submit``), and one
    ends / one sent (``finish``)."""
    dispatcher = Dispatcher()
    for info in servers:
        dispatcher.join(info.name, info)
    room = sum(depth(info.workers) for info in servers)
    specs = [TaskSpec(f"t{k}", CallTask(_work, (k,), {})) for k in range(room + tasks)]
    start = time.perf_counter()
    dispatcher.submit(specs)
    burst = (time.perf_counter() - start) / room
    start = time.perf_counter()
    for spec in specs[:tasks]:
        member = dispatcher.owner(spec.task_id)
        if member is not None:
            dispatcher.finish([spec.task_id], member)
    steady = (time.perf_counter() - start) / tasks
    return burst, steady


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=100)
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    rng = random.Random(7)
    servers = make_servers(args.servers, rng)
    holders = rng.sample(servers, min(3, len(servers)))
    locations = {s.name: rng.randint(1, 1 << 20) for s in holders}
    cases: list[tuple[str, Placement, dict[str, int] | None]] = [
        ("no constraint", Placement(), None),
        ("tags gpu & !slow | big", parse_placement("gpu & !slow | big"), None),
        (f"pin @s{args.servers // 2}", parse_placement(f"@s{args.servers // 2}"), None),
        ("resource gpu=1", parse_placement("gpu=1"), None),
        ("tags + gpu=1 + locality", parse_placement("gpu | big, cpu=2"), locations),
    ]
    worst = 0.0
    print(f"Router.pick_server, {args.servers} servers, {args.decisions} decisions per run")
    for name, placement, locs in cases:
        scenario(Router(), servers, placement, locs, args.decisions)  # warm-up
        runs = [
            scenario(Router(), servers, placement, locs, args.decisions) for _ in range(args.runs)
        ]
        us = statistics.median(runs) * 1e6
        worst = max(worst, us)
        print(f"  {name:<28} {us:7.2f} µs/decision")
    verdict = "meets" if worst <= TARGET_US else "MISSES"
    print(f"worst {worst:.2f} µs/decision: {verdict} the target of ≤ {TARGET_US:g} µs")

    print(f"ClusterBackend scheduling (router + its bookkeeping), {args.servers} servers")
    results = [scheduling(servers, 2_000) for _ in range(args.runs)]
    burst = statistics.median(r[0] for r in results) * 1e6
    steady = statistics.median(r[1] for r in results) * 1e6
    print(f"  {'burst (all sent at once)':<28} {burst:7.2f} µs/task")
    print(f"  {'steady (one ends, one sent)':<28} {steady:7.2f} µs/task")
    worst = max(burst, steady)
    verdict = "meets" if worst <= TARGET_US else "MISSES"
    print(f"worst {worst:.2f} µs/task: {verdict} the target of ≤ {TARGET_US:g} µs")


if __name__ == "__main__":
    main()
