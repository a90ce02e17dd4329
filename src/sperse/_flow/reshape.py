"""Reshaping a running service: its replicas rebuilt for a new physical plan, with their
state handed over (pure).

``Service.scale`` and ``Service.move`` change an operator's replica count or placement in
the logical plan; the new physical plan may chain the operators differently (an operator
scaled from 1 to 3 replicas leaves the stage it shared with its neighbours). The executor
quiesces the service first (no batch in flight anywhere, see ``LocalExecutor``), then
:func:`hand_over` builds the new replicas and gives each what the old ones held:

- **keyed state** (``scan``/``fold``/``reduce``, found by operator name): each key goes to
  replica ``stable_hash(key) % replicas`` of the operator's new stage, the partitioning the
  batches to it use, so every key meets its state again;
- the **requests replica's idempotency memory** (the requests source runs as one replica);
- each operator's **count** of items taken in (for its statistics), on its first replica.

Invariants: nothing is in flight when it runs, so no batch addressed to an old replica is
left; every key of every keyed operator is in exactly one new replica.
"""

from __future__ import annotations

from typing import Any

from sperse._flow.ops import Fold, Op, stable_hash
from sperse._flow.plan import PhysicalPlan, StageId
from sperse._flow.replica import Replica
from sperse._flow.service import Enveloped

__all__ = ["KeyedState", "hand_over", "keyed_state", "take_state"]

KeyedState = dict[str, dict[Any, Any]]  # operator name -> key -> state


def _keyed(op: Op) -> Fold | None:
    inner = op.inner if isinstance(op, Enveloped) else op
    return inner if isinstance(inner, Fold) else None


def keyed_state(replicas: list[Replica]) -> KeyedState:
    """The keyed state of every keyed operator over ``replicas``, by operator name."""
    out: KeyedState = {}
    for replica in replicas:
        for op in replica.ops:
            keyed = _keyed(op)
            if keyed is not None:
                out.setdefault(op.name, {}).update(keyed.state)
    return out


def take_state(replica: Replica, state: KeyedState) -> None:
    """Give ``replica`` the keys of ``state`` that its operators own (by the partitioning
    over its stage's replicas)."""
    count = replica.stage.replicas
    for op in replica.ops:
        keyed = _keyed(op)
        if keyed is None:
            continue
        keys = state.get(op.name, {})
        keyed.state = {
            k: v for k, v in keys.items() if count == 1 or stable_hash(k) % count == replica.index
        }


def hand_over(
    old: dict[tuple[StageId, int], Replica], plan: PhysicalPlan
) -> dict[tuple[StageId, int], Replica]:
    """The replicas of ``plan``, with the state of ``old`` (see the module docstring)."""
    new = {(s.id, r): Replica(plan, s.id, r) for s in plan.stages for r in range(s.replicas)}
    state = keyed_state(list(old.values()))
    counts: dict[str, int] = {}
    idem = None
    for replica in old.values():
        for op in replica.ops:
            counts[op.name] = counts.get(op.name, 0) + op.count
        idem = idem or replica._idem
    placed: set[str] = set()
    for replica in new.values():
        take_state(replica, state)
        if replica._idem is not None and idem is not None:
            replica._idem = idem
        for op in replica.ops:
            if op.name not in placed:
                placed.add(op.name)
                op.count = counts.get(op.name, 0)
    return new
