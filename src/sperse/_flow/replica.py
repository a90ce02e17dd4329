"""One replica of one stage: a pure state machine, ``handle(event) -> list[action]``.

A replica runs its stage's chained operators (:mod:`sperse._flow.ops`) on each batch that
comes, and spreads what the last one emits over the stage's output edges by their
partitioning (:mod:`sperse._flow.spread`): one :class:`~sperse._flow.messages.Send` per
receiving replica with items. When every sender on every input port has sent its
``End``, it flushes the operators in chain order (what one emits at its end goes through
the ones after it), sends ``End`` on every output, and a sink reports its value.

Loops (the plan's ``LoopSpec``):

- **Per item.** The gate (a stage of its own) tests ``until`` on each item that enters
  (round 0) or comes back (round r): it leaves by the exit edges, or is dropped and counted
  once it has been round ``max_rounds`` times, or goes into the body. Body stages are
  stateless and never see an ``End``; the controller decides when the loop is empty by
  **weight throwing** (Huang/Mattern): each batch entering the loop is given weight 1 (the
  gate reports it created); a replica that handles a loop batch splits its weight evenly
  over the batches it sends on, or reports it returned when it sends none. Weight is
  conserved, every batch in flight holds some, so the loop is empty exactly when every gate
  replica has seen the end of its input and returned == created: no second wave, whatever
  the order reports arrive in. Weights are exact fractions.
- **Bulk.** The gate buffers the loop's input. On ``StartRound(r, state)`` from the
  controller it sends ``RoundState`` and then the round's items (the input in round 0 and,
  for ``replay``, in every round; else what the last round's end kept) and ``End(r)``
  through the body. Stateful operators in the body are reset after each round's end. The
  end folds the round's output per replica and reports the partial; on ``LoopDone`` its
  replica 0 emits the final state out of the loop.

No clock (``now`` comes in events), no I/O, no threads. An operator that raises makes one
``Report(FlowError)``, naming the operator and the item; the replica ignores everything
after that.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from sperse._core import ErrorInfo
from sperse._exec.runner import encode_error, short_repr
from sperse._flow.awaits import AsyncMap, Call, Resumed
from sperse._flow.looping import by_round, gate, split
from sperse._flow.messages import (
    Batch,
    End,
    FlowError,
    LoopDone,
    LoopWeight,
    Message,
    OuterEnded,
    Partial,
    ReplicaEvent,
    Report,
    RoundState,
    Send,
    SinkDone,
    StartRound,
    Tick,
    WriteFile,
)
from sperse._flow.ops import BulkEnd, Ctx, ItemError, Op, make_op
from sperse._flow.plan import Node, OutEdge, Partition, PhysicalPlan, Role, StageId
from sperse._flow.service import (
    Enveloped,
    Idempotency,
    Remember,
    Reply,
    Respond,
    Swap,
    envelope_key,
    swap,
)
from sperse._flow.spread import Spread
from sperse._flow.wasm import MapWasm

__all__ = ["Action", "Replica"]

Action = Send | Report | WriteFile | Reply | Call
Event = ReplicaEvent | Remember | Swap | Resumed
_EDGE_ONLY = frozenset({"source", "shuffle", "respond"})
_INSIDE = (Role.NORMAL, Role.BODY)


class Replica:
    """Replica ``index`` of stage ``stage`` of ``plan`` (see the module docstring)."""

    def __init__(self, plan: PhysicalPlan, stage: StageId, index: int) -> None:
        self.stage = plan.stages[stage]
        self.index = index
        nodes = [plan.node(n) for n in self.stage.nodes]
        self.service = plan.logical.is_service()
        self.ops: list[Op] = [_op(n, self.service) for n in nodes]
        self._respond = self.ops[-1] if isinstance(self.ops[-1], Respond) else None
        self._async = [op for op in self.ops if isinstance(op, AsyncMap)]
        for op in self._async:
            op.at = self.ops.index(op)
        self._deferred: int | None = None  # the round whose end waits for async calls
        self._idem = Idempotency() if self.service and nodes[0].kind == "source" else None
        self.head = nodes[0].kind
        # where a bulk loop's gate is in the chain: first, or after the source it chains to
        kinds = [n.kind for n in nodes]
        self.gate = kinds.index("bulk_gate") if "bulk_gate" in kinds else -1
        self.loop = plan.loops.get(self.stage.loop) if self.stage.loop is not None else None
        self.bulk = self.loop is not None and self.loop.kind != "item"
        self.item_body = (
            self.loop is not None and self.loop.kind == "item" and self.head != "item_gate"
        )
        self._senders = {i.port: i.senders for i in self.stage.inputs}
        self._ended: dict[tuple[int, int], int] = {}  # (port, round) -> Ends seen
        key = envelope_key if self.service else _first
        self._spreads = [Spread(edge, index, key) for edge in self.stage.outputs]
        self._at = 0  # the op running, for errors
        self._failed = False
        self._emitted = 0  # items the last operator sent on
        self._state_round = -1
        # bulk gate:
        self._outer: list[Any] = []
        self._fed: dict[int, list[Any]] = {}  # round -> items that came back for it
        self._start: StartRound | None = None
        self._next_round = 0

    # ---- the state machine ---------------------------------------------------------------

    def handle(self, event: Event) -> list[Action]:
        actions = self._handle(event)
        if self._async and not self._failed:
            actions += [call for op in self._async for call in op.take_calls()]
        return actions

    def _handle(self, event: Event) -> list[Action]:
        if self._failed:
            return []
        try:
            match event:
                case Batch():
                    return self._batch(event)
                case End():
                    return self._end(event)
                case RoundState():
                    return self._round_state(event)
                case StartRound():
                    self._start = event
                    return self._try_round()
                case LoopDone():
                    return self._loop_done(event)
                case Tick(now=now):
                    return self._tick(now)
                case Remember():
                    return self._remember(event)
                case Swap():
                    swap(self.ops, event)
                    return []
                case Resumed():
                    return self._resumed(event)
        except ItemError as exc:
            return self._fail(exc)
        raise TypeError(f"a replica cannot handle {event!r}")

    @property
    def failed(self) -> bool:
        return self._failed

    @property
    def calls(self) -> int:
        """Items its async operators hold (running, or waiting for a slot or their turn)."""
        return sum(op.outstanding for op in self._async)

    @property
    def full(self) -> bool:
        """A plain flow's async operator holds its ``max_in_flight`` items: its shell takes
        no more input until a call ends (back-pressure). A service's never is: a request
        that an earlier one waits for may be behind it (:mod:`sperse._flow.awaits`)."""
        return not self.service and any(op.outstanding >= op.limit for op in self._async)

    def takes(self, events: list[Event]) -> bool:
        """Whether its shell may give it ``events`` now: not while it is full, but a call's
        outcome always."""
        return not self.full or (bool(events) and isinstance(events[0], Resumed))

    def counts(self) -> dict[str, int]:
        """Items each operator of this replica has taken in so far."""
        return {op.name: op.count for op in self.ops}

    def tally(self) -> dict[str, tuple[int, int]]:
        """Items in and out so far, per operator: an operator's out is what the next one of
        the chain took in; the last one's is what this replica sent on."""
        ops = self.ops
        out = [nxt.count for nxt in ops[1:]] + [self._emitted]
        return {op.name: (op.count, n) for op, n in zip(ops, out, strict=True)}

    # ---- events --------------------------------------------------------------------------

    def _batch(self, ev: Batch) -> list[Action]:
        ctx = Ctx(self.index, self.stage.replicas, ev.now)
        if self.head == "item_gate":
            return self._gate_items(ev, ctx)
        if self.gate >= 0:
            self.ops[0].count += len(ev.items)
            if self.gate:  # the source (an Identity) before it counts them too
                self.ops[self.gate].count += len(ev.items)
            if ev.port == 0:
                self._outer.extend(ev.items)
            else:
                self._fed.setdefault(ev.round + 1, []).extend(ev.items)
            return []
        if self.loop is not None and self._async:
            return self._await_in_loop(ev)
        items = ev.items if self._idem is None else self._idem.arrive(ev.items)
        out = self._run(0, ev.port, items, ctx)
        if self.service:
            return self._served(out, ctx)
        if self.item_body:
            assert ev.weight is not None
            actions = self._route(out, ev.round, ctx, weight=ev.weight)
            if not actions:
                return [Report(LoopWeight(self._loop_id(), returned=ev.weight))]
            return actions
        return self._route(out, ev.round, ctx)

    def _served(self, out: list[Any], ctx: Ctx) -> list[Action]:
        """A service's requests on: to the next stage, or answered (a respond replica)."""
        if self._respond is None:
            return self._route(out, 0, ctx)
        answers = self._respond.take()
        return [Reply(answers)] if answers else []

    def _remember(self, ev: Remember) -> list[Action]:
        """First answers of idempotency keys: the retries that waited for them go on,
        answered."""
        assert self._idem is not None
        ctx = Ctx(self.index, self.stage.replicas)
        return self._served(self._run(0, 0, self._idem.answered(ev.answers), ctx), ctx)

    def _end(self, ev: End) -> list[Action]:
        key = (ev.port, ev.round)
        self._ended[key] = self._ended.get(key, 0) + 1
        if self.gate >= 0 and ev.port == 1:
            return self._try_round()
        if self.head == "item_gate" or self.gate >= 0:
            if self._ended[key] == self._senders[0]:
                return [Report(OuterEnded(self._loop_id(), self.index))]
            return []
        ports = [i.port for i in self.stage.inputs if not i.feedback]
        if any(self._ended.get((p, ev.round), 0) < self._senders[p] for p in ports):
            return []
        for p in ports:
            del self._ended[(p, ev.round)]
        if self.calls:  # an async operator's calls end first (it heads its stage)
            self._deferred = ev.round
            return []
        return self._finish_round(0, ev.round, Ctx(self.index, self.stage.replicas))

    def _await_in_loop(self, ev: Batch) -> list[Action]:
        """A loop's batch into the async operator heading this body stage: each item tagged
        with its round and its share of the batch's weight (:mod:`sperse._flow.looping`)."""
        op = self.ops[0]
        assert isinstance(op, AsyncMap)
        self._at = 0
        op.count += len(ev.items)
        if not self.item_body:
            op.accept(ev.items, [(ev.round, None)] * len(ev.items))
            return []
        assert ev.weight is not None
        if not ev.items:
            return [Report(LoopWeight(self._loop_id(), returned=ev.weight))]
        op.accept(ev.items, [(ev.round, w) for w in split(ev.weight, len(ev.items))])
        return []

    def _resumed(self, ev: Resumed) -> list[Action]:
        """An async operator's call ended: what it releases goes on through the chain."""
        ctx = Ctx(self.index, self.stage.replicas)
        op = self.ops[ev.op]
        assert isinstance(op, AsyncMap)
        self._at = ev.op
        actions: list[Action] = []
        if self.loop is not None:  # in its round, with its items' weight
            for rnd, items, weight in by_round(op.resumed_with_tags(ev)):
                out = self._run(ev.op + 1, 0, items, ctx)
                sent = self._route(out, rnd, ctx, weight=weight)
                if weight is not None and not sent:
                    sent = [Report(LoopWeight(self._loop_id(), returned=weight))]
                actions += sent
        else:
            out = self._run(ev.op + 1, 0, op.resumed(ev), ctx)
            actions = self._served(out, ctx) if self.service else self._route(out, 0, ctx)
        if self._deferred is not None and not self.calls:
            rnd, self._deferred = self._deferred, None
            actions += self._finish_round(0, rnd, ctx)
        return actions

    def _round_state(self, ev: RoundState) -> list[Action]:
        if ev.round <= self._state_round:
            return []
        self._set_state(ev)
        return self._sends(ev, _INSIDE)

    def _set_state(self, ev: RoundState) -> None:
        self._state_round = ev.round
        assert self.loop is not None
        ref = self.loop.ref
        if ref is not None:
            ref.set(ev.state)

    def _try_round(self) -> list[Action]:
        """A bulk gate starts the round it was told to once what it needs has come."""
        start = self._start
        assert self.loop is not None
        if start is None:
            return []
        r = start.round
        if r == 0 or self.loop.kind == "replay":
            items = list(self._outer)
        else:
            feedback = next(i for i in self.stage.inputs if i.feedback)
            if self._ended.get((1, r - 1), 0) < feedback.senders:
                return []
            del self._ended[(1, r - 1)]
            items = self._fed.pop(r, [])
        self._start = None
        ctx = Ctx(self.index, self.stage.replicas)
        state = RoundState(start.loop, r, start.state)
        self._set_state(state)
        actions: list[Action] = self._sends(state, _INSIDE)
        body = self.gate + 1
        out = self._run(body, 0, items, ctx) if len(self.ops) > body else items
        if not isinstance(self.ops[-1], BulkEnd):
            actions += self._route(out, r, ctx, roles=_INSIDE)
        return actions + self._finish_round(body, r, ctx)

    def _loop_done(self, ev: LoopDone) -> list[Action]:
        ctx = Ctx(self.index, self.stage.replicas)
        actions: list[Action] = []
        if self.bulk and self.index == 0:
            actions += self._route([ev.state], 0, ctx, roles=(Role.EXIT,))
        return actions + self._ends(0, (Role.EXIT,))

    def _tick(self, now: float) -> list[Action]:
        if self.loop is not None:
            return []
        ctx = Ctx(self.index, self.stage.replicas, now)
        carry: list[Any] = []
        for i, op in enumerate(self.ops):
            self._at = i
            if carry:
                op.count += len(carry)
                carry = op.on_batch(0, carry, ctx)
            carry += op.on_tick(ctx)
        return self._route(carry, 0, ctx)

    # ---- running the chain ---------------------------------------------------------------

    def _run(self, start: int, port: int, items: list[Any], ctx: Ctx) -> list[Any]:
        """``items`` through the ops from ``start`` on; what the last one emits."""
        for i in range(start, len(self.ops)):
            if not items:
                return items
            self._at = i
            op = self.ops[i]
            op.count += len(items)
            items = op.on_batch(port if i == start else 0, items, ctx)
        return items

    def _finish_round(self, start: int, rnd: int, ctx: Ctx) -> list[Action]:
        """Every input ended (for round ``rnd``): flush the ops from ``start`` in chain order,
        send what comes out and the ends; a sink reports; a bulk end reports its partial."""
        carry: list[Any] = []
        for i in range(start, len(self.ops)):
            self._at = i
            op = self.ops[i]
            if carry:
                op.count += len(carry)
                carry = op.on_batch(0, carry, ctx)
            carry += op.on_end(ctx)
        last = self.ops[-1]
        actions: list[Action] = []
        if isinstance(last, BulkEnd):
            assert self.loop is not None
            partial, kept = last.take()
            actions += self._route(kept, rnd, ctx, roles=(Role.FEEDBACK,))
            actions += self._ends(rnd, (Role.FEEDBACK,))
            actions.append(Report(Partial(self.loop.id, rnd, self.index, partial)))
        else:
            actions += self._route(carry, rnd, ctx)
            actions += self._ends(rnd, _INSIDE if self.bulk else (Role.NORMAL,))
        sink = last.finish(ctx)
        if sink is not None:
            if sink.path:
                actions.append(WriteFile(sink.path, sink.text))
            actions.append(Report(SinkDone(self.stage.nodes[-1], self.index, sink.value)))
        if self.bulk:
            for op in self.ops[start:]:
                op.reset()
        return actions

    def _gate_items(self, ev: Batch, ctx: Ctx) -> list[Action]:
        """A per-item loop's gate: out, dropped at ``max_rounds``, or round again."""
        assert self.loop is not None
        self.ops[0].count += len(ev.items)
        until, limit = self.loop.until, self.loop.max_rounds
        outer = ev.port == 0
        rnd = 0 if outer else ev.round
        weight = Fraction(1) if outer else ev.weight
        assert weight is not None
        split_ = gate(ev.items, rnd, until, limit)
        actions = self._route(split_.leave, 0, ctx, roles=(Role.EXIT,))
        body = self._route(split_.again, rnd, ctx, roles=(Role.BODY,), weight=weight)
        returned = Fraction(0) if body else weight
        report = LoopWeight(
            self.loop.id,
            weight if outer else Fraction(0),
            returned,
            split_.exceeded,
            split_.example,
        )
        return [*actions, *body, Report(report)]

    # ---- output --------------------------------------------------------------------------

    def _route(
        self,
        items: list[Any],
        rnd: int,
        ctx: Ctx,
        *,
        roles: tuple[Role, ...] = (Role.NORMAL, Role.FEEDBACK),
        weight: Fraction | None = None,
    ) -> list[Action]:
        """``items`` spread over the outputs with one of ``roles``, one Send per receiving
        replica; ``weight`` split evenly over those Sends."""
        if not items:
            return []
        self._emitted += len(items)
        parts: list[tuple[OutEdge, int, list[Any]]] = []
        for n, edge in enumerate(self.stage.outputs):
            if edge.role in roles:
                parts.extend((edge, r, part) for r, part in self._spreads[n](items))
        share = weight / len(parts) if weight is not None and parts else None
        actions: list[Action] = []
        for edge, replica, part in parts:
            # A per-item body's output goes round again: one more trip.
            next_round = rnd + 1 if edge.role is Role.FEEDBACK and not self.bulk else rnd
            batch = Batch(edge.port, self.index, part, next_round, share, ctx.now)
            actions.append(Send(edge.stage, replica, batch))
        return actions

    def _ends(self, rnd: int, roles: tuple[Role, ...]) -> list[Action]:
        """An End to every replica of every output with one of ``roles``."""
        actions: list[Action] = []
        for edge in self.stage.outputs:
            if edge.role not in roles:
                continue
            targets = [self.index] if edge.partition is Partition.FORWARD else range(edge.replicas)
            if edge.replicas == 1:
                targets = [0]
            actions.extend(Send(edge.stage, r, End(edge.port, self.index, rnd)) for r in targets)
        return actions

    def _sends(self, message: Message, roles: tuple[Role, ...]) -> list[Action]:
        """``message`` to every replica of every output with one of ``roles``."""
        return [
            Send(edge.stage, r, message)
            for edge in self.stage.outputs
            if edge.role in roles
            for r in range(edge.replicas)
        ]

    def _fail(self, exc: ItemError) -> list[Action]:
        self._failed = True
        op = self.ops[self._at]
        if exc.cause is None:
            info = ErrorInfo("internal", "FlowFailed", exc.message)
        else:
            info = encode_error(exc.cause)
        return [Report(FlowError(op.name, short_repr(exc.item), info, exc.message))]

    def _loop_id(self) -> Any:
        assert self.loop is not None
        return self.loop.id


def _first(item: Any) -> Any:
    return item[0]


def _op(node: Node, service: bool = False) -> Op:
    """The operator logic of ``node``: :func:`~sperse._flow.ops.make_op`'s pure ones,
    ``map_wasm`` (:mod:`sperse._flow.wasm`, which runs the sandbox), and in a service
    (:mod:`sperse._flow.service`) each run on the values of the requests' envelopes."""
    if node.kind == "respond":
        return Respond(node.name)
    if node.kind == "map_async":
        fn, limit, ordered, timeout = node.args
        return AsyncMap(node.name, fn, limit, ordered, timeout, service)
    if node.kind == "map_wasm":
        op: Op = MapWasm(node.name, *node.args)
    else:
        op = make_op(node.kind, node.name, node.args, node.keyed)
    if service and node.kind not in _EDGE_ONLY:
        return Enveloped(op)
    return op
