"""The messages of a running flow: what replicas send each other, what they tell the
controller, and what the controller tells them and the shell.

Between replicas (the only messages a transport carries from server to server):

- :class:`Batch` ``(port, sender, items, round, weight, now)``: items for input ``port`` of
  the receiving replica, from replica ``sender`` of the stage feeding that port. ``round``
  counts trips round a loop (per item: how many times the body ran; bulk: the round);
  ``weight`` is the batch's share of its loop's termination weight (per-item loops only).
- :class:`End` ``(port, sender, round)``: ``sender`` sends nothing more on ``port`` (in
  ``round``, inside a bulk loop).
- :class:`RoundState` ``(loop, round, state)``: a bulk loop's state for ``round``, sent
  before the round's data on every edge inside the loop, so a replica has it before it
  needs it whatever the transport's timing.

Channels are first in, first out from one replica to another; nothing else is assumed about
delivery order. Values are frozen dataclasses; ``items`` is a list the receiver owns.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from sperse._core import ErrorInfo
from sperse._flow.plan import LoopId, NodeId, StageId
from sperse.errors import FlowFailed

__all__ = [
    "Batch",
    "Cancel",
    "Deliver",
    "End",
    "FlowError",
    "LoopDone",
    "LoopWeight",
    "Message",
    "OuterEnded",
    "Partial",
    "ReplicaEvent",
    "Report",
    "RoundState",
    "Send",
    "Settle",
    "SinkDone",
    "StartRound",
    "Stopped",
    "Tick",
    "WriteFile",
]


@dataclass(frozen=True, slots=True)
class Batch:
    port: int
    sender: int
    items: list[Any]
    round: int = 0
    weight: Fraction | None = None
    now: float = 0.0


@dataclass(frozen=True, slots=True)
class End:
    port: int
    sender: int
    round: int = 0


@dataclass(frozen=True, slots=True)
class RoundState:
    loop: LoopId
    round: int
    state: Any


Message = Batch | End | RoundState


@dataclass(frozen=True, slots=True)
class StartRound:
    """Controller to a bulk loop's gate replicas: run ``round`` with ``state``."""

    loop: LoopId
    round: int
    state: Any


@dataclass(frozen=True, slots=True)
class LoopDone:
    """Controller to the replicas a loop's output leaves from: the loop is over (``state``:
    a bulk loop's final state, which replica 0 emits)."""

    loop: LoopId
    state: Any = None


@dataclass(frozen=True, slots=True)
class Tick:
    """The shell's clock, for time windows that must close while no item comes."""

    now: float


ReplicaEvent = Batch | End | RoundState | StartRound | LoopDone | Tick


@dataclass(frozen=True, slots=True)
class FlowError:
    """A failure as data: which operator, on which item (a short repr), the error, and
    ``what`` went wrong when it is not just "raised" (an unhashable key, a loop that did not
    end). ``server``: the server the failure happened on or could not reach, if it matters.
    """

    operator: str
    item: str
    error: ErrorInfo
    what: str = ""
    server: str = ""

    @classmethod
    def unreadable(cls, operator: str, error: ErrorInfo) -> FlowError:
        """A source that could not read its input (a file that is not UTF-8, an iterable
        that raised)."""
        what = f"could not read its input: {error.type_name}: {error.message}"
        return cls(operator, "", error, what)

    def to_exception(self, flow: str) -> FlowFailed:
        what = self.what or f"raised {self.error.type_name}: {self.error.message}"
        if self.what and self.item:
            what = f"failed: {what}"
        on = f" on the item {self.item}" if self.item else ""
        return FlowFailed(
            f"flow {flow!r}: the operator {self.operator!r}{on} {what}"
            if self.operator
            else f"flow {flow!r}: {what}",
            flow=flow,
            operator=self.operator,
            item=self.item,
            type_name=self.error.type_name,
            remote_traceback=self.error.traceback,
            server=self.server,
        )


# -- actions of a replica ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Deliver ``message`` to replica ``replica`` of stage ``stage``."""

    stage: StageId
    replica: int
    message: Message


@dataclass(frozen=True, slots=True)
class WriteFile:
    """Write ``text`` to ``path`` atomically (a temporary file, then a rename)."""

    path: str
    text: str


@dataclass(frozen=True, slots=True)
class OuterEnded:
    """A loop's gate replica has seen the end of the loop's input."""

    loop: LoopId
    replica: int


@dataclass(frozen=True, slots=True)
class LoopWeight:
    """Termination weight of a per-item loop: ``created`` where input entered the loop,
    ``returned`` where a batch ended without sending on; ``exceeded`` items were dropped at
    ``max_rounds`` (``example``: the repr of one)."""

    loop: LoopId
    created: Fraction = Fraction(0)
    returned: Fraction = Fraction(0)
    exceeded: int = 0
    example: str = ""


@dataclass(frozen=True, slots=True)
class Partial:
    """A bulk loop's end replica folded its part of ``round``."""

    loop: LoopId
    round: int
    replica: int
    value: Any


@dataclass(frozen=True, slots=True)
class SinkDone:
    node: NodeId
    replica: int
    value: Any


@dataclass(frozen=True, slots=True)
class Report:
    """Tell the controller ``what`` (from a replica, or the shell's own failure)."""

    what: OuterEnded | LoopWeight | Partial | SinkDone | FlowError


# -- the controller's events and actions ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cancel:
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Deliver:
    """Give ``event`` to replica ``replica`` of stage ``stage``."""

    stage: StageId
    replica: int
    event: StartRound | LoopDone


@dataclass(frozen=True, slots=True)
class Settle:
    """The sink ``node`` ended: its Pending gets ``value``, or fails with ``error``
    (``cancelled``: it was cancelled)."""

    node: NodeId
    value: Any = None
    error: FlowError | None = None
    cancelled: bool = False


@dataclass(frozen=True, slots=True)
class Stopped:
    """The run is over: every sink settled. ``error`` if it failed (or was cancelled)."""

    error: FlowError | None = None
    cancelled: bool = False
