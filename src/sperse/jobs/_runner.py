"""The job's thread: the shell of the ``JobScheduler`` (``_schedule``), doing the I/O its
actions ask for.

It reads inputs, sends batches, cancels them, writes outputs and failures, starts a fresh
cluster, and tells the scheduler what happened; the decisions (what to send where, flow
control, batch sizes, retries, what is done already, time limits, the end) are the
scheduler's. It owns its thread (``sperse-job``), which ends with the job, on ``cancel``,
or with the program (a daemon: a program that exits without waiting abandons its job).
Backends only append settled batches to its queue; the ``Job`` only reads its counters.

**Slots.** Each eligible server of each cluster is a *slot* with ``workers * DEPTH``
credits. Each unit's output is written at most once: a batch is handled once, when its
Pending settles, and outcomes arriving later are ignored. When no server is left and the job
was given a way to start one (``cluster=`` a function, as ``sperse submit`` does for its
embedded server), it starts a fresh one.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Final

from sperse._cluster.cluster import Cluster
from sperse._cluster.pending import Pending, submit_call
from sperse._core import PickledFunction
from sperse._core.routing import eligible
from sperse._lang.placement import Placement
from sperse._serialize import RemoteValue
from sperse.errors import (
    ServerLost,
    SperseError,
    TaskCancelled,
    WorkerDied,
)
from sperse.jobs._io import DirectoryInput, LinesInput, OutputDir, Unit, is_reserved
from sperse.jobs._programs import Program
from sperse.jobs._results import (
    UnitError,
    UnitResult,
)
from sperse.jobs._schedule import (
    DEPTH,
    Action,
    BatchId,
    Cancel,
    Completed,
    Fail,
    Finish,
    JobScheduler,
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
from sperse.jobs._tally import JobTally
from sperse.jobs._worker import MAX_OUTPUT, NEED_MODULE
from sperse.jobs._worker import Outcome as UnitOutcome

__all__ = ["JobRunner", "Source", "slots_of"]

FETCH_TIMEOUT: Final = 300.0

Source = DirectoryInput | LinesInput


@dataclass(slots=True, eq=False)
class _Slot:
    """One eligible server of one cluster, and its credits."""

    cluster: Cluster
    server: str
    placement: Placement
    capacity: int


@dataclass(slots=True, eq=False)
class _Batch:
    id: BatchId
    slot: _Slot
    ids: tuple[UnitId, ...]
    units: list[Unit]
    data: list[bytes]
    pending: Pending[Any] | None = None
    started_told: bool = False


def slots_of(cluster: Cluster, placement: Placement) -> list[_Slot]:
    servers = cluster.servers()
    fits = eligible(placement, servers)
    pin = len(servers) > 1 and placement.pin is None
    return [
        _Slot(
            cluster,
            server.name,
            replace(placement, pin=server.name) if pin else placement,
            max(1, server.workers) * DEPTH,
        )
        for server in fits
    ]


class JobRunner:
    """The job's thread and its state: the shell of the ``JobScheduler``, doing the I/O its
    actions ask for. The ``Job`` reads what it has done in its ``tally``.
    """

    def __init__(
        self,
        *,
        program: Program,
        source: Source,
        output: OutputDir,
        placement: Placement,
        clusters: list[Cluster],
        slots: list[_Slot],
        factory: Callable[[], Cluster] | None,
        owned: list[Cluster],
        retries: int,
        timeout: float | None,
        max_memory: int | None,
        max_output: int = MAX_OUTPUT,
        results: bool = True,
    ) -> None:
        self.name = program.name
        self._program = program
        self._function: PickledFunction = program.batch_function(timeout, max_memory, max_output)
        self._source = source
        self._out = output
        self._placement = placement
        self.clusters = clusters
        self._factory = factory
        self.owned = owned
        self._schedule = JobScheduler(
            [],
            retries=retries,
            timeout=timeout,
            replacements=max(1, retries) if factory is not None else 0,
        )
        ids = self._schedule.add_slots([slot.capacity for slot in slots])
        self._slots: dict[SlotId, _Slot] = dict(zip(ids, slots, strict=True))

        self.tally = JobTally(results=results)
        self._events = threading.Condition(self.tally.lock)  # the job's thread waits here
        self._settled: deque[_Batch] = deque()
        self._cancel_requested = False
        self._error: str | None = None  # why the job stopped early

        # The job thread's own state: the units and batches the scheduler knows.
        self._inputs: Iterator[Unit] = iter(source)
        self._units: dict[UnitId, Unit] = {}  # not ended yet
        self._read: dict[UnitId, bytes] = {}  # read for the batch being made
        self._batches: dict[BatchId, _Batch] = {}

        # A daemon: a program that exits without waiting for its job abandons it (what was
        # written is whole; the same job again finishes it) rather than hanging on exit.
        self._thread = threading.Thread(target=self._drive, name="sperse-job", daemon=True)
        self._thread.start()

    # ---- for the Job (any thread) -------------------------------------------------------

    def cancel(self) -> bool:
        """Stop the job's thread; False if the job had already ended."""
        with self.tally.lock:
            if self.tally.finished.is_set():
                return False
            self._cancel_requested = True
            self._events.notify_all()
        self._thread.join()
        return True

    def join(self) -> None:
        self._thread.join()

    # ---- the job's thread ---------------------------------------------------------------

    def _drive(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # a bug: end the job with it rather than hang
            self._error = f"internal error: {type(exc).__name__}: {exc}"
            traceback.print_exc()
        finally:
            self._finish()

    def _run(self) -> None:
        if isinstance(self._source, DirectoryInput):
            total = self._source.count()
            with self.tally.lock:
                self.tally.total = total
            self._schedule.inputs_counted(total)
        while True:
            self._handle_settled()
            if self._cancel_requested:
                return
            self._tell_started()
            while True:
                action = self._schedule.step(time.monotonic())
                if isinstance(action, Finish):
                    self._error = action.error
                    return
                if isinstance(action, Wait):
                    break
                self._do(action, "")
            self._wait_for_events(action.until)

    def _do(self, action: Action, where: str) -> None:
        """Do what the scheduler says; ``where``: the server, for failures."""
        if isinstance(action, ReadInput):
            self._read_input()
        elif isinstance(action, ReadUnit):
            try:
                payload = self._units[action.unit].read()
            except OSError as exc:
                message = f"cannot read the input: {exc}"
                for then in self._schedule.unit_unreadable(action.unit, message):
                    self._do(then, "")
            else:
                self._read[action.unit] = payload
                self._schedule.unit_read(action.unit, len(payload))
        elif isinstance(action, Send):
            self._send(action)
        elif isinstance(action, Cancel):
            pending = self._batches[action.batch].pending
            assert pending is not None
            _cancel(pending)
        elif isinstance(action, ReplaceCluster):
            self._replace_cluster()
        elif isinstance(action, Skip):
            del self._units[action.unit]
            with self.tally.lock:
                self.tally.skipped += 1
        elif isinstance(action, Fail):
            unit = self._units.pop(action.unit)
            self._fail(unit, UnitError(action.kind, action.message), where, action.attempts)
        else:  # pragma: no cover - Wait and Finish end the step loop
            raise AssertionError(f"unexpected action {action!r}")

    def _tell_started(self) -> None:
        """Tell the scheduler which batches have started (their time limits count)."""
        for batch in self._batches.values():
            pending = batch.pending
            started = None if pending is None else pending._started_at
            if not batch.started_told and started is not None:
                self._schedule.started(batch.id, started)
                batch.started_told = True

    def _wait_for_events(self, until: float | None) -> None:
        with self.tally.lock:
            while not self._settled and not self._cancel_requested:
                timeout = None
                if until is not None:
                    timeout = until - time.monotonic()
                    if timeout <= 0:
                        return
                self._events.wait(timeout)

    # ---- inputs and sending ---------------------------------------------------------------

    def _read_input(self) -> None:
        unit = next(self._inputs, None)
        if unit is None:
            self._schedule.inputs_ended()
            with self.tally.lock:
                self.tally.total = self.tally.seen
            return
        with self.tally.lock:
            self.tally.seen += 1
            uid = UnitId(self.tally.seen)
        self._units[uid] = unit
        if is_reserved(unit.name):
            message = f"the name {unit.name!r} is the job's own in the output directory"
            actions = self._schedule.input(uid, refused=message)
        else:
            actions = self._schedule.input(uid, done=self._out.done(unit.name))
        for action in actions:
            self._do(action, "")

    def _send(self, send: Send) -> None:
        batch = self._batches.get(send.batch)
        if batch is None:  # a new batch
            units = [self._units[uid] for uid in send.units]
            data = [self._read.pop(uid) for uid in send.units]
            batch = _Batch(send.batch, self._slots[send.slot], send.units, units, data)
            self._batches[batch.id] = batch
            with self.tally.lock:
                self.tally.running += len(units)
                self.tally.stats["batches"] += 1
        slot = batch.slot
        args: tuple[Any, ...] = (batch.data,)
        if send.with_module:
            args = (batch.data, self._program.module)
            with self.tally.lock:
                self.tally.stats["module_sends"] += 1
        try:
            pending = submit_call(
                slot.cluster,
                self._function,
                args,
                {},
                placement=slot.placement,
                retries=0,
                label=f"{self.name} ({len(batch.units)} units)",
            )
        except Exception as exc:  # the cluster is closed, or broke in an unexpected way
            pending = Pending(slot.cluster, label=self.name)
            pending._settle(error=ServerLost(f"cannot send to {slot.server}: {exc}"))
        batch.pending = pending
        batch.started_told = False
        pending._on_settle(functools.partial(self._on_settled, batch))

    def _on_settled(self, batch: _Batch, _: Pending[Any]) -> None:
        """On a backend's thread: only queue it."""
        with self.tally.lock:
            self._settled.append(batch)
            self._events.notify_all()

    # ---- receiving ---------------------------------------------------------------------

    def _handle_settled(self) -> None:
        while True:
            with self.tally.lock:
                if not self._settled:
                    return
                batch = self._settled.popleft()
            if self._batches.get(batch.id) is batch:
                self._handle(batch)

    def _handle(self, batch: _Batch) -> None:
        pending = batch.pending
        assert pending is not None
        error = pending._error
        value: Any = None
        if error is None:
            value = pending._value
            if isinstance(value, RemoteValue):  # a result of 1 MiB or more: bring it here
                try:
                    value = value.fetch(FETCH_TIMEOUT)
                except (SperseError, TimeoutError) as exc:
                    error = ServerLost(
                        f"could not fetch the outputs from {batch.slot.server}: {exc}"
                    )
        where = pending.where or batch.slot.server
        outcome = self._outcome(batch, error, value, where)
        actions = self._schedule.settled(batch.id, outcome, time.monotonic())
        if not any(isinstance(a, Send) and a.batch == batch.id for a in actions):
            del self._batches[batch.id]  # it is over (else: sent again with the module)
            with self.tally.lock:
                self.tally.running -= len(batch.units)
        for action in actions:
            self._do(action, where)

    def _outcome(
        self, batch: _Batch, error: BaseException | None, value: Any, where: str
    ) -> Outcome:
        """How the batch settled, for the scheduler; a completed one's outputs are written."""
        if error is None and isinstance(value, list) and len(value) == len(batch.units):
            seconds, nbytes = self._record_batch(batch, value, where)
            return Completed(seconds, nbytes)
        reason = str(error) if error is not None else f"it answered {value!r}"
        refusal = f"{batch.slot.server} could not run the job: {reason}"
        if error is None and value == NEED_MODULE:
            return ModuleMissing(str(error), refusal)
        if isinstance(error, ServerLost):
            return ServerGone(str(error))
        if isinstance(error, WorkerDied | TaskCancelled):
            return WorkerGone(str(error))
        return Refused(str(error), refusal)

    def _record_batch(
        self, batch: _Batch, outcomes: list[UnitOutcome], where: str
    ) -> tuple[float, int]:
        """Write each unit's output (or record its own failure): the units' time and bytes."""
        seconds = 0.0
        nbytes = 0
        for uid, unit, data, outcome in zip(
            batch.ids, batch.units, batch.data, outcomes, strict=True
        ):
            tried = self._schedule.attempts(uid)  # before this one
            del self._units[uid]
            if outcome[0]:
                _, output, took = outcome
                try:
                    path = self._out.write(unit.name, output)
                except OSError as exc:
                    error = UnitError("output", f"cannot write its output: {exc}")
                    self._fail(unit, error, where, max(1, tried), took)
                    continue
                result = UnitResult(unit.name, True, path, None, where, tried + 1, took)
                self.tally.add_result(result)
                nbytes += len(data) + len(output)
            else:
                _, kind, message, detail, took = outcome
                error = UnitError(kind, message, detail)
                self._fail(unit, error, where, max(1, tried), took)
                nbytes += len(data)
            seconds += took
        return seconds, nbytes

    def _fail(
        self, unit: Unit, error: UnitError, where: str, attempts: int, seconds: float = 0.0
    ) -> None:
        result = UnitResult(unit.name, False, None, error, where, attempts, seconds)
        self._out.record_failure(result.to_json())
        self.tally.add_result(result)

    # ---- a fresh cluster, the end ------------------------------------------------------

    def _replace_cluster(self) -> None:
        """Every server is gone: start a fresh cluster (the scheduler allows it)."""
        assert self._factory is not None
        try:
            cluster = self._factory()
        except (SperseError, OSError) as exc:
            self._schedule.replacement_failed(str(exc))
            return
        self.clusters.append(cluster)
        self.owned.append(cluster)
        slots = slots_of(cluster, self._placement)
        with self.tally.lock:
            self.tally.stats["replaced_clusters"] += 1
        ids = self._schedule.add_slots([slot.capacity for slot in slots])
        self._slots.update(zip(ids, slots, strict=True))

    def _finish(self) -> None:
        for batch in list(self._batches.values()):
            if batch.pending is not None:
                _cancel(batch.pending)
        self._batches.clear()
        self._out.close()
        with self.tally.lock:
            self.tally.stats["retried"] = self._schedule.retried
        self.tally.finish(
            output=self._out.root,
            failed_list=self._out.failed_list,
            error=self._error,
            cancelled=self._cancel_requested,
        )


def _cancel(pending: Pending[Any]) -> None:
    """Cancel ``pending``: it settles here and now; telling its backend may fail (a lost
    server), which changes nothing for the job."""
    with contextlib.suppress(SperseError, RuntimeError):
        pending.cancel()
