"""One replica of one stage of a running flow, hosted on a server as a remote object.

The server executor (:mod:`sperse._flow.servers`) makes one :class:`ReplicaHost` per stage
replica with ``sperse.remote`` (an actor on Ray), placed by the stage's placement. The
host is the shell around a :class:`~sperse._flow.replica.Replica`:

- ``deliver(channel, seq, messages, ack)`` (async) takes a delivery from another host or
  the client; :class:`~sperse._flow.transport.Reorder` puts each channel back in order, and
  the delivery joins the inbox. With ``ack`` the call returns once the delivery has been
  *processed*: that return is the sender's credit (:class:`~sperse._flow.transport.Credits`).
- One task on the object's event loop (the *pump*) takes the inbox in order, runs the
  replica, and sends what it emits through an :class:`~sperse._flow.transport.Outbox`
  straight to the receiving hosts (their proxies, given by ``start``): server to server,
  never through the client. A send waits for the channel's credit, so a slow receiver
  stops this pump, whose inbox then stops taking deliveries: back-pressure up to the
  sources. A source replica reading files (``read_lines``) reads them here, one batch at a
  time, only when its inbox is empty.
- ``watch(wait)`` (async) returns what the replica reported for the controller (in the
  order reported) with the operators' counts, as soon as there are reports, else after
  ``wait`` seconds: the client's long poll, and how it learns that the host is alive.

Everything runs on the object's one event loop: no locks. A failure of a send (the
receiver's server died, an item that cannot be pickled) becomes a ``FlowError`` report
naming the operator and the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from sperse._core import ErrorInfo, ErrorKind
from sperse._exec.runner import encode_error, short_repr
from sperse._flow.awaits import Call
from sperse._flow.calls import CallTasks
from sperse._flow.feed import read_share
from sperse._flow.local import write_atomically
from sperse._flow.mailbox import Mailbox
from sperse._flow.messages import (
    Batch,
    End,
    FlowError,
    LoopWeight,
    Message,
    Report,
    Send,
    Tick,
    WriteFile,
)
from sperse._flow.ops import stable_hash
from sperse._flow.plan import NodeId, PhysicalPlan, Role, StageId
from sperse._flow.replica import Event, Replica
from sperse._flow.reshape import Handover
from sperse._flow.service import Answer, Envelope, Moved, Remember, Reply, Swap
from sperse._flow.transport import (
    BATCH_ITEMS,
    LINGER,
    MAX_BATCH_ITEMS,
    WINDOW,
    Credits,
    Outbox,
    Packed,
    Reorder,
)
from sperse._serialize import dumps, loads
from sperse.errors import (
    ObjectLost,
    SerializationError,
    ServerLost,
    ServerUnavailable,
    WorkerDied,
)

__all__ = ["ReplicaHost", "channel_name", "lost_info", "unpicklable"]

TICK = 0.05  # seconds between clock ticks for time windows
QUIESCE_POLL = 0.002  # seconds between a reshape's checks that a host is idle
DRAIN = 4.0  # seconds a stopping service's respond replica waits for its answers' receipt


def channel_name(stage: int, replica: int) -> str:
    return f"{stage}.{replica}"


class ReplicaHost:
    """Replica ``index`` of stage ``stage`` of the pickled ``plan`` (see the module
    docstring). ``config``: ``window`` (credits), ``batch_items``, ``linger``."""

    def __init__(self, plan: bytes, stage: int, index: int, config: dict[str, Any]) -> None:
        self._plan: PhysicalPlan = loads(plan, what="a flow's plan")
        self._stage = self._plan.stages[stage]
        self._index = index
        self._replica = Replica(self._plan, StageId(stage), index)
        self._me = channel_name(stage, index)
        self._window = int(config.get("window", WINDOW))
        self._outbox = Outbox(
            int(config.get("batch_items", BATCH_ITEMS)),
            float(config.get("linger", LINGER)),
            int(config.get("max_batch_items", MAX_BATCH_ITEMS)),
        )
        self._where = str(config.get("server", ""))
        self._names: dict[int, str] = config.get("names", {})  # stage -> operator names
        self._servers: dict[tuple[int, int], str] = config.get("servers", {})
        self._credits = Credits(self._window)
        self._reorder: Reorder[tuple[list[Event], asyncio.Future[Any] | None]] = Reorder()
        self._inbox: deque[tuple[list[Event], asyncio.Future[Any] | None]] = deque()
        self._peers: dict[tuple[int, int], Any] = {}
        self._uncredited = {
            (o.stage, r)
            for o in self._stage.outputs
            if o.role is Role.FEEDBACK
            for r in range(o.replicas)
        }
        self._reports: list[Report] = []
        # Events bind to the object's loop when first awaited there (not here: __init__
        # runs on a worker thread).
        self._wake = asyncio.Event()
        self._reported = asyncio.Event()
        self._acked = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self._lines: Iterator[list[str]] | None = None
        self._timed = any(
            self._plan.node(n).kind in ("window", "key_window") and self._plan.node(n).args[1]
            for n in self._stage.nodes
        )
        self._stats = {"deliveries": 0, "processed": 0, "sent": 0, "inbox_most": 0}
        self._failed = False
        self._gone: set[tuple[int, int]] = set()  # a service's receivers lost with a server
        self._taken: dict[str, int] = {}  # a requests replica: each client's last delivery
        self._closing = False
        # a service's requests replica: whether its input ended (stop), so later requests
        # are refused; a respond replica: the answers waiting for each client's long poll.
        kinds = [self._plan.node(n).kind for n in self._stage.nodes]
        self._serves = self._plan.logical.is_service() and kinds[0] == "source"
        self._input_ended = False
        self._mailbox = Mailbox()
        self._paused = False  # a reshape: the requests replica takes nothing from its inbox
        self._idle = False  # the pump waits for something to do
        self._calls = CallTasks(self._plan.logical.name, self._inbox, self._wake)
        requests = next((n for n in self._plan.logical.nodes if n.kind == "source"), None)
        self._requests_stage = self._plan.stage_of[requests.id] if requests is not None else 0

    # ---- the remote API ------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Where this host runs: its process and the parent process (the server's, which
        started it through its forkserver)."""
        parent = multiprocessing.parent_process()
        ppid = parent.pid if parent is not None else os.getppid()
        return {"pid": os.getpid(), "ppid": ppid, "server": self._where}

    async def start(
        self, peers: dict[tuple[int, int], Any], lines: str = "", state: Handover | None = None
    ) -> None:
        """Start the pump: ``peers`` are the proxies of every replica this one sends to;
        ``lines``: the file or directory this source replica reads its share of; ``state``:
        what a reshaped service hands this new replica (:mod:`sperse._flow.rehost`)."""
        self._peers = dict(peers)
        threading.Thread(target=_connect, args=(list(peers.values()),), daemon=True).start()
        if state is not None:
            state.give(self._replica)
        if lines:
            self._lines = read_share(Path(lines), self._index, self._stage.replicas)
        self._pump = asyncio.get_running_loop().create_task(self._run())
        self._wake.set()

    async def deliver(
        self, channel: str, seq: int, messages: list[Event] | Packed, ack: bool = True
    ) -> float | None:
        """Take a delivery; with ``ack``, return once it has been processed, with the
        seconds its handling took (for the sender's batch sizes)."""
        if isinstance(messages, Packed):  # a backend that passed it without pickling
            messages = messages.messages
        done: asyncio.Future[float | None] | None = None
        if ack:
            done = asyncio.get_running_loop().create_future()
        self._stats["deliveries"] += 1
        if self._serves and any(isinstance(m, End) for m in messages):
            self._input_ended = True
        ready = self._reorder.put(channel, seq, (messages, done))
        if ready:
            self._inbox.extend(ready)
            self._stats["inbox_most"] = max(self._stats["inbox_most"], len(self._inbox))
            self._wake.set()
        return None if done is None else await done

    async def request(self, channel: str, seq: int, messages: list[Event]) -> list[int]:
        """A client's requests (a service's requests replica): taken like a delivery, and
        returned once processed; the ids of those refused because the service stopped."""
        refused = []
        if self._input_ended:
            refused = [
                env.rid
                for m in messages
                if isinstance(m, Batch)
                for env in m.items
                if isinstance(env, Envelope)
            ]
            messages = []
        await self.deliver(channel, seq, messages, True)
        # Processed: deliveries of a channel are, and their calls resume, in order.
        self._taken[channel] = max(seq, self._taken.get(channel, -1))
        return refused

    async def remember(self, answers: list[Answer]) -> None:
        """First answers of idempotency keys, from a respond replica (a requests replica):
        the retries that wait for them go on (see ``service.Idempotency``)."""
        self._inbox.append(([Remember(answers)], None))
        self._wake.set()

    async def swap(self, operator: str, fn: Any) -> None:
        """Use ``fn`` for ``operator`` from the next batch on, its state kept (a service's
        ``update``); returns once the replica has it."""
        done = asyncio.get_running_loop().create_future()
        self._inbox.append(([Swap(operator, fn)], done))
        self._wake.set()
        await done

    async def take(self, client: str, wait: float, received: Sequence[int] = ()) -> list[Any]:
        """The answers waiting for ``client`` (a respond replica), as soon as there are
        some, else after ``wait`` seconds: a client's long poll. Each is a tuple ``(client,
        rid, value, error)``; once this host answers no more (a reshape), ``[Moved]`` says where
        to take them from. ``received``: the ids of answers taken before (mailbox)."""
        return await self._mailbox.take(client, wait, received)

    # ---- a reshape (sperse._flow.rehost) ------------------------------------------------

    async def pause(self) -> None:
        """Take nothing more from the inbox (the requests replica); returns once what it
        took is sent on and acknowledged."""
        self._paused = True
        self._wake.set()
        await self.quiesce()

    async def quiesce(self) -> None:
        """Return once this host is idle: its inbox empty (or paused), everything it sent
        acknowledged, so processed by its receivers."""
        while not (
            self._idle and (self._paused or not self._inbox) and not self._credits.unacked()
        ):
            await asyncio.sleep(QUIESCE_POLL)

    def export(self) -> Handover:
        """This replica's keyed state, idempotency memory and counts (once quiesced)."""
        return Handover.of([self._replica])

    def taken(self) -> dict[str, int]:
        """The last delivery of each client's channel processed (a requests replica)."""
        return dict(self._taken)

    async def moved_after(self, epoch: int, wait: float) -> tuple[Moved | None, bool]:
        """The reshape after ``epoch``, as soon as there is one (a requests replica: for a
        client whose respond replica was lost), or None after ``wait`` s; and whether
        this host is closing (the service ended: there will be none)."""
        return await self._mailbox.moved_after(epoch, wait), self._closing

    async def retire(self, moved: Moved) -> None:
        """Answer no more: long polls take what is left, then ``moved``. (On the object's
        loop, where the polls wait: from another thread, the event that wakes them would be
        seen only when the loop woke for something else, up to a heartbeat later.)"""
        self._mailbox.retire(moved)

    async def replan(
        self,
        plan: bytes,
        peers: dict[tuple[int, int], Any],
        state: Handover,
        config: dict[str, Any],
        moved: Moved | None,
    ) -> None:
        """Become the requests replica of the reshaped ``plan`` (stage 0, replica 0: this
        host, where the clients send), with ``state``; then take requests again."""
        self._plan = loads(plan, what="a flow's plan")
        self._stage = self._plan.stages[0]
        self._replica = Replica(self._plan, StageId(0), 0)
        state.give(self._replica)
        self._peers = dict(peers)
        self._credits = Credits(self._window)  # all acknowledged: the receivers are new
        self._names = config.get("names", {})
        self._servers = config.get("servers", {})
        self._mailbox.retire(moved)
        self._paused = False
        self._gone = set()
        self._wake.set()

    async def watch(
        self, wait: float
    ) -> tuple[list[Report], dict[str, tuple[int, int]], dict[str, int]]:
        """The reports since the last call (waiting up to ``wait`` s for one), the
        operators' items in and out, and the transport's counters."""
        if not self._reports and not self._closing:
            self._reported.clear()
            try:
                async with asyncio.timeout(wait):
                    await self._reported.wait()
            except TimeoutError:
                pass
        reports, self._reports = _merged(self._reports), []
        return reports, self._replica.tally(), self.stats()

    def stats(self) -> dict[str, int]:
        """Counters: deliveries taken and processed, deliveries sent, the most that were
        un-acknowledged on one channel (``unacked_most``), the longest inbox, and the items
        waiting in the inbox (``backlog``)."""
        return {
            **self._stats,
            "unacked_most": self._credits.most,
            "inbox": len(self._inbox),
            "backlog": _backlog(self._inbox),
        }

    async def finish(self) -> tuple[dict[str, tuple[int, int]], dict[str, int]]:
        """Stop (the run is over): a ``watch`` waiting returns now; the final items in and
        out, and counters."""
        await self._mailbox.drain(DRAIN)  # a service's answers not received: a moment for them
        self._closing = True
        self._reported.set()
        self._mailbox.close()
        if self._pump is not None:
            self._pump.cancel()
        self._calls.cancel()
        return self._replica.tally(), self.stats()

    # ---- the pump ------------------------------------------------------------------------

    async def _run(self) -> None:
        """The pump; a failure of its own (not an operator's: those are reports) ends the run
        naming this replica's operators, never leaving it pending."""
        try:
            await self._pumping()
        except Exception as exc:
            operators = " -> ".join(self._plan.node(n).name for n in self._stage.nodes)
            info = encode_error(exc)
            what = f"stopped: {info.type_name}: {info.message}"
            self._report(Report(FlowError(operators, "", info, what)))

    def _waiting(self) -> bool:
        """Nothing to take now: the inbox is empty, paused, or its head must wait."""
        return not self._inbox or self._paused or not self._replica.takes(self._inbox[0][0])

    async def _pumping(self) -> None:
        while True:
            if self._waiting():
                if self._lines is not None:
                    await self._read()
                    continue
                await self._flush(idle=True)
                if self._waiting():
                    self._wake.clear()
                    self._idle = not self._replica.calls  # an async operator's calls run
                    if self._timed:
                        try:
                            async with asyncio.timeout(TICK):
                                await self._wake.wait()
                        except TimeoutError:
                            await self._handle([Tick(time.time())])
                    else:
                        await self._wake.wait()
                    self._idle = False
                continue
            events, done = self._inbox.popleft()
            started = time.perf_counter()
            await self._handle(events)
            self._stats["processed"] += 1
            if done is not None and not done.done():
                done.set_result(time.perf_counter() - started)  # the sender's BatchSize
            await self._flush(idle=not self._inbox)

    async def _read(self) -> None:
        assert self._lines is not None
        try:
            items = next(self._lines, None)
        except Exception as exc:  # a file that cannot be read ends the run, naming it
            self._lines = None
            source = self._plan.node(self._stage.nodes[0]).name
            self._report(Report(FlowError.unreadable(source, encode_error(exc))))
            return
        events: list[Event] = []
        if items:
            events.append(Batch(0, 0, items, now=time.time()))
        elif items is None:
            self._lines = None
            events.append(End(0, 0))
        await self._handle(events)
        await self._flush(idle=False)

    async def _handle(self, events: list[Event]) -> None:
        now = time.time()
        for event in events:
            for action in self._replica.handle(event):
                if isinstance(action, Send):
                    self._outbox.add((action.stage, action.replica), action.message, now)
                elif isinstance(action, Report):
                    self._report(action)
                elif isinstance(action, WriteFile):
                    write_atomically(Path(action.path), action.text)
                elif isinstance(action, Reply):
                    self._mailbox.put(action.answers)
                    self._remember(action.answers)
                elif isinstance(action, Call):
                    self._calls.start(action)

    def _remember(self, answers: list[Answer]) -> None:
        """First answers of idempotency keys, to the requests replica that keeps the key."""
        keyed = [a for a in answers if a.key is not None]
        if not keyed:
            return
        stage = self._requests_stage
        replicas = self._plan.stages[stage].replicas
        parts: dict[int, list[Answer]] = {}
        for answer in keyed:
            parts.setdefault(stable_hash(answer.key) % replicas, []).append(answer)
        for index, part in parts.items():
            if (stage, index) == (self._stage.id, self._index):
                self._inbox.append(([Remember(part)], None))
                self._wake.set()
                continue
            peer = self._peers.get((stage, index))
            if peer is not None:
                peer.remember(part)

    def _report(self, report: Report) -> None:
        self._reports.append(report)
        self._reported.set()

    async def _flush(self, idle: bool) -> None:
        for dest, messages in self._outbox.due(time.time(), idle):
            await self._send(dest, messages)

    async def _send(self, dest: tuple[int, int], messages: list[Message]) -> None:
        if self._failed or dest in self._gone:
            return
        credited = dest not in self._uncredited
        while credited and self._credits.blocked(dest) and dest not in self._gone:
            self._acked.clear()
            await self._acked.wait()
        if self._failed or dest in self._gone:
            return
        seq = self._credits.send(dest, credited)
        peer = self._peers[dest]
        loop = asyncio.get_running_loop()
        packed = Packed(messages)
        try:
            pending = peer.deliver(self._me, seq, packed, credited)
        except Exception as exc:  # pickling may happen here, or in the Pending
            self._lost(dest, messages, exc)
            return
        self._stats["sent"] += 1
        pending._on_settle(lambda p: loop.call_soon_threadsafe(self._settled, dest, seq, packed, p))

    def _settled(self, dest: tuple[int, int], seq: int, packed: Packed, done: Any) -> None:
        """A delivery was acknowledged (``done``: its settled Pending, with how long the
        receiver took to handle it), or failed."""
        self._credits.ack(dest, seq)
        self._acked.set()
        if done._error is not None:
            self._lost(dest, packed.messages, done._error)
        elif isinstance(done._value, float):
            self._outbox.learn(dest, packed.items(), done._value, packed.size)

    def _lost(self, dest: tuple[int, int], messages: list[Message], error: BaseException) -> None:
        """A delivery failed: the run fails, naming the item or the receiver. In a service,
        a receiver lost with its server is reported, then skipped: the driver replaces it
        (:mod:`sperse._flow.hostloss`), and the requests sent to it are lost."""
        if self._failed or dest in self._gone:
            return
        if isinstance(error, SerializationError):
            self._failed = True
            self._report(Report(unpicklable(self._plan, self._stage.nodes[-1], messages, error)))
            return
        stage, replica = dest
        operator = self._names.get(stage, f"stage {stage}")
        server = self._servers.get(dest, "")
        info = lost_info(error)
        if self._plan.logical.is_service() and info.kind in LOST:
            self._gone.add(dest)
        else:
            self._failed = True
        what = (
            f"could not be reached on server {server!r} (replica {replica}): "
            f"{info.type_name}: {info.message}"
        )
        self._report(Report(FlowError(operator, "", info, what, server)))


