"""A flow's plans: the logical graph the API builds, and the physical plan that runs it.

The **logical plan** is what the user wrote: one :class:`Node` per operator, each input an
edge from another node with a :class:`Partition` (how items travel from the replicas of the
producer to those of the consumer), a placement and a replica count per node, and the loops
(:class:`LoopSpec`) that per-item and bulk iteration made. :meth:`LogicalPlan.check` finds
what cannot run (a loop body that leaks, a stateful operator in a per-item loop) with a
message that names the operator.

The **physical plan** (:func:`physical`) resolves replica counts (``"per_server"`` becomes the
number of servers) and **chains** operators: a node joins its producer's :class:`Stage` when
the edge between them is forward, the producer feeds nothing else, the consumer reads nothing
else, and both have the same placement and replica count. A stage runs as one replica state
machine per replica (:mod:`sperse._flow.replica`): items pass from one chained operator to
the next as a Python list, with no message and no copy, as Flink and Renoir chain operators.
Only stage boundaries send batches.

Invariants
----------
- Node ids are dense and in creation order, so every input of a node has a smaller id than
  the node, except a loop's feedback edge (``LoopSpec``), which is the only cycle.
- A forward edge between replica counts that differ becomes round-robin; any edge between
  two single replicas, and a key-hash edge out of a node whose output is partitioned by key
  over the same count, becomes forward (and may chain).
- Every stage input names how many replicas send on it (``senders``): a replica has seen the
  end of a port when that many ``End`` markers came (per round, inside a bulk loop).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, NewType

from sperse._lang.placement import Placement

__all__ = [
    "LogicalPlan",
    "LoopId",
    "LoopSpec",
    "Node",
    "NodeId",
    "OutEdge",
    "Partition",
    "PhysicalPlan",
    "Role",
    "Stage",
    "StageId",
    "StageInput",
    "StateRef",
    "physical",
]

NodeId = NewType("NodeId", int)
StageId = NewType("StageId", int)
LoopId = NewType("LoopId", int)
Replicas = int | Literal["per_server"]

# Operators that keep state per key (or per round) and emit when their input ends: not
# allowed in a per-item loop, whose body never sees an end.
STATEFUL = frozenset({"fold", "scan", "reduce", "window", "join", "batch_map"})
# Operators whose output is partitioned by key over their replicas.
KEY_PARTITIONED = frozenset({"fold", "scan", "reduce", "join", "key_window"})
SINKS = frozenset({"collect", "to_dir", "for_each", "respond"})
# Operators allowed in a service (``requests()`` ... ``respond()``): one output per input.
SERVICE_KINDS = frozenset(
    {
        "source", "map", "map_async", "key_by", "scan", "map_values", "inspect", "shuffle",
        "map_wasm", "respond",
    }
)  # fmt: skip
SOURCES = frozenset({"source"})


class Partition(enum.Enum):
    """How a batch from a producer replica is spread over the consumer's replicas."""

    FORWARD = "forward"  # replica i to replica i
    HASH = "key-hash"  # (key, value) pairs to replica stable_hash(key) % n
    BROADCAST = "broadcast"  # every item to every replica
    ROUND_ROBIN = "round-robin"  # item by item over the replicas, in turn


class Role(enum.Enum):
    """What an output edge of a stage is for (loops have outputs of more than one kind)."""

    NORMAL = "normal"
    BODY = "body"  # from a per-item loop's gate into its body
    EXIT = "exit"  # out of a loop: a per-item gate's finished items, a bulk loop's state
    FEEDBACK = "feedback"  # back to the loop's gate


@dataclass(frozen=True, slots=True)
class Node:
    """One operator. ``kind`` names it (``"map"``, ``"fold"``, ...); ``args`` are its
    arguments as the operator logic (:mod:`sperse._flow.ops`) takes them; ``inputs`` one
    (producer, partition) per input port."""

    id: NodeId
    kind: str
    name: str
    args: tuple[Any, ...] = ()
    inputs: tuple[tuple[NodeId, Partition], ...] = ()
    placement: Placement = field(default_factory=Placement)
    replicas: Replicas = 1
    keyed: bool = False  # its output is a KeyedStream: (key, value) pairs
    loop: LoopId | None = None  # the loop whose body (or gate, or end) it is part of


@dataclass(frozen=True, slots=True)
class LoopSpec:
    """A loop. ``kind``: ``"item"`` (per-item ``iterate``), ``"bulk"`` (``iterate_bulk``) or
    ``"replay"``. ``gate`` is the node where items enter (and, per item, leave); ``end`` the
    node whose output goes back to the gate (per item: the body's last node; bulk: the node
    that folds the round's output per replica)."""

    id: LoopId
    kind: Literal["item", "bulk", "replay"]
    name: str
    gate: NodeId
    end: NodeId
    max_rounds: int
    until: Callable[..., bool]
    # bulk and replay only:
    init: Any = None
    combine: Callable[[Any, list[Any]], Any] | None = None
    delta: Callable[[Any, Any], float] | None = None
    ref: StateRef | None = None  # what the body reads the round's state from


