"""Driver side: the backend's I/O thread, which turns what Ray reports into the workspace's
events (docs/ray.md, "Events, output, and the I/O thread").

Ray has no push callbacks to the driver: the thread waits on the tasks in flight with
``ray.wait`` in a bounded loop (at most ``WAIT_SLICE`` per wait, so that new tasks join
soon; beyond ``WINDOW`` in flight it waits on the oldest, and on all of them every
``SWEEP_EVERY``), long-polls the mailbox in the same wait, and reports each task's events to
the sink. It alone calls the sink. It also carries out cancels (an interrupt no sooner than
``CANCEL_SETTLE`` after the task was sent, then a kill after ``CANCEL_GRACE``).

Invariants: every task ends in exactly one ``Done`` or ``Failed``, also when the thread
stops (closed, or failed: ``_fail_unfinished``); a task's events come in the order
``Started``, ``Output``..., then its end, which waits for the output its summary counts
(at most ``OUTPUT_GRACE``).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Final

from sperse._backends.ray.errors import ray_error
from sperse._backends.ray.held import HeldValues
from sperse._backends.ray.inflight import CANCEL_SETTLE, InFlight, Task
from sperse._backends.ray.objects import ObjectTable
from sperse._backends.ray.placement import NodeView
from sperse._core import Done, ErrorInfo, EventSink, Failed, Output, Started
from sperse._core.callbacks import deliver
from sperse._serialize import loads
from sperse.errors import SerializationError, SperseError

__all__ = ["IOThread"]

log = logging.getLogger("sperse.ray")

WAIT_SLICE: Final = 0.01  # the I/O thread's longest ray.wait: new tasks join the wait after it
FEW_IN_FLIGHT: Final = 8  # up to this many: wake at the first result; beyond: batch ...
BATCH_SLICE: Final = 0.05  # ... of what ends within this
WINDOW: Final = 512  # beyond this many in flight, wait on the oldest (they end first) ...
SWEEP_EVERY: Final = 0.2  # ... and on all of them this often
MAILBOX_POLL: Final = 1.0  # the mailbox's long poll
OUTPUT_GRACE: Final = 5.0  # the longest a result waits for output still in the mailbox


@dataclass(slots=True)
class _Loop:
    """What the I/O thread keeps between turns."""

    active: dict[Any, Task] = field(default_factory=dict)  # summary ObjectRef -> task
    waiting: list[Task] = field(default_factory=list)  # ended, their output on its way
    cancelling: list[Task] = field(default_factory=list)  # killed at kill_at if still running
    poll: Any = None  # the mailbox's long poll in flight
    swept: float = 0.0  # when every active task was last waited on


class IOThread:
    """The I/O thread of one backend: started once, stopped by closing ``inflight``."""

    def __init__(
        self,
        ray: Any,
        sink: EventSink,
        mailbox: Any,
        inflight: InFlight,
        held: HeldValues,
        nodes: NodeView,
        objects: ObjectTable,
    ) -> None:
        self._ray = ray
        self._sink = sink
        self.mailbox = mailbox  # its handle; None once it failed
        self._inflight = inflight
        self._held = held
        self._nodes = nodes
        self._objects = objects
        self._thread = threading.Thread(target=self._run, name="sperse-ray-io", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        loop = _Loop()
        try:
            while self._turn(loop):
                pass
        except Exception as exc:  # a bug here must not leave every task pending forever
            log.exception("the Ray backend's I/O thread failed")
            self._inflight.fail(SperseError(f"the Ray backend's I/O thread failed: {exc!r}"))
        self._fail_unfinished()

    def _turn(self, loop: _Loop) -> bool:
        """One turn of the I/O thread: wait (at most ``WAIT_SLICE``) for tasks to end, and
        report what happened. False once closed. The tasks that ended are locals, dropped on
        return: they hold ObjectRefs that Ray frees once nobody does."""
        turn = self._inflight.next_turn(busy=bool(loop.active or loop.waiting))
        if turn is None:
            return False
        new, immediate, cancelled = turn
        loop.cancelling += cancelled
        for task, event in immediate:
            if isinstance(event, Done):
                self._sink(Started(task.task_id, event.where))
            self._end(task, event)
        loop.active.update((t.summary, t) for t in new)
        if loop.cancelling:
            loop.cancelling = self._kill_stuck(loop.cancelling, loop.active)
        if loop.poll is None and self.mailbox is not None:
            loop.poll = self.mailbox.take.remote(MAILBOX_POLL)
        active, waiting = loop.active, loop.waiting
        if len(active) <= WINDOW:
            refs = list(active)
        elif time.monotonic() - loop.swept >= SWEEP_EVERY:
            refs, loop.swept = list(active), time.monotonic()
        else:  # the oldest: a wait costs time in proportion to the refs it is given
            refs = list(itertools.islice(active, WINDOW))
        if loop.poll is not None:
            refs.append(loop.poll)
        # Few in flight: wake at the first that ends (the next turn takes the others).
        # Many: take all that ended within a longer slice, in one call (a wait costs time in
        # proportion to its refs, and many in flight means nobody waits for one of them).
        few = len(refs) <= FEW_IN_FLIGHT
        slice_ = WAIT_SLICE if few else BATCH_SLICE
        deadlines = [t.wait_until for t in waiting] + [t.kill_at for t in loop.cancelling]
        deadlines += [t.interrupt_at for t in loop.cancelling if t.interrupt_at]
        if deadlines:
            slice_ = max(0.0, min(slice_, min(deadlines) - time.monotonic()))
        wanted = 1 if few else len(refs)
        ready, _ = self._ray.wait(refs, num_returns=wanted, timeout=slice_, fetch_local=False)
        if loop.poll is not None and loop.poll in ready:
            ready.remove(loop.poll)
            items, loop.poll = self._get_one(loop.poll), None
            if isinstance(items, list):
                self._on_mailbox(items, waiting)
            else:  # the mailbox is gone: results no longer wait for output
                log.warning("the Ray backend's mailbox failed: %s", items)
                self.mailbox = None
                for task in list(waiting):
                    self._finish(task, waiting)
        ended = [active.pop(ref) for ref in ready]
        if ended:
            self._on_ended(ended, waiting)
        if waiting:
            now = time.monotonic()
            for task in [t for t in waiting if t.wait_until <= now]:
                self._finish(task, waiting)
        return True

    def _kill_stuck(self, cancelling: list[Task], active: dict[Any, Task]) -> list[Task]:
        """Kill the workers of cancelled tasks past their grace; the rest still wait."""
        now = time.monotonic()
        left = []
        for task in cancelling:
            if task.summary not in active:
                continue  # it ended
            if task.interrupt_at and task.interrupt_at <= now:
                task.interrupt_at = 0.0
                with contextlib.suppress(Exception):  # over meanwhile: nothing to cancel
                    self._ray.cancel(task.summary, force=False, recursive=True)
            if task.kill_at > now:
                left.append(task)
                continue
            with contextlib.suppress(Exception):
                self._ray.cancel(task.summary, force=True, recursive=True)
        return left

    def _get_one(self, ref: Any) -> Any:
        try:
            return self._ray.get(ref)
        except Exception as exc:
            return exc

    def _on_mailbox(self, items: list[Any], waiting: list[Task]) -> None:
        sink = self._sink
        found = zip(self._inflight.find(item[0] for item in items), items, strict=True)
        for task, (_, node_id, kind, stream, text) in found:
            if kind == "callback":  # remote code called back: stream is its id, text the args
                _deliver_callback(stream, text)
            if task is None:
                continue  # over, or cancelled (or a callback from no task of ours)
            task.received += 1
            task_id = task.task_id
            if kind != "callback" and not task.started:
                task.started = True
                task.node = node_id
                sink(Started(task_id, self._nodes.where(node_id)))
            if kind == "output":
                sink(Output(task_id, self._nodes.where(node_id), stream, text))
            if task.ended is not None and task.received >= task.ended[1]:
                self._finish(task, waiting)

    def _on_ended(self, ended: list[Task], waiting: list[Task]) -> None:
        try:
            summaries: list[Any] = self._ray.get([t.summary for t in ended])
        except Exception:
            summaries = [self._get_one(t.summary) for t in ended]
        for task, summary in zip(ended, summaries, strict=True):
            if isinstance(summary, BaseException):
                obj = task.obj
                if obj is not None and isinstance(summary, self._ray.exceptions.RayActorError):
                    self._fail(task, self._objects.object_lost(obj, task.creating, summary))
                else:
                    self._fail(task, ray_error(summary, task.node))
                continue
            task.ended = summary
            if task.received >= summary[1]:
                self._finish(task, None)
            else:  # output is still on its way through the mailbox
                task.wait_until = time.monotonic() + OUTPUT_GRACE
                waiting.append(task)

    def _finish(self, task: Task, waiting: list[Task] | None) -> None:
        """Report a task that ended with a summary: start, last output, then the outcome."""
        if waiting is not None:
            waiting.remove(task)
        sink = self._sink
        assert task.ended is not None
        node_id, _, tail, ok, payload = task.ended
        task.node = node_id
        task_id = task.task_id
        where = self._nodes.where(node_id)
        if not task.started:
            task.started = True
            sink(Started(task_id, where))
        for stream, text in tail:
            sink(Output(task_id, where, stream, text))
        if not ok:
            kind, type_name_, message, traceback = payload
            self._end(task, Failed(task_id, where, ErrorInfo(kind, type_name_, message, traceback)))
            return
        try:
            if task.names is None:
                value = self._held.value(payload[0], task.slots[0], where)
            else:
                slot_of = {name: i for i, name in enumerate(task.names)}
                value = {
                    name: self._held.value(entry, task.slots[slot_of[name]], where)
                    for name, entry in payload
                }
        except SperseError as exc:
            info = ErrorInfo("serialization", type(exc).__name__, str(exc))
            self._end(task, Failed(task_id, where, info))
            return
        self._end(task, Done(task_id, where, value))

    def _fail(self, task: Task, info: ErrorInfo) -> None:
        where = self._nodes.where(task.node) if task.node else ""
        self._end(task, Failed(task.task_id, where, info))

    def _end(self, task: Task, event: Done | Failed) -> None:
        obj = task.obj
        if obj is not None and task.creating:
            if isinstance(event, Done):
                obj.where = event.where
            elif not self._objects.gone_reason(obj.object_id):  # its actor is of no use
                self._objects.forget(
                    obj, f"does not exist: its creation failed: {event.error.message}", True
                )
        self._inflight.end(task.task_id, event)
        self._sink(event)

    def _fail_unfinished(self) -> None:
        """End every task not ended yet (the I/O thread stops): cancel it, report it failed."""
        left = self._inflight.unfinished()
        broken = self._inflight.broken
        if broken is not None:
            info = ErrorInfo("internal", "SperseError", f"{broken}; see the log")
        else:
            message = "the Ray backend was closed before the task ended"
            info = ErrorInfo("server_lost", "ServerLost", message)
        # Leave no work running in a shared cluster: cancel what is left, but nothing sent
        # less than CANCEL_SETTLE ago (see InFlight.cancel): wait until it is that old.
        youngest = max((t.sent_at for t in left if t.summary is not None), default=0.0)
        settle = youngest + CANCEL_SETTLE - time.monotonic()
        if settle > 0:
            time.sleep(min(settle, CANCEL_SETTLE))
        for task in left:
            if task.summary is not None:
                with contextlib.suppress(Exception):
                    self._ray.cancel(task.summary, force=True, recursive=True)
            self._fail(task, info)


def _deliver_callback(callback_id: str, data: bytes) -> None:
    try:
        args, kwargs = loads(data, what="the arguments of a callback")
    except SerializationError as exc:
        log.warning("a callback's arguments could not be read: %s", exc)
        return
    if not deliver(callback_id, args, kwargs):
        log.warning("remote code called back callback %s, which is gone", callback_id)
