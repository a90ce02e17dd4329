"""The job scheduler: which units to send where, and what to do when a batch comes back.

Pure: no clock (``now`` is given), no I/O (the shell reads inputs, sends batches and writes
outputs when the actions say so), no threads. The ``Job`` is its shell; the tests drive it
with tables of events (``tests/jobs/test_schedule.py``).

**The conversation.** The shell calls ``step(now)`` and does what the action says, until it
gets ``Wait`` (wait for a batch to settle, or until the time given; then ``step`` again) or
``Finish``. Between two ``Wait``s the shell tells only what an action asked for:

- ``ReadInput``: read the next input; tell ``input(unit, done=...)`` (``done``: its output
  is there already), ``input(unit, refused=MESSAGE)`` (it cannot be a unit), or
  ``inputs_ended()``. Inputs are asked for only when a credit is free or to learn whether
  any work is left, so the units held are those of the batches in flight, plus one.
- ``ReadUnit``: read that unit's bytes for the batch being made; tell ``unit_read(unit,
  nbytes)`` or ``unit_unreadable(unit, message)``.
- ``Send``: send that batch (again, with the module, when ``with_module``).
- ``Cancel``: cancel that batch (it is far past its time limits, or its server was lost).
- ``ReplaceCluster``: every server is gone and work is left: start a fresh cluster; tell
  ``add_slots(capacities)`` or ``replacement_failed(message)``.
- ``Skip``, ``Fail``: the unit ended so (its output exists; it failed without running or
  more often than the retries allow).

When a batch settles (after a ``Wait``), the shell tells ``started(batch, at)`` as soon as it
knows its batch started, and ``settled(batch, outcome, now)`` (after writing the outputs of a
``Completed`` batch).

**Invariants.** Every unit told by ``input`` ends exactly once: ``Skip``, ``Fail``, or a
``Completed`` batch that held it. A slot never has more than its capacity of batches in
flight. A unit's own failure is final; a unit whose worker died alone counts one attempt,
and fails after ``retries`` retries. A batch whose worker died is sent again unit by unit
(no unit is blamed for its neighbours). A retried unit goes to another slot first.

**A lost server blames only a unit that was alone on it.** A unit (say, Python code that
kills its server) must not fail its neighbours. When a server is lost, a batch of one unit
that ran alone there (nothing else was in flight on that slot while it was) counts one
attempt for its unit. Every other unit in flight there counts nothing: it becomes a
*suspect*, and a suspect is sent alone, to a slot with nothing in flight, which takes nothing
else until it settles (while suspects wait, slots take no new batches until they are
empty). So a unit that kills its server is tried alone until its retries are spent, and a
neighbour lost with it once completes (or is blamed only for a loss of its own, alone). A
loss blamed on a unit does not use up the fresh clusters the job may start (it is the
unit's attempt that counts).

**Batches.** The first batch holds one unit; then each holds as many units as take about
``TARGET_BATCH_SECONDS`` on a worker (from what completed batches took), at most
``MAX_BATCH_UNITS`` and ``MAX_BATCH_BYTES``, and, when the number of units is known, no more
than an even share of what is left.

**Time limits.** With a unit time limit, a started batch ``BACKSTOP_GRACE`` seconds past the
limits of its units (``DEPTH`` times, for the batch that may run before it on its worker) is
cancelled; a batch of a lost slot is cancelled ``LOST_GRACE`` seconds after the loss (its
outcome should have come with the others').
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Final, Literal

from sperse.jobs._schedule_events import (
    Action,
    BatchId,
    Cancel,
    Completed,
    Fail,
    Finish,
    ModuleMissing,
    Outcome,
    ReadInput,
    ReadUnit,
    Refused,
    ReplaceCluster,
    Send,
    ServerGone,
    Skip,
    SlotId,
    UnitId,
    Wait,
    WorkerGone,
)
from sperse.jobs._worker import UnitKind

__all__ = [
    "BACKSTOP_GRACE",
    "DEPTH",
    "LOST_GRACE",
    "MAX_BATCH_BYTES",
    "MAX_BATCH_UNITS",
    "TARGET_BATCH_SECONDS",
    "Action",
    "BatchId",
    "Cancel",
    "Completed",
    "Fail",
    "Finish",
    "JobScheduler",
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

DEPTH: Final = 2  # batches in flight per worker: one running, one waiting beside it
TARGET_BATCH_SECONDS: Final = 0.05
MAX_BATCH_UNITS: Final = 64
MAX_BATCH_BYTES: Final = 1 << 20
BACKSTOP_GRACE: Final = 2.0  # seconds past a started batch's time limits: it is cancelled
LOST_GRACE: Final = 5.0  # seconds a batch may still settle after its server was found lost
POLL_UNSTARTED: Final = 0.5  # look again this soon for the start of a batch with limits

# ---- state ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Slot:
    capacity: int
    in_flight: int = 0
    live: bool = True
    lost_at: float | None = None  # when a batch of it came back lost
    exclusive: bool = False  # a suspect runs on it alone: nothing else is sent


@dataclass(slots=True)
class _Unit:
    attempts: int = 0  # attempts that counted against the retries
    alone: bool = False  # send it in a batch of its own (its batch's worker died)
    avoid: SlotId | None = None  # the slot it failed on, to try elsewhere first
    suspect: bool = False  # in flight on a server that was lost: run it alone on a server


@dataclass(slots=True)
class _Batch:
    slot: SlotId
    units: tuple[UnitId, ...]
    started: float | None = None
    with_module: bool = False
    expired: Literal["", "timeout", "lost"] = ""
    alone: bool = False  # one unit, nothing else in flight on its slot while it was
    exclusive: bool = False  # a suspect's: its slot takes nothing else meanwhile


@dataclass(slots=True)
class _Assembly:
    """A batch being made for ``slot``."""

    slot: SlotId
    size: int
    others: bool  # other slots are live: a retried unit goes there first
    empty: bool = False  # its slot has nothing in flight: it may take a suspect
    suspect: bool = False  # it holds a suspect (alone)
    units: list[UnitId] = field(default_factory=list)
    nbytes: int = 0
    reading: UnitId | None = None
    closed: bool = False


@dataclass(slots=True)
class _Round:
    """One round of filling: the live slots, in turn, until none takes a batch."""

    slots: list[SlotId]
    stalled: int = 0
    assembly: _Assembly | None = None


class JobScheduler:
    """The decisions of one job (see the module doc for the conversation).

    ``retries``: attempts a unit may have again; ``timeout``: a unit's time limit (None:
    none); ``replacements``: fresh clusters the shell may start; ``total``: the number of
    inputs, when known in advance.
    """

    def __init__(
        self,
        capacities: list[int],
        *,
        retries: int,
        timeout: float | None,
        replacements: int = 0,
        total: int | None = None,
    ) -> None:
        self._retries = retries
        self._timeout = timeout
        self._replacements = replacements
        self._may_replace = replacements > 0
        self._slots: dict[SlotId, _Slot] = {}
        self._units: dict[UnitId, _Unit] = {}  # not ended yet
        self._queue: deque[UnitId] = deque()  # to send: retried, or read ahead
        self._batches: dict[BatchId, _Batch] = {}
        self._exhausted = False
        self._seen = 0
        self._total = total
        self._unit_seconds: float | None = None
        self._unit_bytes = 0.0
        self._next_slot = 0
        self._next_batch = 0
        self._phase: Literal["expire", "revive", "fill", "end"] = "expire"
        self._round: _Round | None = None
        self._error: str | None = None
        self._slot_error: str | None = None  # why a slot was given up last
        self._over = False
        self.retried = 0  # attempts made again
        self.add_slots(capacities)

    # ---- what the shell tells -----------------------------------------------------------

    def add_slots(self, capacities: list[int]) -> list[SlotId]:
        """Slots of a (fresh) cluster, each with its credits; their ids, in order."""
        if not capacities and self._slots:
            self._end("the new cluster has no server that matches the job's placement")
        ids = []
        for capacity in capacities:
            slot = SlotId(len(self._slots))
            self._slots[slot] = _Slot(max(1, capacity))
            ids.append(slot)
        return ids

    def replacement_failed(self, message: str) -> None:
        self._end(f"every server was lost, and a new one could not start: {message}")

    def input(
        self, unit: UnitId, *, done: bool = False, refused: str | None = None
    ) -> list[Action]:
        """The next input: a unit to run, or one whose output is there (``done``), or one
        that cannot be a unit (``refused``: why)."""
        self._seen += 1
        if refused is not None:
            return [Fail(unit, "input", refused, 1)]
        if done:
            return [Skip(unit)]
        self._units[unit] = _Unit()
        self._queue.append(unit)
        return []

    def inputs_counted(self, total: int) -> None:
        """The number of inputs, known before they are read (a directory's files)."""
        self._total = total

    def inputs_ended(self) -> None:
        self._exhausted = True
        self._total = self._seen

    def unit_read(self, unit: UnitId, nbytes: int) -> None:
        assembly = self._assembly()
        assert assembly.reading == unit, f"unit {unit} was not asked for"
        assembly.reading = None
        assembly.units.append(unit)
        assembly.nbytes += nbytes
        if self._units[unit].alone:
            assembly.closed = True

    def unit_unreadable(self, unit: UnitId, message: str) -> list[Action]:
        assembly = self._assembly()
        assert assembly.reading == unit, f"unit {unit} was not asked for"
        assembly.reading = None
        return [self._fail(unit, "input", message)]

    def started(self, batch: BatchId, at: float) -> None:
        """The batch started running (time limits count from then)."""
        b = self._batches.get(batch)
        if b is not None and b.started is None:
            b.started = at

    def settled(self, batch: BatchId, outcome: Outcome, now: float) -> list[Action]:
        """The batch came back so. Each batch settles once (a ``Send`` again with the
        module makes it in flight again)."""
        b = self._batches[batch]
        if isinstance(outcome, ModuleMissing) and not b.with_module:
            b.with_module = True  # this worker has not got the module yet
            b.started = None  # a new task: its own start counts
            return [Send(batch, b.slot, b.units, with_module=True)]
        del self._batches[batch]
        slot = self._slots[b.slot]
        slot.in_flight -= 1
        if b.exclusive:
            slot.exclusive = False
        actions: list[Action] = []
        if isinstance(outcome, Completed):
            for unit in b.units:
                del self._units[unit]
            per_unit = outcome.seconds / len(b.units)
            old = self._unit_seconds
            self._unit_seconds = per_unit if old is None else 0.7 * old + 0.3 * per_unit
            self._unit_bytes = 0.7 * self._unit_bytes + 0.3 * (outcome.nbytes / len(b.units))
        elif isinstance(outcome, ServerGone) or b.expired == "lost":
            slot.live = False
            if slot.lost_at is None:
                slot.lost_at = now
            if b.alone:  # it ran alone there: the loss is its unit's
                actions.extend(
                    self._retry_or_fail(b.units[0], b.slot, "server_lost", outcome.message)
                )
                if self._may_replace:
                    self._replacements += 1
            else:  # one of them, or none, did it: each goes alone, unblamed
                for unit in b.units:
                    state = self._units[unit]
                    state.suspect = state.alone = True
                    self._queue.append(unit)
                    self.retried += 1
        elif isinstance(outcome, WorkerGone):
            if len(b.units) > 1:  # not one unit's fault: each on its own now
                for unit in b.units:
                    self._units[unit].alone = True
                    self._queue.append(unit)
            elif b.expired == "timeout":  # it would run past its limit again
                message = (
                    f"ran past its time limit of {self._timeout:g} s and could not be "
                    "interrupted (stuck outside Python or WebAssembly code): it was cancelled"
                )
                actions.append(self._fail(b.units[0], "timeout", message))
            else:
                actions.extend(
                    self._retry_or_fail(b.units[0], b.slot, "worker_died", outcome.message)
                )
        else:  # the slot cannot run the job: use the others; the units are not to blame
            slot.live = False
            self._slot_error = outcome.refusal
            self._queue.extend(b.units)
        return actions

    # ---- what the shell is to do next ---------------------------------------------------

    def step(self, now: float) -> Action:
        """The next thing to do (see the module doc)."""
        if self._over:
            return Finish(self._error)
        if self._phase == "expire":
            for batch, b in self._batches.items():
                deadline = self._deadline(b)
                if deadline is not None and not b.expired and now >= deadline:
                    limit = self._time_limit(b)
                    reason: Literal["timeout", "lost"] = (
                        "timeout" if limit is not None and now >= limit else "lost"
                    )
                    b.expired = reason
                    return Cancel(batch, reason)
            self._phase = "revive"
        if self._phase == "revive":
            if not any(s.live for s in self._slots.values()) and not self._batches:
                work = self._has_work()
                if isinstance(work, ReadInput):
                    return work
                if not work:
                    return self._end(None)
                if self._replacements <= 0:
                    return self._end(self._slot_error or "every server of the job was lost")
                self._replacements -= 1
                return ReplaceCluster()
            self._phase = "fill"
            self._round = _Round([i for i, s in self._slots.items() if s.live])
        if self._phase == "fill":
            action = self._fill()
            if action is not None:
                return action
            self._round = None
            self._phase = "end"
        if not self._batches:
            work = self._has_work()
            if isinstance(work, ReadInput):
                return work
            if not work:
                return self._end(None)
        self._phase = "expire"
        return Wait(self._wake_at(now))

    def attempts(self, unit: UnitId) -> int:
        """The attempts of ``unit`` that counted against its retries so far."""
        return self._units[unit].attempts

    @property
    def in_flight(self) -> dict[SlotId, int]:
        """Batches in flight, by slot."""
        return {i: s.in_flight for i, s in self._slots.items()}

    # ---- inside -------------------------------------------------------------------------

    def _end(self, error: str | None) -> Finish:
        if not self._over:
            self._over = True
            self._error = error
        return Finish(self._error)

    def _has_work(self) -> bool | ReadInput:
        if self._queue:
            return True
        if self._exhausted:
            return False
        return ReadInput()

    def _assembly(self) -> _Assembly:
        assert self._round is not None and self._round.assembly is not None, "no batch is made"
        return self._round.assembly

    def _fill(self) -> Action | None:
        """Make and send batches while a live slot has a free credit and there is work;
        None when no slot takes one more."""
        r = self._round
        assert r is not None
        while r.stalled < len(r.slots):
            a = r.assembly
            if a is None:
                slot_id = r.slots[self._next_slot % len(r.slots)]
                self._next_slot += 1
                slot = self._slots[slot_id]
                if (
                    slot.in_flight >= slot.capacity
                    or slot.exclusive
                    or (slot.in_flight > 0 and self._suspect_waiting())
                ):
                    r.stalled += 1
                    continue
                a = r.assembly = _Assembly(
                    slot_id, self._batch_size(), len(r.slots) > 1, empty=slot.in_flight == 0
                )
            action = self._assemble(a)
            if action is not None:
                return action
            r.assembly = None
            if not a.units:
                r.stalled += 1
                continue
            r.stalled = 0
            batch = BatchId(self._next_batch)
            self._next_batch += 1
            slot = self._slots[a.slot]
            for other in self._batches.values():
                if other.slot == a.slot:
                    other.alone = False  # it shares the server from now on
            self._batches[batch] = _Batch(
                a.slot,
                tuple(a.units),
                alone=len(a.units) == 1 and slot.in_flight == 0,
                exclusive=a.suspect,
            )
            slot.in_flight += 1
            slot.exclusive = slot.exclusive or a.suspect
            return Send(batch, a.slot, tuple(a.units))
        return None

    def _assemble(self, a: _Assembly) -> ReadInput | ReadUnit | None:
        """The read the batch waits for, or None when it is complete."""
        if a.reading is not None:
            return ReadUnit(a.reading)
        while not a.closed and len(a.units) < a.size and a.nbytes < MAX_BATCH_BYTES:
            unit = self._pick(a)
            if unit is None:
                if not self._exhausted and not self._suspect_waiting():
                    return ReadInput()
                break
            if self._units[unit].alone and a.units:
                self._queue.appendleft(unit)
                break
            a.reading = unit
            return ReadUnit(unit)
        return None

    def _pick(self, a: _Assembly) -> UnitId | None:
        """A unit to send: a suspect first, alone, to a slot with nothing in flight; else
        one that is not a suspect (and did not fail on this slot, when others exist)."""
        if a.empty and not a.units:
            for i, unit in enumerate(self._queue):
                if self._units[unit].suspect:
                    del self._queue[i]
                    a.suspect = True
                    return unit
        for i, unit in enumerate(self._queue):
            state = self._units[unit]
            if not state.suspect and (state.avoid != a.slot or not a.others):
                del self._queue[i]
                return unit
        return None

    def _suspect_waiting(self) -> bool:
        return any(self._units[unit].suspect for unit in self._queue)

    def _batch_size(self) -> int:
        if self._unit_seconds is None:
            return 1  # learn how long a unit takes first
        size = min(MAX_BATCH_UNITS, int(TARGET_BATCH_SECONDS / max(self._unit_seconds, 1e-6)))
        if self._unit_bytes > 0:
            size = min(size, int(MAX_BATCH_BYTES / self._unit_bytes))
        if self._total is not None:
            left = self._total - self._seen + len(self._queue)
            capacity = sum(s.capacity for s in self._slots.values() if s.live)
            if left > 0 and capacity > 0:
                size = min(size, math.ceil(left / capacity))
        return max(1, size)

    def _retry_or_fail(
        self, unit: UnitId, slot: SlotId, kind: UnitKind, message: str
    ) -> list[Action]:
        state = self._units[unit]
        state.attempts += 1
        if state.attempts > self._retries:
            tries = "once" if state.attempts == 1 else f"{state.attempts} times"
            return [self._fail(unit, kind, f"{message} (tried {tries})")]
        state.avoid = slot
        self._queue.append(unit)
        self.retried += 1
        return []

    def _fail(self, unit: UnitId, kind: UnitKind, message: str) -> Fail:
        state = self._units.pop(unit)
        return Fail(unit, kind, message, max(1, state.attempts))

    def _time_limit(self, b: _Batch) -> float | None:
        """When it is far past its units' time limits: counted from when it started (a
        batch may wait in a busy server's queue), allowing for the batch that may run
        before it on the same worker."""
        if self._timeout is None or b.started is None:
            return None
        return b.started + DEPTH * len(b.units) * self._timeout + BACKSTOP_GRACE

    def _deadline(self, b: _Batch) -> float | None:
        """When to give up waiting for it: far past its time limits, or a while after its
        slot was found lost."""
        limit = self._time_limit(b)
        lost_at = self._slots[b.slot].lost_at
        lost = None if lost_at is None else lost_at + LOST_GRACE
        if limit is None or lost is None:
            return limit if lost is None else lost
        return min(limit, lost)

    def _wake_at(self, now: float) -> float | None:
        deadlines = [
            d
            for b in self._batches.values()
            if not b.expired and (d := self._deadline(b)) is not None
        ]
        if self._timeout is not None and any(b.started is None for b in self._batches.values()):
            deadlines.append(now + POLL_UNSTARTED)  # look again once they have started
        return min(deadlines, default=None)
