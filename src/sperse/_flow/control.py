"""The run's controller: a pure state machine, ``handle(report) -> list[action]``.

It is told what replicas report (:class:`~sperse._flow.messages.Report`) and decides what
only a global view can:

- **Per-item loops end** when every gate replica has seen the end of the loop's input and
  the termination weight created equals the weight returned (weight throwing, see
  :mod:`sperse._flow.replica`); then the gates are told ``LoopDone`` and send their exit's
  ends. If items were dropped at ``max_rounds`` the run fails instead, saying how many.
- **Bulk rounds**: once every gate replica has the loop's input, round 0 starts with the
  initial state; once every end replica has reported its partial fold of round r, the new
  state is ``combine(state, partials)`` (partials in replica order, so the result does not
  depend on which replica finished first), the round's ``delta(old, new)`` is recorded for
  progress, and either ``until(old, new)`` holds or ``max_rounds`` rounds ran (``LoopDone``
  with the state) or round r + 1 starts.
- **Sinks settle** once each of their replicas reported: a ``collect`` its value, a
  ``to_dir`` the files written, a ``for_each`` None. The run is over when every sink has.
- **Failures**: the first failure settles every sink not settled yet with it and stops the
  run; a cancel does the same. Nothing stays pending.

No clock, no I/O, no threads. It runs user code: a bulk loop's ``combine``, ``until`` and
``delta`` (errors there fail the run naming the loop).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from sperse._core import ErrorInfo
from sperse._exec.runner import encode_error, short_repr
from sperse._flow.messages import (
    Cancel,
    Deliver,
    FlowError,
    LoopDone,
    LoopWeight,
    OuterEnded,
    Partial,
    Report,
    Settle,
    SinkDone,
    StartRound,
    Stopped,
)
from sperse._flow.plan import LoopId, LoopSpec, NodeId, PhysicalPlan, StageId

__all__ = ["ControlAction", "Controller", "RoundDone"]

ControlAction = Deliver | Settle | Stopped


@dataclass(frozen=True, slots=True)
class RoundDone:
    """Progress of a bulk loop: ``round`` (from 0) ended, ``delta`` as the loop's ``delta``
    function measured it (None without one)."""

    loop: str
    round: int
    delta: float | None


@dataclass(slots=True)
class _Loop:
    spec: LoopSpec
    gate: StageId
    gates: int  # replicas
    end: StageId
    ends: int
    outer: set[int] = field(default_factory=set)
    created: Fraction = Fraction(0)
    returned: Fraction = Fraction(0)
    exceeded: int = 0
    example: str = ""
    round: int = 0
    state: Any = None
    partials: dict[int, Any] = field(default_factory=dict)
    over: bool = False


class Controller:
    """The decisions of one run of ``plan`` (see the module docstring)."""

    def __init__(self, plan: PhysicalPlan) -> None:
        self._plan = plan
        self._sinks: dict[NodeId, dict[int, Any]] = {n: {} for n in plan.sinks()}
        self._replicas = {n: plan.stages[plan.stage_of[n]].replicas for n in self._sinks}
        self._settled: set[NodeId] = set()
        self._loops: dict[LoopId, _Loop] = {}
        for spec in plan.loops.values():
            gate, end = plan.stage_of[spec.gate], plan.stage_of[spec.end]
            self._loops[spec.id] = _Loop(
                spec,
                gate,
                plan.stages[gate].replicas,
                end,
                plan.stages[end].replicas,
                state=spec.init,
            )
        self.rounds: list[RoundDone] = []
        self.stopped: Stopped | None = None

    def handle(self, event: Report | Cancel) -> list[ControlAction]:
        if self.stopped is not None:
            return []
        if isinstance(event, Cancel):
            return self._stop(None, cancelled=True)
        what = event.what
        match what:
            case FlowError():
                return self._stop(what)
            case SinkDone():
                return self._sink_done(what)
            case OuterEnded():
                loop = self._loops[what.loop]
                loop.outer.add(what.replica)
                if len(loop.outer) < loop.gates:
                    return []
                if loop.spec.kind == "item":
                    return self._check_item_loop(loop)
                return self._start_round(loop, 0)
            case LoopWeight():
                loop = self._loops[what.loop]
                loop.created += what.created
                loop.returned += what.returned
                loop.exceeded += what.exceeded
                loop.example = loop.example or what.example
                return self._check_item_loop(loop)
            case Partial():
                return self._partial(what)
        raise TypeError(f"the controller cannot handle {event!r}")

    # ---- loops ---------------------------------------------------------------------------

    def _check_item_loop(self, loop: _Loop) -> list[ControlAction]:
        if loop.over or len(loop.outer) < loop.gates or loop.created != loop.returned:
            return []
        loop.over = True
        if loop.exceeded:
            spec = loop.spec
            items = "item was" if loop.exceeded == 1 else "items were"
            what = (
                f"{loop.exceeded} {items} still going round after max_rounds={spec.max_rounds} "
                "(until() never held for them): raise max_rounds, or check the loop's until"
            )
            info = ErrorInfo("internal", "FlowFailed", what)
            return self._stop(FlowError(spec.name, loop.example, info, what))
        return [Deliver(loop.gate, r, LoopDone(loop.spec.id)) for r in range(loop.gates)]

    def _start_round(self, loop: _Loop, rnd: int) -> list[ControlAction]:
        loop.round = rnd
        loop.partials = {}
        event = StartRound(loop.spec.id, rnd, loop.state)
        return [Deliver(loop.gate, r, event) for r in range(loop.gates)]

    def _partial(self, part: Partial) -> list[ControlAction]:
        loop = self._loops[part.loop]
        loop.partials[part.replica] = part.value
        if len(loop.partials) < loop.ends:
            return []
        spec = loop.spec
        assert spec.combine is not None
        partials = [loop.partials[r] for r in range(loop.ends)]
        old = loop.state
        step = "combine"
        try:
            new = spec.combine(old, partials)
            step = "delta"
            delta = None if spec.delta is None else float(spec.delta(old, new))
            step = "until"
            stop = bool(spec.until(old, new))
        except Exception as exc:
            info = encode_error(exc)
            what = f"its {step} function raised {info.type_name}: {info.message}"
            return self._stop(FlowError(spec.name, short_repr(old), info, what))
        loop.state = new
        self.rounds.append(RoundDone(spec.name, part.round, delta))
        if stop or part.round + 1 >= spec.max_rounds:
            loop.over = True
            return [Deliver(loop.end, r, LoopDone(spec.id, new)) for r in range(loop.ends)]
        return self._start_round(loop, part.round + 1)

    # ---- sinks and the end ---------------------------------------------------------------

    def _sink_done(self, done: SinkDone) -> list[ControlAction]:
        parts = self._sinks[done.node]
        parts[done.replica] = done.value
        if len(parts) < self._replicas[done.node]:
            return []
        node = self._plan.node(done.node)
        if node.kind == "collect":
            value = parts[0]
        elif node.kind == "to_dir":
            value = [path for r in sorted(parts) for path in parts[r]]
        else:
            value = None
        self._settled.add(done.node)
        actions: list[ControlAction] = [Settle(done.node, value)]
        if len(self._settled) == len(self._sinks):
            self.stopped = Stopped()
            actions.append(self.stopped)
        return actions

    def _stop(self, error: FlowError | None, *, cancelled: bool = False) -> list[ControlAction]:
        actions: list[ControlAction] = [
            Settle(n, error=error, cancelled=cancelled)
            for n in self._sinks
            if n not in self._settled
        ]
        self._settled.update(self._sinks)
        self.stopped = Stopped(error, cancelled)
        return [*actions, self.stopped]
