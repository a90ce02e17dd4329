"""The in-process executor: every replica of every stage in this process, messages moved
between their state machines through a queue, one at a time.

It is the shell around the pure cores (:class:`~sperse._flow.replica.Replica`,
:class:`~sperse._flow.control.Controller`): it reads the sources (iterables, files, a push
queue) in batches, delivers each message to its replica, carries out the actions (sends,
reports to the controller, files to write) and settles the sinks' Pendings.

**Deterministic.** With ``seed=None`` messages are delivered first in, first out, so a run
gives the same result every time. With a seed, each step delivers the head of a channel
(one sender replica to one receiver replica) picked at random: every interleaving a network
could produce while keeping each channel in order. Results must not depend on it where the
semantics say so (tests run many seeds). Sources are read only when no message is waiting:
a pipeline holds about one batch per stage, the in-process form of back-pressure.

Batches that cross stages are pickled (as the server executor will have to) unless
``check_pickle=False``: an item that cannot be pickled fails the run, naming it and the
operator that emitted it, here as it would on servers.
"""

from __future__ import annotations

import collections
import itertools
import os
import queue
import random
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sperse._core import ErrorInfo
from sperse._exec.runner import encode_error, short_repr
from sperse._flow.awaits import Call, Resumed
from sperse._flow.calls import CallLoop
from sperse._flow.control import ControlAction, Controller
from sperse._flow.messages import (
    Batch,
    Cancel,
    Deliver,
    End,
    FlowError,
    Report,
    Send,
    Settle,
    Stopped,
    Tick,
    WriteFile,
)
from sperse._flow.ops import stable_hash
from sperse._flow.plan import PhysicalPlan, StageId
from sperse._flow.replica import Action, Event, Replica
from sperse._flow.reshape import hand_over
from sperse._flow.service import Answer, Remember, Reply, Swap
from sperse._serialize import dumps
from sperse.errors import SerializationError

__all__ = ["BATCH", "LocalExecutor", "PushQueue"]

BATCH = 1024  # items per batch read from a source
_CLOSED = object()
_WAKE = object()


class PushQueue:
    """The items of ``Flow.queue()``: pushed by any thread, read by the executor."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.closed = False

    def push(self, *items: Any) -> None:
        if self.closed:
            raise ValueError("this flow's queue was closed: nothing more can be pushed")
        for item in items:
            self._queue.put(item)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._queue.put(_CLOSED)

    def wake(self) -> None:
        """End a ``take`` waiting now (or the next one) at once, with what it has."""
        self._queue.put(_WAKE)

    def take(self, limit: int, timeout: float | None) -> tuple[list[Any], bool]:
        """Up to ``limit`` items, waiting up to ``timeout`` for the first; and whether the
        queue has ended."""
        out: list[Any] = []
        try:
            item = self._queue.get(timeout=timeout) if timeout != 0 else self._queue.get_nowait()
            while True:
                if item is _CLOSED:
                    return out, True
                if item is _WAKE:
                    return out, False
                out.append(item)
                if len(out) >= limit:
                    return out, False
                item = self._queue.get_nowait()
        except queue.Empty:
            return out, False


class _Feed:
    """One source node: where its items come from, dealt over its stage's replicas."""

    def __init__(self, name: str, stage: StageId, replicas: int, spec: tuple[Any, ...]) -> None:
        self.name = name
        self.stage = stage
        self.replicas = replicas
        self.kind = spec[0]
        self.push: PushQueue | None = spec[1] if self.kind == "queue" else None
        self.items: Iterator[Any] = iter(())
        if self.kind == "iterable":
            self.items = iter(spec[1])
        elif self.kind == "lines":
            self.items = _lines(Path(spec[1]))
        self.turn = 0
        self.ended = False

    def next(self, batch: int, wait: float | None) -> tuple[int, list[Any], bool]:
        """(replica, items, ended)."""
        replica = self.turn
        self.turn = (self.turn + 1) % self.replicas
        if self.push is not None:
            items, ended = self.push.take(batch, wait)
            return replica, items, ended
        items = list(itertools.islice(self.items, batch))
        return replica, items, len(items) < batch