class StateRef:
    """A bulk loop's state as its body reads it while it runs: ``body(stream, state)`` gets
    one, and its functions call ``state.get()``. Each replica sets it when a round starts
    (``RoundState``); between rounds it holds the last round's state."""

    __slots__ = ("_value",)

    def __init__(self, value: Any) -> None:
        self._value = value

    def get(self) -> Any:
        return self._value

    def set(self, value: Any) -> None:
        self._value = value

    @property
    def value(self) -> Any:
        return self._value

    def __repr__(self) -> str:
        return f"StateRef({self._value!r})"


class LogicalPlan:
    """The operators as the API adds them. Not thread-safe (one builder at a time)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.nodes: list[Node] = []
        self.loops: list[LoopSpec] = []
        self._names: set[str] = set()

    def add(
        self,
        kind: str,
        name: str | None,
        args: tuple[Any, ...] = (),
        inputs: Iterable[tuple[NodeId, Partition]] = (),
        *,
        keyed: bool = False,
        loop: LoopId | None = None,
        placement: Placement | None = None,
        replicas: Replicas | None = None,
    ) -> NodeId:
        """A new node; placement and replicas default to those of its first input."""
        node_id = NodeId(len(self.nodes))
        ins = tuple(inputs)
        for src, _ in ins:
            if not 0 <= src < node_id:
                raise ValueError(f"{kind}: no operator {src} in flow {self.name!r}")
        first = self.nodes[ins[0][0]] if ins else None
        if placement is None:
            placement = first.placement if first is not None else Placement()
        if replicas is None:
            replicas = first.replicas if first is not None else 1
        label = name if name is not None else f"{kind}#{node_id}"
        if label in self._names:
            raise ValueError(
                f"flow {self.name!r} has an operator called {label!r} already: give each "
                "operator its own name="
            )
        self._names.add(label)
        self.nodes.append(Node(node_id, kind, label, args, ins, placement, replicas, keyed, loop))
        return node_id

    def node(self, node_id: NodeId) -> Node:
        return self.nodes[node_id]

    def place(
        self, node_id: NodeId, placement: Placement | None, replicas: Replicas | None
    ) -> None:
        """Change where a node runs (``Stream.on``)."""
        node = self.nodes[node_id]
        if replicas is not None:
            _check_replicas(replicas, node.name)
            if node.kind == "collect" and replicas != 1:
                raise ValueError(f"{node.name}: collect() gathers to one replica")
        self.nodes[node_id] = Node(
            node.id,
            node.kind,
            node.name,
            node.args,
            node.inputs,
            node.placement if placement is None else placement,
            node.replicas if replicas is None else replicas,
            node.keyed,
            node.loop,
        )

    def set_args(self, node_id: NodeId, args: tuple[Any, ...]) -> None:
        node = self.nodes[node_id]
        self.nodes[node_id] = Node(
            node.id, node.kind, node.name, args, node.inputs, node.placement,
            node.replicas, node.keyed, node.loop,
        )  # fmt: skip

    def add_loop(self, spec: LoopSpec) -> None:
        self.loops.append(spec)

    def consumers(self) -> dict[NodeId, list[tuple[NodeId, int]]]:
        """For each node, the (consumer, port) pairs that read it (feedback edges aside)."""
        out: dict[NodeId, list[tuple[NodeId, int]]] = {n.id: [] for n in self.nodes}
        for node in self.nodes:
            for port, (src, _) in enumerate(node.inputs):
                out[src].append((node.id, port))
        return out

    def is_service(self) -> bool:
        """Whether this is a service's flow: requests in, answers out."""
        return any(n.kind == "respond" or _is_requests(n) for n in self.nodes)

    def _check_service(self) -> None:
        requests = [n for n in self.nodes if _is_requests(n)]
        responds = [n for n in self.nodes if n.kind == "respond"]
        if len(requests) != 1 or len(responds) != 1:
            raise ValueError(
                f"flow {self.name!r}: a service has one requests() source and one respond() "
                f"sink (it has {len(requests)} and {len(responds)})"
            )
        if requests[0].replicas != 1:
            raise ValueError(
                f"{requests[0].name}: a service's requests source runs as one replica (the "
                "operators after it may have many: .on(replicas=N) on them)"
            )
        for node in self.nodes:
            if node.kind not in SERVICE_KINDS or (
                node.kind == "source" and node is not requests[0]
            ):
                raise ValueError(
                    f"{node.name}: a service's operators give one output per request "
                    f"(map, key_by, scan, map_values, inspect, shuffle, map_wasm); "
                    f"{node.kind} is not one of them yet"
                )

    def check(self) -> None:
        """Raise ``ValueError`` for a plan that cannot run, naming the operator."""
        if not any(n.kind in SINKS for n in self.nodes):
            raise ValueError(
                f"flow {self.name!r} has no sink: end a stream in collect(), to_dir(path) "
                "or for_each(fn), or nothing would run"
            )
        consumers = self.consumers()
        if self.is_service():
            self._check_service()
        for loop in self.loops:
            members = {n.id for n in self.nodes if n.loop == loop.id}
            for node_id in sorted(members):
                node = self.nodes[node_id]
                if loop.kind == "item" and node.kind in STATEFUL:
                    raise ValueError(
                        f"{node.name}: a per-item loop ({loop.name}) runs its body on items "
                        f"as they come round, so it cannot hold {node.kind}() state that "
                        "waits for the end of its input; use iterate_bulk or replay"
                    )
                if node.kind in SINKS or node.kind in SOURCES:
                    raise ValueError(
                        f"{node.name}: a loop body ({loop.name}) cannot hold a {node.kind}"
                    )
                for src, _ in node.inputs:
                    if src not in members and node_id != loop.gate:
                        raise ValueError(
                            f"{node.name}: the body of {loop.name} reads a stream from outside "
                            "the loop; pass it in through the loop's input (union before it)"
                        )
                if node_id in (loop.gate, loop.end):
                    continue
                for dst, _ in consumers[node_id]:
                    if dst not in members:
                        raise ValueError(
                            f"{node.name}: a stream made inside the body of {loop.name} is "
                            f"used outside it (by {self.nodes[dst].name}); use the loop's output"
                        )
            if loop.end == loop.gate:
                raise ValueError(f"{loop.name}: the loop's body adds no operator")
            if loop.kind == "item" and consumers[loop.end]:
                end = self.nodes[loop.end]
                raise ValueError(
                    f"{end.name}: the end of the body of {loop.name} goes back round the "
                    "loop; it cannot be read by another operator too"
                )
        for node in self.nodes:
            if node.kind in SINKS or node.loop is not None:
                continue
            if not consumers[node.id]:
                raise ValueError(
                    f"{node.name}: its output goes nowhere; end it in a sink (collect(), "
                    "to_dir(path), for_each(fn)) or remove it"
                )