LOST = frozenset({"server_lost", "object_lost", "worker_died"})  # what lost_info gives


def _connect(peers: list[Any]) -> None:
    """Open this process's connections to the servers of ``peers`` now, beside the work,
    rather than at the first delivery to each: about 11 ms of CPU and 15-30 ms each, which
    at the end of a source's input would delay its last deliveries. A failure is left to
    the delivery to report."""
    for peer in peers:
        with contextlib.suppress(Exception):
            peer._target()


def lost_info(error: BaseException) -> ErrorInfo:
    """A failure to reach a host as data, of a kind that says whether running again can
    help (``server_lost``, ``object_lost``, ``worker_died``). A server that refuses the
    connection (it was killed, and a peer connects to it anew) is lost too."""
    info = encode_error(error)
    if isinstance(error, ServerLost | ServerUnavailable):
        kind: ErrorKind = "server_lost"
    elif isinstance(error, ObjectLost):
        kind = "object_lost"
    elif isinstance(error, WorkerDied):
        kind = "worker_died"
    else:
        return info
    return ErrorInfo(kind, info.type_name, info.message, info.traceback)


def _merged(reports: list[Report]) -> list[Report]:
    """Consecutive loop weights of one loop as one (the order of everything else kept:
    a gate's creations must reach the controller before its end of input)."""
    out: list[Report] = []
    for report in reports:
        what, last = report.what, out[-1].what if out else None
        if isinstance(what, LoopWeight) and isinstance(last, LoopWeight) and last.loop == what.loop:
            out[-1] = Report(
                LoopWeight(
                    what.loop,
                    last.created + what.created,
                    last.returned + what.returned,
                    last.exceeded + what.exceeded,
                    last.example or what.example,
                )
            )
        else:
            out.append(report)
    return out


def unpicklable(
    plan: PhysicalPlan, node: NodeId, messages: Sequence[object], error: BaseException
) -> FlowError:
    """The failure of ``node`` that emitted an item of ``messages`` that cannot be pickled
    (the first such item named)."""
    culprit: Any = None
    for message in messages:
        if isinstance(message, Batch):
            for item in message.items:
                try:
                    dumps(item)
                except SerializationError:
                    culprit = item
                    break
        if culprit is not None:
            break
    cause = error.__cause__ or error
    what = f"emitted an item that cannot be pickled to send on ({cause})"
    info = ErrorInfo("serialization", "SerializationError", what)
    return FlowError(plan.node(node).name, short_repr(culprit), info, what)


def _backlog(inbox: Iterable[tuple[list[Any], Any]]) -> int:
    """The items waiting in ``inbox``: those of its batches."""
    return sum(
        len(event.items) for events, _ in inbox for event in events if isinstance(event, Batch)
    )