def _lines(path: Path) -> Iterator[str]:
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    for file in files:
        with file.open(encoding="utf-8") as f:
            for line in f:
                yield line.rstrip("\n")


class LocalExecutor:
    """Runs ``plan`` in this process (see the module docstring). ``settle`` is called with
    each sink's outcome (on the thread that calls ``run``)."""

    def __init__(
        self,
        plan: PhysicalPlan,
        settle: Callable[[Settle], None],
        *,
        batch: int = BATCH,
        seed: int | None = None,
        check_pickle: bool = True,
        clock: Callable[[], float] = time.monotonic,
        tick: float = 0.05,
        answer: Callable[[list[Answer]], None] | None = None,
    ) -> None:
        self.plan = plan
        self._answer = answer
        self._settle = settle
        self._batch = batch
        self._random = random.Random(seed) if seed is not None else None
        self._check_pickle = check_pickle
        self._clock = clock
        self._tick = tick
        self.replicas = {
            (s.id, r): Replica(plan, s.id, r) for s in plan.stages for r in range(s.replicas)
        }
        self.controller = Controller(plan)
        self._fifo: collections.deque[tuple[StageId, int, Event]] = collections.deque()
        self._channels: dict[tuple[Any, ...], collections.deque[tuple[StageId, int, Event]]] = {}
        self._feeds = [
            _Feed(n.name, plan.stage_of[n.id], plan.stages[plan.stage_of[n.id]].replicas, n.args)
            for n in plan.logical.nodes
            if n.kind == "source"
        ]
        self._cancel = threading.Event()
        self._lock = threading.Lock()  # around the replicas' counters, for progress()
        self._waiting: dict[StageId, int] = collections.Counter()  # items queued per stage
        self._swaps: queue.SimpleQueue[tuple[Swap, threading.Event]] = queue.SimpleQueue()
        self._reshapes: queue.SimpleQueue[tuple[PhysicalPlan, threading.Event]] = (
            queue.SimpleQueue()
        )
        self._reshaping: tuple[PhysicalPlan, threading.Event] | None = None
        self._calls: CallLoop | None = None  # async operators' calls, on a loop thread
        self._resumed: queue.SimpleQueue[tuple[StageId, int, Resumed]] = queue.SimpleQueue()
        self._in_flight = 0  # calls started and not taken back as Resumed

    # ---- the loop ------------------------------------------------------------------------

    def run(self) -> Stopped:
        """Run to the end (or a failure, or ``cancel``); returns how it stopped."""
        try:
            self._running()
        finally:
            if self._calls is not None:
                self._calls.close()
        stopped = self.controller.stopped
        assert stopped is not None
        return stopped

    def _running(self) -> None:
        while self.controller.stopped is None:
            self._swap()
            if self._cancel.is_set():
                self._control(self.controller.handle(Cancel()))
                break
            if self._reshaping is None and not self._reshapes.empty():
                self._reshaping = self._reshapes.get()  # read no source until it is applied
            self._take_resumed(0)
            if self._step():
                continue
            if self._reshaping is not None:
                if self._in_flight:  # a reshape waits for the calls in flight
                    self._take_resumed(self._tick)
                else:
                    self._reshape(*self._reshaping)
                continue
            if self._in_flight and any(r.full for r in self.replicas.values()):
                self._take_resumed(self._tick)  # back-pressure: no source read for now
                continue
            if not self._feed():
                if self._in_flight:
                    self._take_resumed(self._tick)
                    continue
                what = "the flow stalled: nothing to deliver and no source left to read"
                info = ErrorInfo("internal", "FlowFailed", what)
                self._control(self.controller.handle(Report(FlowError("", "", info, what))))

    def _start_call(self, stage: StageId, index: int, call: Call) -> None:
        if self._calls is None:
            self._calls = CallLoop(self.plan.logical.name, self._call_ended)
        self._in_flight += 1
        self._calls.start((stage, index), call)

    def _call_ended(self, key: tuple[StageId, int], resumed: Resumed) -> None:
        """A call ended (on the calls' loop thread): to its replica, waking a source's wait."""
        self._resumed.put((*key, resumed))
        for feed in self._feeds:
            if feed.push is not None:
                feed.push.wake()

    def _take_resumed(self, wait: float) -> None:
        """Queue the calls that ended for their replicas, waiting up to ``wait`` s for one."""
        try:
            got = self._resumed.get(timeout=wait) if wait else self._resumed.get_nowait()
            while True:
                self._in_flight -= 1
                self._queue(("calls",), *got)
                got = self._resumed.get_nowait()
        except queue.Empty:
            return

    def swap(self, event: Swap) -> threading.Event:
        """Swap an operator's function between two steps (any thread): the event is set
        once every replica has it (``Service.update``)."""
        done = threading.Event()
        self._swaps.put((event, done))
        return done

    def _swap(self) -> None:
        while not self._swaps.empty():
            event, done = self._swaps.get()
            with self._lock:
                for replica in self.replicas.values():
                    replica.handle(event)
            done.set()

    def reshape(self, plan: PhysicalPlan) -> threading.Event:
        """Run ``plan`` from now on (any thread; a service's ``scale``/``move``): no source
        is read until every message in flight was delivered, then the replicas are rebuilt
        for ``plan`` with their state handed over (:mod:`sperse._flow.reshape`) and the run
        goes on. The event is set once it has. Only for a service's plan: its controller
        holds nothing until the end, so it starts again for the new plan."""
        done = threading.Event()
        self._reshapes.put((plan, done))
        return done

    def _reshape(self, plan: PhysicalPlan, done: threading.Event) -> None:
        with self._lock:
            self.replicas = hand_over(self.replicas, plan)
            self.plan = plan
            self.controller = Controller(plan)
            self._waiting.clear()
            for feed in self._feeds:
                node = next(n for n in plan.logical.nodes if n.name == feed.name)
                feed.stage = plan.stage_of[node.id]
                feed.replicas = plan.stages[feed.stage].replicas
                feed.turn %= feed.replicas
        self._reshaping = None
        done.set()

    def cancel(self) -> None:
        """Stop at the next step (any thread); the sinks not settled yet are cancelled."""
        self._cancel.set()

    def counts(self) -> dict[str, int]:
        """Items taken in so far, per operator (summed over replicas); any thread."""
        out: dict[str, int] = {}
        with self._lock:
            for replica in self.replicas.values():
                for name, n in replica.counts().items():
                    out[name] = out.get(name, 0) + n
        return out

    def tally(self) -> dict[str, tuple[int, int, int]]:
        """Items in, out and waiting (queued for the operator's stage, shown on its first
        operator) so far, per operator; any thread."""
        out: dict[str, tuple[int, int, int]] = {}
        with self._lock:
            for replica in self.replicas.values():
                for name, (n_in, n_out) in replica.tally().items():
                    was = out.get(name, (0, 0, 0))
                    out[name] = (was[0] + n_in, was[1] + n_out, 0)
            for stage, waiting in self._waiting.items():
                head = self.plan.node(self.plan.stages[stage].nodes[0]).name
                was = out.get(head, (0, 0, 0))
                out[head] = (was[0], was[1], was[2] + waiting)
        return out

    def _step(self) -> bool:
        """Deliver one message; False if none is waiting."""
        if self._random is None:
            if not self._fifo:
                return False
            stage, index, event = self._fifo.popleft()
        else:
            if not self._channels:
                return False
            key = self._random.choice(list(self._channels))
            channel = self._channels[key]
            stage, index, event = channel.popleft()
            if not channel:
                del self._channels[key]
        with self._lock:
            if isinstance(event, Batch):
                self._waiting[stage] -= len(event.items)
            actions = self.replicas[(stage, index)].handle(event)
        self._apply(stage, index, actions)
        return True

    def _feed(self) -> bool:
        """Read one batch from a source that has not ended; False if all have."""
        live = [f for f in self._feeds if not f.ended]
        if not live:
            return False
        # Sources that never block first; a push queue is waited on only when nothing else
        # can move (with a timeout, to tick time windows and notice a cancel).
        ready = [f for f in live if f.push is None] or live
        feed = ready[0]
        wait = None if feed.push is None else self._tick
        try:
            replica, items, ended = feed.next(self._batch, wait)
        except Exception as exc:  # the source's own failure ends the run, naming it
            feed.ended = True
            failure = FlowError.unreadable(feed.name, encode_error(exc))
            self._control(self.controller.handle(Report(failure)))
            return True
        now = self._clock()
        if items:
            self._queue(("src", feed.stage), feed.stage, replica, Batch(0, 0, items, now=now))
        if ended:
            feed.ended = True
            for r in range(feed.replicas):
                self._queue(("src", feed.stage), feed.stage, r, End(0, 0))
        elif not items and feed.push is not None:
            for stage, index in self.replicas:
                self._queue(("tick",), stage, index, Tick(now))
        return True

    # ---- actions -------------------------------------------------------------------------

    def _apply(self, stage: StageId, index: int, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                message = action.message
                if self._check_pickle and isinstance(message, Batch):
                    failure = self._unpicklable(stage, message.items)
                    if failure is not None:
                        self._control(self.controller.handle(Report(failure)))
                        return
                key = (stage, index, action.stage, action.replica)
                self._queue(key, action.stage, action.replica, message)
            elif isinstance(action, Report):
                self._control(self.controller.handle(action))
            elif isinstance(action, WriteFile):
                write_atomically(Path(action.path), action.text)
            elif isinstance(action, Reply):
                if self._answer is not None:
                    self._answer(action.answers)
                self._remember(action.answers)
            elif isinstance(action, Call):
                self._start_call(stage, index, action)

    def _remember(self, answers: list[Answer]) -> None:
        """First answers of idempotency keys, to the requests replica that keeps each key."""
        keyed = [a for a in answers if a.key is not None]
        if not keyed:
            return
        source = self.plan.stages[self._feeds[0].stage]
        parts: dict[int, list[Answer]] = {}
        for answer in keyed:
            parts.setdefault(stable_hash(answer.key) % source.replicas, []).append(answer)
        for index, part in parts.items():
            self._queue(("remember",), source.id, index, Remember(part))

    def _control(self, actions: list[ControlAction]) -> None:
        for action in actions:
            if isinstance(action, Deliver):
                self._queue(("ctl",), action.stage, action.replica, action.event)
            elif isinstance(action, Settle):
                self._settle(action)

    def _queue(self, key: tuple[Any, ...], stage: StageId, index: int, event: Event) -> None:
        if isinstance(event, Batch):
            with self._lock:
                self._waiting[stage] += len(event.items)
        if self._random is None:
            self._fifo.append((stage, index, event))
            return
        channel_key = (*key, stage, index)
        channel = self._channels.get(channel_key)
        if channel is None:
            channel = self._channels[channel_key] = collections.deque()
        channel.append((stage, index, event))

    def _unpicklable(self, stage: StageId, items: list[Any]) -> FlowError | None:
        try:
            dumps(items, what="a batch")
            return None
        except SerializationError as exc:
            culprit: Any = None
            for item in items:
                try:
                    dumps(item)
                except SerializationError:
                    culprit = item
                    break
            node = self.plan.node(self.plan.stages[stage].nodes[-1])
            cause = exc.__cause__ or exc
            what = f"emitted an item that cannot be pickled to send on ({cause})"
            info = ErrorInfo("serialization", "SerializationError", what)
            return FlowError(node.name, short_repr(culprit), info, what)


def write_atomically(path: Path, text: str) -> None:
    """``text`` into ``path``: a temporary file in the same directory, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