def _is_requests(node: Node) -> bool:
    return node.kind == "source" and len(node.args) > 2 and node.args[2] == "requests"


def _check_replicas(replicas: object, name: str) -> None:
    if replicas == "per_server":
        return
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 1:
        raise ValueError(
            f"{name}: replicas must be a positive int or 'per_server', not {replicas!r}"
        )


# -- the physical plan ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StageInput:
    """Input ``port`` of a stage's first node: ``senders`` replicas send on it, from stage
    ``source`` (None: the executor feeds it, a source)."""

    port: int
    source: StageId | None
    senders: int
    feedback: bool = False


@dataclass(frozen=True, slots=True)
class OutEdge:
    """Where a stage's output goes: port ``port`` of stage ``stage`` (``replicas`` of them),
    spread by ``partition``."""

    stage: StageId
    port: int
    partition: Partition
    replicas: int
    role: Role = Role.NORMAL


@dataclass(frozen=True, slots=True)
class Stage:
    """Chained nodes that run together, in order, on each of ``replicas`` replicas."""

    id: StageId
    nodes: tuple[NodeId, ...]
    replicas: int
    placement: Placement
    inputs: tuple[StageInput, ...]
    outputs: tuple[OutEdge, ...]
    loop: LoopId | None

    @property
    def name(self) -> str:
        return f"stage {self.id}"


@dataclass(frozen=True, slots=True)
class PhysicalPlan:
    logical: LogicalPlan
    stages: tuple[Stage, ...]
    stage_of: dict[NodeId, StageId]
    loops: dict[LoopId, LoopSpec]

    def node(self, node_id: NodeId) -> Node:
        return self.logical.nodes[node_id]

    def sinks(self) -> list[NodeId]:
        return [n.id for n in self.logical.nodes if n.kind in SINKS]

    def describe(self) -> str:
        """One line per stage: its operators, replicas, and where its output goes."""
        lines = []
        for stage in self.stages:
            ops = " -> ".join(self.node(n).name for n in stage.nodes)
            outs = ", ".join(
                f"{o.partition.value} to stage {o.stage}"
                + (f" ({o.role.value})" if o.role is not Role.NORMAL else "")
                for o in stage.outputs
            )
            where = f" on {stage.placement}" if str(stage.placement) else ""
            lines.append(
                f"stage {stage.id} x{stage.replicas}{where}: {ops}"
                + (f" => {outs}" if outs else "")
            )
        return "\n".join(lines)


