"""``submit_job`` and ``Job``: a program run over every unit of an input, on the cluster.

Built on ``submit_call`` and ``Pending`` only, so it runs on every backend, and over
several clusters at once (``cluster=[a, b]``).

**Threads.** The job's own thread (``sperse-job``, owned by the ``Job``: it ends before
``wait`` returns, on ``cancel``, or with the job; a program that exits without waiting
abandons it) reads inputs, sends batches, and writes outputs. Backends only append settled
batches to its queue. The user's thread only looks: ``progress()``, ``wait()`` (which draws
the bar), ``as_completed()``. No user code runs on the client, so nothing is posted to the
user's thread.

**Time limits, and nothing waits forever.** Workers enforce a unit's time limit. As a
backstop, a batch still running ``BACKSTOP_GRACE`` seconds past the limits of its units
(counted from when it started) is cancelled, and a batch of a server found lost that has
not heard so within ``LOST_GRACE`` seconds is given up and sent elsewhere.

**Flow control.** Each eligible server is a *slot* with ``workers * DEPTH`` credits: a batch
takes one when it is sent and gives it back when it settles. Inputs are read only when a
credit is free, so however many units there are, the client holds at most the units of the
batches in flight, and each server queues at most ``DEPTH`` batches per worker.

**Batches.** The first batch holds one unit; then each batch holds as many units as take
about ``TARGET_BATCH_SECONDS`` on a worker (from the times workers report), at most
``MAX_BATCH_UNITS`` and ``MAX_BATCH_BYTES``, and near the end no more than an even share of
what is left, so that every worker finishes at about the same time.

**Failures.** A unit's own failure (exit code, trap, time or memory limit, exception) is
final: it would fail again. A batch whose worker died is sent again unit by unit (no unit
is blamed for its neighbours); a unit alone on a worker that dies counts one attempt. A
lost server counts one attempt for each of its units, which go to the other servers; when
no server is left and the job was given a way to start one (``cluster=`` a function, as
``sperse submit`` does for its embedded server), it starts a fresh one. A unit is retried up
to ``retries`` times, elsewhere first. Each unit's output is written at most once: a batch
is handled once, when its Pending settles, and outcomes arriving later are ignored.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import IO, Any, Final

from sperse._cluster.cluster import Cluster
from sperse._cluster.connect import current
from sperse._cluster.pending import Pending, submit_call
from sperse._core import PickledFunction
from sperse._core.routing import eligible, no_match_message
from sperse._lang.placement import Placement, placement_from_options
from sperse._serialize import RemoteValue
from sperse.errors import (
    NoMatchingServer,
    NotReadyError,
    ServerLost,
    SperseError,
    TaskCancelled,
    WorkerDied,
)
from sperse.jobs._io import DirectoryInput, LinesInput, OutputDir, Unit, is_reserved
from sperse.jobs._options import DEFAULT_MAX_MEMORY_MB, DEFAULT_RETRIES
from sperse.jobs._programs import Program, PythonProgram, WasmProgram
from sperse.jobs._progress import Bar, Display, PlainLines, Rate, is_terminal
from sperse.jobs._results import (
    JobError,
    JobProgress,
    JobSummary,
    UnitError,
    UnitResult,
)
from sperse.jobs._worker import NEED_MODULE, Outcome, UnitKind

__all__ = ["DEFAULT_MAX_MEMORY_MB", "DEFAULT_RETRIES", "Job", "submit_job"]

DEPTH: Final = 2  # batches in flight per worker: one running, one waiting beside it
TARGET_BATCH_SECONDS: Final = 0.05
MAX_BATCH_UNITS: Final = 64
MAX_BATCH_BYTES: Final = 1 << 20
RESULTS_KEPT: Final = 100_000  # unread results for as_completed(); older ones are dropped
FAILURES_KEPT: Final = 1000  # failures kept in the summary (all are in _failed.jsonl)
BACKSTOP_GRACE: Final = 2.0  # seconds past a started batch's time limits: it is cancelled
LOST_GRACE: Final = 5.0  # seconds a batch may still settle after its server was found lost
FETCH_TIMEOUT: Final = 300.0

ClusterSpec = Cluster | Sequence[Cluster] | Callable[[], Cluster] | None
Source = DirectoryInput | LinesInput


@dataclass(slots=True, eq=False)
class _Slot:
    """One eligible server of one cluster, and its credits."""

    cluster: Cluster
    server: str
    placement: Placement
    capacity: int
    in_flight: int = 0
    live: bool = True
    lost_at: float | None = None  # when a batch of it came back ServerLost


@dataclass(slots=True, eq=False)
class _Batch:
    slot: _Slot
    units: list[Unit]
    data: list[bytes]
    pending: Pending[Any] | None = None
    with_module: bool = False
    expired: str = ""  # cancelled by the job: "timeout" (far past its limits) or "lost"

    def time_limit(self, timeout: float | None) -> float | None:
        """When it is far past its units' time limits: counted from when it started (a
        batch may wait in a busy server's queue), allowing for the batch that may run
        before it on the same worker."""
        started = None if self.pending is None else self.pending._started_at
        if timeout is None or started is None:
            return None
        return started + DEPTH * len(self.units) * timeout + BACKSTOP_GRACE

    def deadline(self, timeout: float | None, lost_grace: float) -> float | None:
        """When the job gives up waiting for it: far past its time limits, or a while after
        its server was found lost (its own outcome should have come with the others')."""
        limit = self.time_limit(timeout)
        lost = None if self.slot.lost_at is None else self.slot.lost_at + lost_grace
        if limit is None or lost is None:
            return limit if lost is None else lost
        return min(limit, lost)


def _slots_of(cluster: Cluster, placement: Placement) -> list[_Slot]:
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


class Job:
    """A batch job running on the cluster; made by ``submit_job``.

    ``progress()`` at any time; ``wait()`` for the ``JobSummary`` (with a progress bar in a
    terminal); ``as_completed()`` for each ``UnitResult`` as units finish; ``cancel()`` to
    stop (what is done stays done: run the job again to finish it).
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
        results: bool = True,
    ) -> None:
        self.name = program.name
        self.output = output.root
        self._program = program
        self._function: PickledFunction = program.batch_function(timeout, max_memory)
        self._source = source
        self._out = output
        self._placement = placement
        self._clusters = clusters
        self._slots = slots
        self._factory = factory
        self._owned = owned
        self._replacements_left = max(1, retries)
        self._retries = retries
        self._timeout = timeout
        self._started = time.monotonic()

        self._lock = threading.Lock()
        self._events = threading.Condition(self._lock)  # the job's thread waits here
        self._changed = threading.Condition(self._lock)  # readers of results wait here
        self._settled: deque[_Batch] = deque()
        self._cancel_requested = False
        self._finished = threading.Event()

        # Counters, written by the job's thread under the lock, read by anyone.
        self._total: int | None = None
        self._seen = 0
        self._succeeded = 0
        self._failed = 0
        self._skipped = 0
        self._running = 0
        self._rate = Rate()
        self._results: deque[UnitResult] = deque(maxlen=RESULTS_KEPT if results else 0)
        self._failures: list[UnitResult] = []
        self._summary: JobSummary | None = None
        self._error: str | None = None  # why the job stopped early
        self._slot_error: str | None = None  # why a server was given up last
        self._stats = {"batches": 0, "module_sends": 0, "retried": 0, "replaced_clusters": 0}

        # The job thread's own state.
        self._retry: deque[Unit] = deque()
        self._inputs: Iterator[Unit] = iter(source)
        self._exhausted = False
        self._batches: set[_Batch] = set()
        self._unit_seconds: float | None = None
        self._unit_bytes = 0.0
        self._next_slot = 0

        # A daemon: a program that exits without waiting for its job abandons it (what was
        # written is whole; the same job again finishes it) rather than hanging on exit.
        self._thread = threading.Thread(target=self._drive, name="sperse-job", daemon=True)
        self._thread.start()

    # ---- the public API (any thread) ----------------------------------------------------

    def progress(self) -> JobProgress:
        """How far the job is, now."""
        now = time.monotonic()
        with self._lock:
            rate = self._rate.add(now, self._succeeded + self._failed)
            return JobProgress(
                total=self._total,
                succeeded=self._succeeded,
                failed=self._failed,
                skipped=self._skipped,
                running=self._running,
                elapsed=now - self._started,
                rate=rate,
                finished=self._finished.is_set(),
            )

    def done(self) -> bool:
        return self._finished.is_set()

    @property
    def summary(self) -> JobSummary:
        """How the job ended; ``NotReadyError`` while it runs (``wait()`` waits for it)."""
        if self._summary is None:
            raise NotReadyError(f"the job {self.name} is still running; use job.wait()")
        return self._summary

    def wait(
        self,
        timeout: float | None = None,
        *,
        progress: bool | None = None,
        interval: float = 5.0,
        stream: IO[str] | None = None,
    ) -> JobSummary:
        """Wait for the end of the job and return its summary.

        ``progress``: None shows a live bar when ``stream`` (default stderr) is a terminal
        and nothing otherwise; True shows the bar in a terminal and a plain line every
        ``interval`` seconds (and one at the end) otherwise; False nothing. Raises
        ``TimeoutError`` if ``timeout`` passes first (the job goes on). Clusters the job
        started are closed when it has ended.
        """
        out = stream if stream is not None else sys.stderr
        display = None if self._finished.is_set() else self._display(progress, out, interval)
        deadline = None if timeout is None else time.monotonic() + timeout
        tick = 0.1 if isinstance(display, Bar) else min(interval, 0.5)
        try:
            while not self._finished.is_set():
                for cluster in self._clusters:
                    cluster.drain()
                if display is not None:
                    display.update(self.progress())
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(
                        f"the job {self.name} did not finish within {timeout} s; it goes on "
                        "(job.cancel() stops it)"
                    )
                self._finished.wait(tick if remaining is None else min(tick, remaining))
        finally:
            if display is not None:
                display.close(self.progress())
        self._thread.join()
        self.close()
        return self.summary

    def as_completed(self, timeout: float | None = None) -> Iterator[UnitResult]:
        """Each unit's result as it finishes (skipped units are not included), until the
        job ends. Results wait for a reader; past ``RESULTS_KEPT`` unread, the oldest are
        dropped (the outputs are on disk all the same)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            for cluster in self._clusters:
                cluster.drain()
            with self._lock:
                while not self._results and not self._finished.is_set():
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise TimeoutError(f"no unit of {self.name} finished within {timeout} s")
                    self._changed.wait(1.0 if remaining is None else min(remaining, 1.0))
                if not self._results:
                    return
                result = self._results.popleft()
            yield result

    def cancel(self) -> bool:
        """Stop the job: units running are cancelled and not written. False if it had
        already ended. Run it again to finish it."""
        with self._lock:
            if self._finished.is_set():
                return False
            self._cancel_requested = True
            self._events.notify_all()
        self._thread.join()
        return True

    def close(self) -> None:
        """Cancel the job if it runs, and close the clusters it started."""
        if not self._finished.is_set():
            self.cancel()
        owned, self._owned = self._owned, []
        for cluster in owned:
            cluster.close()

    def __enter__(self) -> Job:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Job {self.name} -> {self.output}: {self.progress().line()}>"

    def _display(self, progress: bool | None, stream: IO[str], interval: float) -> Display | None:
        if progress is False:
            return None
        label = f"sperse: {os.path.basename(self.name) or 'job'}"
        if is_terminal(stream):
            return Bar(stream, label)
        if progress:
            return PlainLines(stream, interval, label, time.monotonic)
        return None

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
            with self._lock:
                self._total = total
        while True:
            self._handle_settled()
            if self._cancel_requested:
                return
            self._expire(time.monotonic())
            if not any(slot.live for slot in self._slots) and not self._batches:
                if not self._has_work():
                    return
                if not self._replace_cluster():
                    return
            self._fill()
            if not self._batches and not self._has_work():
                return
            self._wait_for_events()

    def _has_work(self) -> bool:
        if self._retry:
            return True
        if self._exhausted:
            return False
        unit = self._next_input()
        if unit is None:
            return False
        self._retry.appendleft(unit)
        return True

    def _wait_for_events(self) -> None:
        deadlines = [
            d
            for b in self._batches
            if not b.expired and (d := b.deadline(self._timeout, LOST_GRACE)) is not None
        ]
        if self._timeout is not None and any(
            b.time_limit(self._timeout) is None for b in self._batches
        ):
            deadlines.append(time.monotonic() + 0.5)  # look again once they have started
        with self._lock:
            while not self._settled and not self._cancel_requested:
                timeout = None
                if deadlines:
                    timeout = min(deadlines) - time.monotonic()
                    if timeout <= 0:
                        return
                self._events.wait(timeout)

    # ---- sending ---------------------------------------------------------------------------

    def _fill(self) -> None:
        """Send batches while a live slot has a free credit and there is work."""
        slots = [s for s in self._slots if s.live]
        if not slots:
            return
        stalled = 0
        while stalled < len(slots):
            slot = slots[self._next_slot % len(slots)]
            self._next_slot += 1
            if slot.in_flight >= slot.capacity or not self._send_batch(slot, len(slots) > 1):
                stalled += 1
            else:
                stalled = 0

    def _send_batch(self, slot: _Slot, others: bool) -> bool:
        size = self._batch_size()
        units: list[Unit] = []
        data: list[bytes] = []
        nbytes = 0
        while len(units) < size and nbytes < MAX_BATCH_BYTES:
            unit = self._next_unit(slot, others)
            if unit is None:
                break
            if unit.alone and units:
                self._retry.appendleft(unit)
                break
            try:
                payload = unit.read()
            except OSError as exc:
                self._fail(unit, UnitError("input", f"cannot read the input: {exc}"), "")
                continue
            units.append(unit)
            data.append(payload)
            nbytes += len(payload)
            if unit.alone:
                break
        if not units:
            return False
        batch = _Batch(slot, units, data)
        slot.in_flight += 1
        self._batches.add(batch)
        with self._lock:
            self._running += len(units)
            self._stats["batches"] += 1
        self._send(batch)
        return True

    def _send(self, batch: _Batch) -> None:
        slot = batch.slot
        args: tuple[Any, ...] = (batch.data,)
        if batch.with_module:
            args = (batch.data, self._program.module)
            with self._lock:
                self._stats["module_sends"] += 1
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
        pending._on_settle(functools.partial(self._on_settled, batch))

    def _on_settled(self, batch: _Batch, _: Pending[Any]) -> None:
        """On a backend's thread: only queue it."""
        with self._lock:
            self._settled.append(batch)
            self._events.notify_all()

    def _batch_size(self) -> int:
        if self._unit_seconds is None:
            return 1  # learn how long a unit takes first
        size = min(MAX_BATCH_UNITS, int(TARGET_BATCH_SECONDS / max(self._unit_seconds, 1e-6)))
        if self._unit_bytes > 0:
            size = min(size, int(MAX_BATCH_BYTES / self._unit_bytes))
        total = self._total
        if total is not None:
            left = total - self._seen + len(self._retry)
            capacity = sum(s.capacity for s in self._slots if s.live)
            if left > 0 and capacity > 0:
                size = min(size, math.ceil(left / capacity))
        return max(1, size)

    def _next_unit(self, slot: _Slot, others: bool) -> Unit | None:
        """A unit to retry (one that did not fail on ``slot`` first, when other slots
        exist), else the next input whose output is not there yet."""
        for i, unit in enumerate(self._retry):
            if unit.avoid is not slot or not others:
                del self._retry[i]
                return unit
        return self._next_input()

    def _next_input(self) -> Unit | None:
        if self._exhausted:
            return None
        for unit in self._inputs:
            with self._lock:
                self._seen += 1
            if is_reserved(unit.name):
                message = f"the name {unit.name!r} is the job's own in the output directory"
                self._fail(unit, UnitError("input", message), "")
                continue
            if self._out.done(unit.name):
                with self._lock:
                    self._skipped += 1
                continue
            return unit
        self._exhausted = True
        with self._lock:
            self._total = self._seen
        return None

    # ---- receiving ---------------------------------------------------------------------

    def _handle_settled(self) -> None:
        while True:
            with self._lock:
                if not self._settled:
                    return
                batch = self._settled.popleft()
            if batch in self._batches:
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
        if error is None and value == NEED_MODULE and not batch.with_module:
            batch.with_module = True  # this worker has not got the module yet
            self._send(batch)
            return
        self._batches.discard(batch)
        slot = batch.slot
        slot.in_flight -= 1
        with self._lock:
            self._running -= len(batch.units)
        where = pending.where or slot.server
        if error is None and isinstance(value, list) and len(value) == len(batch.units):
            self._record_batch(batch, value, where)
        elif isinstance(error, ServerLost) or batch.expired == "lost":
            slot.live = False
            if slot.lost_at is None:
                slot.lost_at = time.monotonic()
            for unit in batch.units:
                self._retry_or_fail(unit, slot, "server_lost", str(error), where)
        elif isinstance(error, WorkerDied | TaskCancelled):
            if len(batch.units) > 1:  # not one unit's fault: each on its own now
                for unit in batch.units:
                    unit.alone = True
                    self._retry.append(unit)
            elif batch.expired == "timeout":  # it would run past its limit again
                message = (
                    f"ran past its time limit of {self._timeout:g} s and could not be "
                    "interrupted (stuck outside Python or WebAssembly code): it was cancelled"
                )
                self._fail(batch.units[0], UnitError("timeout", message), where)
            else:
                self._retry_or_fail(batch.units[0], slot, "worker_died", str(error), where)
        else:
            # The server cannot run this job at all (wasmtime missing there, ...): use
            # the others. The units are not to blame.
            slot.live = False
            reason = str(error) if error is not None else f"it answered {value!r}"
            self._slot_error = f"{slot.server} could not run the job: {reason}"
            self._retry.extend(batch.units)

    def _record_batch(self, batch: _Batch, outcomes: list[Outcome], where: str) -> None:
        seconds = 0.0
        nbytes = 0
        for unit, data, outcome in zip(batch.units, batch.data, outcomes, strict=True):
            if outcome[0]:
                _, output, took = outcome
                try:
                    path = self._out.write(unit.name, output)
                except OSError as exc:
                    error = UnitError("output", f"cannot write its output: {exc}")
                    self._fail(unit, error, where, took)
                    continue
                result = UnitResult(unit.name, True, path, None, where, unit.attempts + 1, took)
                self._add_result(result, ok=True)
                nbytes += len(data) + len(output)
            else:
                _, kind, message, detail, took = outcome
                self._fail(unit, UnitError(kind, message, detail), where, took)
                nbytes += len(data)
            seconds += took
        per_unit = seconds / len(batch.units)
        old = self._unit_seconds
        self._unit_seconds = per_unit if old is None else 0.7 * old + 0.3 * per_unit
        self._unit_bytes = 0.7 * self._unit_bytes + 0.3 * (nbytes / len(batch.units))

    def _retry_or_fail(
        self, unit: Unit, slot: _Slot, kind: UnitKind, message: str, where: str
    ) -> None:
        unit.attempts += 1
        if unit.attempts > self._retries:
            tries = "once" if unit.attempts == 1 else f"{unit.attempts} times"
            self._fail(unit, UnitError(kind, f"{message} (tried {tries})"), where)
            return
        unit.avoid = slot
        self._retry.append(unit)
        with self._lock:
            self._stats["retried"] += 1

    def _fail(self, unit: Unit, error: UnitError, where: str, seconds: float = 0.0) -> None:
        result = UnitResult(unit.name, False, None, error, where, max(1, unit.attempts), seconds)
        self._out.record_failure(result.to_json())
        self._add_result(result, ok=False)

    def _add_result(self, result: UnitResult, *, ok: bool) -> None:
        with self._lock:
            if ok:
                self._succeeded += 1
            else:
                self._failed += 1
                if len(self._failures) < FAILURES_KEPT:
                    self._failures.append(result)
            self._results.append(result)
            self._changed.notify_all()

    # ---- time limits, lost servers, the end -----------------------------------------

    def _expire(self, now: float) -> None:
        """Cancel batches far past their time limits (a unit the worker could not interrupt,
        stuck in C code: the cancellation stops that worker, and the batch is handled like
        a dead worker's), and batches of a lost server that never heard so (handled as
        lost): no batch waits forever."""
        for batch in list(self._batches):
            deadline = batch.deadline(self._timeout, LOST_GRACE)
            if deadline is not None and not batch.expired and now >= deadline:
                limit = batch.time_limit(self._timeout)
                batch.expired = "timeout" if limit is not None and now >= limit else "lost"
                assert batch.pending is not None
                _cancel(batch.pending)

    def _replace_cluster(self) -> bool:
        """Every server is gone: start a fresh cluster if the job may; False if not."""
        if self._factory is None or self._replacements_left <= 0:
            self._error = self._slot_error or "every server of the job was lost"
            return False
        self._replacements_left -= 1
        try:
            cluster = self._factory()
        except (SperseError, OSError) as exc:
            self._error = f"every server was lost, and a new one could not start: {exc}"
            return False
        self._clusters.append(cluster)
        self._owned.append(cluster)
        slots = _slots_of(cluster, self._placement)
        self._slots.extend(slots)
        with self._lock:
            self._stats["replaced_clusters"] += 1
        if not slots:
            self._error = "the new cluster has no server that matches the job's placement"
            return False
        return True

    def _finish(self) -> None:
        for batch in list(self._batches):
            if batch.pending is not None:
                _cancel(batch.pending)
        self._batches.clear()
        self._out.close()
        with self._lock:
            total = self._total if self._total is not None else self._seen
            done = self._succeeded + self._failed + self._skipped
            self._summary = JobSummary(
                output=self.output,
                total=total,
                succeeded=self._succeeded,
                failed=self._failed,
                skipped=self._skipped,
                not_run=max(0, total - done),
                seconds=time.monotonic() - self._started,
                failures=tuple(self._failures),
                failed_list=self._out.failed_list if self._failed else None,
                error=self._error,
                cancelled=self._cancel_requested,
                extra=MappingProxyType(dict(self._stats)),
            )
            self._finished.set()
            self._changed.notify_all()


def _cancel(pending: Pending[Any]) -> None:
    """Cancel ``pending``: it settles here and now; telling its backend may fail (a lost
    server), which changes nothing for the job."""
    with contextlib.suppress(SperseError, RuntimeError):
        pending.cancel()


# ---- submit_job ---------------------------------------------------------------------------


def submit_job(
    *,
    input: str | os.PathLike[str] | Iterable[bytes],
    output: str | os.PathLike[str],
    wasm: str | os.PathLike[str] | bytes | None = None,
    python: str | Callable[[bytes], bytes | str] | None = None,
    on: str | None = None,
    retries: int = DEFAULT_RETRIES,
    timeout: float | None = None,
    max_memory_mb: float | None = DEFAULT_MAX_MEMORY_MB,
    cluster: ClusterSpec = None,
    results: bool = True,
) -> Job:
    """Run a program over every unit of ``input``, writing each output in ``output``.

    - ``wasm``: a WebAssembly module (a path, or its bytes; binary or WAT), run as a WASI
      command per unit: the unit on stdin, the output from stdout; ``python``: a function
      ``bytes -> bytes | str``, or its name ``"pkg.module:func"`` / ``"file.py:func"``.
    - ``input``: a directory (every file under it is a unit, named by its relative path), or
      ``"-"`` (stdin) or a binary stream (each line a unit, named by its line number).
    - ``output``: the directory of outputs, same names. Units whose output exists are
      skipped: run the same job again to finish an interrupted one.
    - ``on``: a placement, as in ``@sperse.remote`` (``"gpu & !slow"``, ``"@db-1"``).
    - ``retries``: how often a unit whose worker or server died is tried again.
    - ``timeout``: seconds each unit may run; ``max_memory_mb``: the memory of each
      WebAssembly unit (None: the 4 GiB of wasm32).
    - ``cluster``: a cluster, several (the job spreads over all), or a function that starts
      one (called again for a fresh one if every server is lost); default the current one.
    - ``results``: keep each unit's result for ``Job.as_completed()`` (at most
      ``RESULTS_KEPT`` unread); False for a job nobody iterates (``sperse submit``).

    Returns a running ``Job`` at once. Raises ``JobError`` (an invalid module, with
    wasmtime's reason; a function that cannot be imported; a missing input) or
    ``NoMatchingServer`` before anything runs.
    """
    if (wasm is None) == (python is None):
        raise JobError("give the job one program: wasm=MODULE or python=FUNCTION")
    if retries < 0:
        raise JobError(f"retries must be 0 or more, not {retries}")
    if timeout is not None and timeout <= 0:
        raise JobError(f"timeout must be positive, not {timeout}")
    if max_memory_mb is not None and max_memory_mb <= 0:
        raise JobError(f"max_memory_mb must be positive, not {max_memory_mb}")
    program: Program = WasmProgram(wasm) if wasm is not None else PythonProgram(python)  # type: ignore[arg-type]
    out_dir = os.fspath(output)
    source = _source(input, out_dir)
    placement = placement_from_options(on)
    clusters, factory, owned = _clusters(cluster)
    try:
        slots = [slot for c in clusters for slot in _slots_of(c, placement)]
        if not slots:
            servers = [s for c in clusters for s in c.servers()]
            raise NoMatchingServer(no_match_message(placement, servers, f"the job {program.name}"))
        out = OutputDir(out_dir)
        try:
            out.prepare()
        except OSError as exc:
            raise JobError(f"cannot use the output directory {out_dir!r}: {exc}") from None
        return Job(
            program=program,
            source=source,
            output=out,
            placement=placement,
            clusters=clusters,
            slots=slots,
            factory=factory,
            owned=owned,
            retries=retries,
            timeout=timeout,
            max_memory=None if max_memory_mb is None else int(max_memory_mb * (1 << 20)),
            results=results,
        )
    except BaseException:
        for c in owned:
            c.close()
        raise


def _source(input: str | os.PathLike[str] | Iterable[bytes], out_dir: str) -> Source:
    if not isinstance(input, str | os.PathLike):
        return LinesInput(input)
    path = os.fspath(input)
    if path == "-":
        return LinesInput(sys.stdin.buffer)
    if not os.path.isdir(path):
        what = "a file" if os.path.exists(path) else "not there"
        raise JobError(f"the input {path!r} is {what}: give a directory of inputs, or - for stdin")
    if os.path.realpath(path) == os.path.realpath(out_dir):
        raise JobError(f"the output directory must not be the input directory ({path!r})")
    return DirectoryInput(path, exclude=out_dir)


def _clusters(
    spec: ClusterSpec,
) -> tuple[list[Cluster], Callable[[], Cluster] | None, list[Cluster]]:
    """The clusters to use now, the factory of fresh ones, and those the job owns."""
    if spec is None:
        return [current()], None, []
    if isinstance(spec, Cluster):
        return [spec], None, []
    if callable(spec):
        first = spec()
        return [first], spec, [first]
    clusters = list(spec)
    if not clusters:
        raise JobError("cluster=[] names no cluster to run the job on")
    return clusters, None, []
