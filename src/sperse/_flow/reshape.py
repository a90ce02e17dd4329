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

from dataclasses import dataclass, field
from typing import Any

from sperse._flow.ops import Fold, Op, stable_hash
from sperse._flow.plan import PhysicalPlan, StageId
from sperse._flow.replica import Replica
from sperse._flow.service import Enveloped, Idempotency

__all__ = ["Handover", "KeyedState", "hand_over", "keyed_state", "take_state"]

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


@dataclass(slots=True)
class Handover:
    """What old replicas hand the new ones: keyed state by operator name, the requests
    replica's idempotency memory, items taken in per operator."""

    keyed: KeyedState = field(default_factory=dict)
    idem: Idempotency | None = None
    counts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, replicas: list[Replica]) -> Handover:
        out = cls(keyed_state(replicas))
        for replica in replicas:
            for op in replica.ops:
                out.counts[op.name] = out.counts.get(op.name, 0) + op.count
            out.idem = out.idem or replica._idem
        return out

    @classmethod
    def merged(cls, parts: list[Handover]) -> Handover:
        out = cls()
        for part in parts:
            for name, keys in part.keyed.items():
                out.keyed.setdefault(name, {}).update(keys)
            for name, n in part.counts.items():
                out.counts[name] = out.counts.get(name, 0) + n
            out.idem = out.idem or part.idem
        return out

    def share(self, plan: PhysicalPlan, stage: StageId, index: int) -> Handover:
        """The part of this for replica ``index`` of ``stage`` of ``plan``: the keys it
        owns, the counts of its operators on replica 0, the idempotency memory if it is the
        requests replica."""
        count = plan.stages[stage].replicas
        names = {plan.node(n).name for n in plan.stages[stage].nodes}
        keyed = {
            name: {k: v for k, v in keys.items() if stable_hash(k) % count == index}
            for name, keys in self.keyed.items()
            if name in names
        }
        counts = {n: c for n, c in self.counts.items() if n in names} if index == 0 else {}
        first = plan.node(plan.stages[stage].nodes[0]).kind == "source"
        return Handover(keyed, self.idem if first else None, counts)

    def give(self, replica: Replica) -> None:
        """Into the new ``replica``: its keys, the idempotency memory, the counts."""
        take_state(replica, self.keyed)
        if replica._idem is not None and self.idem is not None:
            replica._idem = self.idem
        for op in replica.ops:
            op.count += self.counts.get(op.name, 0)


def hand_over(
    old: dict[tuple[StageId, int], Replica], plan: PhysicalPlan
) -> dict[tuple[StageId, int], Replica]:
    """The replicas of ``plan``, with the state of ``old`` (see the module docstring)."""
    new = {(s.id, r): Replica(plan, s.id, r) for s in plan.stages for r in range(s.replicas)}
    handover = Handover.of(list(old.values()))
    for (stage, index), replica in new.items():
        handover.share(plan, stage, index).give(replica)
    return new