def physical(plan: LogicalPlan, servers: int | Callable[[Placement], int] = 1) -> PhysicalPlan:
    """Resolve replica counts (``"per_server"``: ``servers``, or the number
    ``servers(placement)`` says for the node's placement) and chain the nodes."""
    plan.check()
    nodes = plan.nodes
    per_server = servers if callable(servers) else (lambda _: servers)
    count = {
        n.id: per_server(n.placement) if n.replicas == "per_server" else int(n.replicas)
        for n in nodes
    }
    loops = {loop.id: loop for loop in plan.loops}
    consumers = plan.consumers()
    feedback_of = {loop.gate: loop for loop in plan.loops if loop.kind != "replay"}

    def resolved(node: Node, port: int) -> Partition:
        src, partition = node.inputs[port]
        if count[src] == 1 and count[node.id] == 1:
            return Partition.FORWARD
        if (
            partition is Partition.HASH
            and nodes[src].kind in KEY_PARTITIONED
            and count[src] == count[node.id]
        ):
            return Partition.FORWARD
        if partition is Partition.FORWARD and count[src] != count[node.id]:
            return Partition.ROUND_ROBIN
        return partition

    def chains(node: Node) -> bool:
        """Whether ``node`` runs in the stage of its single producer."""
        if len(node.inputs) != 1 or node.id in feedback_of or node.kind in SOURCES:
            return False
        if node.kind == "map_async":  # it heads its stage: nothing before it flushes at the end
            return False
        src = nodes[node.inputs[0][0]]
        return (
            resolved(node, 0) is Partition.FORWARD
            and len(consumers[src.id]) == 1
            and src.placement == node.placement
            and count[src.id] == count[node.id]
            and (src.loop == node.loop or replay_on_source(src, node))
            and src.kind != "item_gate"
        )

    def replay_on_source(src: Node, node: Node) -> bool:
        """A ``replay`` gate (no feedback edge) runs in the stage of the source it reads:
        the gate keeps the input, so it needs no stage of its own, and a run one host fewer
        per replica (a process to start) and one hop fewer for the input."""
        return node.kind == "bulk_gate" and src.kind in SOURCES and src.loop is None

    groups: list[list[NodeId]] = []
    group_of: dict[NodeId, int] = {}
    for node in nodes:
        if chains(node):
            index = group_of[node.inputs[0][0]]
            groups[index].append(node.id)
        else:
            index = len(groups)
            groups.append([node.id])
        group_of[node.id] = index
    stage_of = {n: StageId(i) for n, i in group_of.items()}

    stages = []
    for index, members in enumerate(groups):
        head, last = nodes[members[0]], nodes[members[-1]]
        inputs = []
        for port, (src, _) in enumerate(head.inputs):
            partition = resolved(head, port)
            senders = 1 if partition is Partition.FORWARD else count[src]
            inputs.append(StageInput(port, stage_of[src], senders))
        if head.kind in SOURCES:
            inputs.append(StageInput(0, None, 1))
        loop = feedback_of.get(head.id)
        if loop is not None:
            end = loop.end
            partition = Partition.FORWARD if count[end] == count[head.id] else Partition.ROUND_ROBIN
            senders = 1 if partition is Partition.FORWARD else count[end]
            inputs.append(StageInput(1, stage_of[end], senders, feedback=True))
        outputs = []
        for dst, port in consumers[last.id]:
            role = Role.NORMAL
            if last.kind == "item_gate":
                role = Role.BODY if nodes[dst].loop == last.loop else Role.EXIT
            elif last.loop is not None and last.id == loops[last.loop].end:
                role = Role.EXIT
            outputs.append(
                OutEdge(stage_of[dst], port, resolved(nodes[dst], port), count[dst], role)
            )
        for loop_spec in plan.loops:
            if loop_spec.end == last.id and loop_spec.kind != "replay":
                gate = nodes[loop_spec.gate]
                partition = (
                    Partition.FORWARD if count[gate.id] == count[last.id] else Partition.ROUND_ROBIN
                )
                outputs.append(
                    OutEdge(stage_of[gate.id], 1, partition, count[gate.id], Role.FEEDBACK)
                )
        stages.append(
            Stage(
                StageId(index),
                tuple(members),
                count[head.id],
                head.placement,
                tuple(inputs),
                tuple(outputs),
                head.loop if head.loop is not None else last.loop,
            )
        )
    return PhysicalPlan(plan, tuple(stages), stage_of, loops)
