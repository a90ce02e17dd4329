"""The values of the job scheduler's conversation (see :mod:`sperse.jobs._schedule`): the
actions it asks its shell to take, and the outcomes of batches the shell tells it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NewType

from sperse.jobs._worker import UnitKind

__all__ = [
    "Action",
    "BatchId",
    "Cancel",
    "Completed",
    "Fail",
    "Finish",
    "ModuleMissing",
    "Outcome",
    "ReadInput",
    "ReadUnit",
    "Refused",
    "ReplaceCluster",
    "Send",
    "ServerGone",
    "Skip",
    "SlotId",
    "UnitId",
    "Wait",
    "WorkerGone",
]

UnitId = NewType("UnitId", int)
SlotId = NewType("SlotId", int)
BatchId = NewType("BatchId", int)


# ---- actions: what the shell is to do -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadInput:
    """Read the next input: tell ``input`` or ``inputs_ended``."""


@dataclass(frozen=True, slots=True)
class ReadUnit:
    """Read the bytes of ``unit``: tell ``unit_read`` or ``unit_unreadable``."""

    unit: UnitId


@dataclass(frozen=True, slots=True)
class Send:
    """Send the batch ``batch`` of ``units`` to ``slot`` (with the module when asked)."""

    batch: BatchId
    slot: SlotId
    units: tuple[UnitId, ...]
    with_module: bool = False


@dataclass(frozen=True, slots=True)
class Cancel:
    """Cancel the batch: ``timeout`` (far past its time limits) or ``lost`` (its slot was)."""

    batch: BatchId
    reason: Literal["timeout", "lost"]


@dataclass(frozen=True, slots=True)
class ReplaceCluster:
    """Every server is gone and work is left: start a fresh cluster."""


@dataclass(frozen=True, slots=True)
class Skip:
    """``unit`` is done already (its output exists)."""

    unit: UnitId


@dataclass(frozen=True, slots=True)
class Fail:
    """``unit`` failed for good, after ``attempts`` attempts (at least one)."""

    unit: UnitId
    kind: UnitKind
    message: str
    attempts: int


@dataclass(frozen=True, slots=True)
class Wait:
    """Wait for a batch to settle, or until ``until`` (None: no limit); then ``step``."""

    until: float | None


@dataclass(frozen=True, slots=True)
class Finish:
    """The job is over; ``error`` says why it stopped early (None: nothing is left to do)."""

    error: str | None


Action = ReadInput | ReadUnit | Send | Cancel | ReplaceCluster | Skip | Fail | Wait | Finish


# ---- outcomes: how a batch settled ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Completed:
    """Every unit ran (each succeeded or failed by itself); their outputs are written.
    ``seconds``: the units' run time in all, ``nbytes``: their inputs and outputs."""

    seconds: float
    nbytes: int


@dataclass(frozen=True, slots=True)
class ModuleMissing:
    """The worker has not got the module. If it was sent already, the slot is refused with
    ``refusal``. ``message``: the error, as the others'."""

    message: str
    refusal: str


@dataclass(frozen=True, slots=True)
class ServerGone:
    message: str


@dataclass(frozen=True, slots=True)
class WorkerGone:
    """The worker died, or the batch was cancelled (which stops its worker)."""

    message: str


@dataclass(frozen=True, slots=True)
class Refused:
    """The slot cannot run the job at all (wasmtime missing there, ...): not the units'
    fault. ``refusal``: why, naming the server."""

    message: str
    refusal: str


Outcome = Completed | ModuleMissing | ServerGone | WorkerGone | Refused
