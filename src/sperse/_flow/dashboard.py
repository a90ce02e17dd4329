"""A flow run as the dashboard's Flows page shows it (``flow_snapshot``): names, counts and
the plan's shape, JSON-ready; never an item. ``sperse._flow.api`` registers it with
``sperse._cluster.flowfeed`` for a client's dashboard."""

from __future__ import annotations

import time
from typing import Any

__all__ = ["ERROR_SHOWN", "ROUNDS_SHOWN", "flow_snapshot"]

ROUNDS_SHOWN = 500  # the last rounds of a run's bulk loops a snapshot holds
ERROR_SHOWN = 4000  # characters of a failed run's error a snapshot holds


def flow_snapshot(run: Any, key: str, now: float | None = None) -> dict[str, Any]:
    """What the Flows page shows of ``run`` (a ``sperse._flow.api.Run``), JSON-ready: its name, state and elapsed
    seconds; each operator (from the logical plan, in the order they were added) with its
    kind, loop, replicas, items in and out, backlog, rate and calls in flight, and the servers its replicas
    run on (``{server: replicas}``; empty in this process); the edges (an input of an
    operator, with its partition; a loop's way back from its end to its gate as
    ``feedback``); the last ``ROUNDS_SHOWN`` rounds of its bulk loops with their delta; and
    what failed it, when it failed (``error``: its type and message, which name the operator
    and the item).
    ``now``: ``time.monotonic()`` (given by tests). Never an item, only counts and names."""
    progress = run.progress()
    stats = run.operators()
    logical = run.plan.logical
    loops = {loop.id: loop.name for loop in logical.loops}
    end = run.ended_at if run.ended_at is not None else (time.monotonic() if now is None else now)
    where: dict[int, dict[str, int]] = {}  # operator's node id -> server -> replicas there
    stages = {int(stage.id): stage for stage in run.plan.stages}
    for host in run.hosts():
        stage = stages.get(int(host["stage"]))
        for node_id in stage.nodes if stage is not None else ():
            servers = where.setdefault(int(node_id), {})
            servers[host["server"]] = servers.get(host["server"], 0) + 1
    operators = []
    for node, op in zip(logical.nodes, stats, strict=True):
        operators.append(
            {
                "id": int(node.id),
                "name": op.name,
                "kind": node.kind,
                "loop": loops.get(node.loop) if node.loop is not None else None,
                "replicas": op.replicas,
                "items_in": op.items_in,
                "items_out": op.items_out,
                "backlog": op.backlog,
                "in_flight": op.in_flight,
                "rate": round(op.rate, 2),
                "servers": dict(sorted(where.get(int(node.id), {}).items())),
            }
        )
    edges = [
        {"source": int(src), "target": int(node.id), "partition": part.value, "feedback": False}
        for node in logical.nodes
        for src, part in node.inputs
    ]
    edges += [
        {"source": int(loop.end), "target": int(loop.gate), "partition": "", "feedback": True}
        for loop in logical.loops
    ]
    rounds = progress.rounds
    error = run.error()
    return {
        "id": key,
        "name": run.flow.name,
        "state": progress.state,
        "error": f"{type(error).__name__}: {error}"[:ERROR_SHOWN] if error is not None else "",
        "elapsed": round(max(0.0, end - run.started_at), 2),
        "operators": operators,
        "edges": edges,
        "rounds": [
            {"loop": r.loop, "round": r.round, "delta": r.delta} for r in rounds[-ROUNDS_SHOWN:]
        ],
        "rounds_total": len(rounds),
    }
