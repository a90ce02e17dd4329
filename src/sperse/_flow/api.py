"""The public API of flows: ``sperse.Flow``, its streams, and a run.

A :class:`Flow` is built by calling operators on streams; nothing runs until ``run()``.
Each call adds one node to the flow's logical plan (:mod:`sperse._flow.plan`); ``collect``
returns a :class:`~sperse.Pending` settled when the run ends. ``run`` makes the physical
plan (chaining) and hands it to an :class:`Executor`: in this version always the in-process
one (:mod:`sperse._flow.local`) on a thread of its own when the cluster has no servers of
its own (none at all, the memory and local backends), else the server executor
(:mod:`sperse._flow.servers`), which runs the same replica state machines on servers and
only adds the transport. ``run(executor=...)`` chooses.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self, runtime_checkable

from sperse._cluster import flowfeed
from sperse._cluster.cluster import Cluster, default, detached, in_use
from sperse._cluster.pending import Pending
from sperse._core import LocalOnly
from sperse._exec.runner import encode_error
from sperse._flow.control import RoundDone
from sperse._flow.dashboard import flow_snapshot
from sperse._flow.local import LocalExecutor, PushQueue
from sperse._flow.messages import FlowError, Settle, Stopped
from sperse._flow.plan import LogicalPlan, NodeId, PhysicalPlan, physical
from sperse._flow.servers import OnServers
from sperse._flow.service import Answer, Swap
from sperse._flow.stream import KeyedStream, Stream
from sperse._lang.placement import Placement
from sperse.errors import TaskCancelled

if TYPE_CHECKING:
    from sperse._flow.serving import Service

__all__ = [
    "Executor",
    "Flow",
    "FlowProgress",
    "InProcess",
    "KeyedStream",
    "OnServers",
    "OperatorStats",
    "QueueStream",
    "Run",
    "Stream",
    "runs",
]


@dataclass(frozen=True, slots=True)
class FlowProgress:
    """A run as it stands: ``state`` (``"running"``, ``"done"``, ``"failed"``,
    ``"cancelled"``), ``items`` taken in per operator (summed over replicas), and the rounds
    bulk loops have finished with their deltas."""

    state: str
    items: dict[str, int]
    rounds: tuple[RoundDone, ...]


@dataclass(frozen=True, slots=True)
class OperatorStats:
    """One operator of a run, summed over its replicas: items taken in and sent on
    (``items_out``: what the next operator took in, or what the stage sent), items waiting
    for its stage (``backlog``: queued or in its hosts' inboxes, shown on the stage's first
    operator), ``rate``: items in per second, over the last seconds while it runs, over
    the whole run once it ended, and ``in_flight``: the items an async operator holds (its
    calls running, or waiting for a slot or for their turn to go on; 0 for the others)."""

    name: str
    replicas: int
    items_in: int
    items_out: int
    backlog: int
    rate: float
    in_flight: int = 0


class RunHandle(Protocol):
    """A running flow as an executor shows it."""

    def wait(self, timeout: float | None) -> Stopped | None: ...

    def cancel(self) -> None: ...

    def counts(self) -> dict[str, int]: ...

    def tally(self) -> dict[str, tuple[int, int, int]]:
        """Items in, out and waiting, per operator."""
        ...

    def rounds(self) -> list[RoundDone]: ...

    def hosts(self) -> list[dict[str, Any]]: ...


class Executor(Protocol):
    """Where a flow runs: in this process, or on servers. ``settle`` is called once per
    sink, from any thread; ``done`` once at the end; ``answer`` with a service's answers
    when its executor hands them over here (in this process; on servers the clients fetch
    them from the respond replicas)."""

    def start(
        self,
        plan: PhysicalPlan,
        settle: Callable[[Settle], None],
        done: Callable[[Stopped], None],
        answer: Callable[[list[Answer]], None] | None = None,
    ) -> RunHandle: ...


class InProcess:
    """The :class:`Executor` that runs every replica in this process on one thread."""

    def __init__(
        self, *, seed: int | None = None, batch: int = 1024, check_pickle: bool = True
    ) -> None:
        self.seed = seed
        self.batch = batch
        self.check_pickle = check_pickle

    def start(
        self,
        plan: PhysicalPlan,
        settle: Callable[[Settle], None],
        done: Callable[[Stopped], None],
        answer: Callable[[list[Answer]], None] | None = None,
    ) -> RunHandle:
        executor = LocalExecutor(
            plan,
            settle,
            seed=self.seed,
            batch=self.batch,
            check_pickle=self.check_pickle,
            answer=answer,
        )
        return _Thread(executor, done, plan.logical.name)


@runtime_checkable
class PlacesReplicas(Protocol):
    """An executor that knows how many servers match a placement (``"per_server"``)."""

    def per_server(self, placement: Placement) -> int: ...


class _Thread:
    def __init__(self, executor: LocalExecutor, done: Callable[[Stopped], None], name: str) -> None:
        self._executor = executor
        self._stopped: Stopped | None = None
        self._finished = threading.Event()
        self._done = done
        self._thread = threading.Thread(target=self._run, name=f"sperse-flow-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._stopped = self._executor.run()
        except Exception as exc:  # the executor's own failure: the run ends, never pending
            info = encode_error(exc)
            what = f"stopped: {info.type_name}: {info.message}"
            self._stopped = Stopped(FlowError("", "", info, what))
        finally:
            self._finished.set()
            if self._stopped is not None:
                self._done(self._stopped)

    def wait(self, timeout: float | None) -> Stopped | None:
        self._finished.wait(timeout)
        return self._stopped

    def cancel(self) -> None:
        self._executor.cancel()

    def swap(self, event: Swap, timeout: float | None) -> bool:
        """Give every replica of an operator a new function (a service's ``update``)."""
        return self._executor.swap(event).wait(timeout)

    def reshape(self, logical: LogicalPlan, timeout: float | None) -> PhysicalPlan | None:
        """Run ``logical`` from now on, its state handed over (a service's ``scale`` and
        ``move``); the new physical plan once applied, None if not within ``timeout``."""
        plan = physical(logical, 1)
        applied = self._executor.reshape(plan)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not applied.is_set() and not self._finished.is_set():  # or the run ends
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            applied.wait(min(0.1, left) if left is not None else 0.1)
        return plan if applied.is_set() else None

    def counts(self) -> dict[str, int]:
        return self._executor.counts()

    def tally(self) -> dict[str, tuple[int, int, int]]:
        return self._executor.tally()

    def rounds(self) -> list[RoundDone]:
        return list(self._executor.controller.rounds)

    def hosts(self) -> list[dict[str, Any]]:
        return []


class Flow:
    """A dataflow: sources, operators and sinks, run by ``run()``.

    ``cluster``: where it runs and whose Pendings ``collect`` returns; None: the cluster in
    use (``with cluster:``, else the one ``connect`` made), or none at all. A cluster with
    servers runs the flow on them; without (none, the memory and local backends) it runs in
    this process."""

    def __init__(self, name: str = "flow", cluster: Cluster | None = None) -> None:
        self.name = name
        self.cluster = cluster if cluster is not None else (in_use() or default() or detached())
        self.plan = LogicalPlan(name)
        self._sinks: dict[NodeId, Pending[Any]] = {}
        self._run: Run | None = None

    # ---- sources -------------------------------------------------------------------------

    def source(self, items: Iterable[Any], *, name: str | None = None) -> Stream:
        """A stream of the items of ``items`` (read once, in batches, when the flow runs)."""
        return self._source(("iterable", items), name)

    def read_lines(self, path: str | Path, *, name: str | None = None) -> Stream:
        """The lines of a file (without their newline), or of every file of a directory in
        name order; with replicas, the files are shared out among them."""
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"read_lines: no file or directory {str(p)!r}")
        return self._source(("lines", str(p)), name)

    def requests(self, *, name: str | None = None) -> Stream:
        """The requests of this flow's service (``serve``): each item is the value a client
        passed to ``Service.request``; end it in ``respond()``, which answers each."""
        self._building()
        node = self.plan.add("source", name or "requests", ("queue", PushQueue(), "requests"))
        return Stream(self, node)

    def serve(self, name: str, *, executor: Executor | None = None, retries: int = 0) -> Service:
        """Start this flow as the service ``name`` (see docs/flows.md, Services): a
        :class:`~sperse.Service` whose ``request(x)`` returns a Pending of the answer;
        ``sperse.service(name)`` finds it from any client of the cluster. ``retries``: how
        many times its requests are sent again by default when lost with a server on their
        way through operators that keep no state (``request(x, retries=...)``)."""
        from sperse._flow import hotswap  # noqa: F401 - it takes redefinitions at the prompt
        from sperse._flow.serving import start_service

        self._building()
        if not self.plan.is_service():
            raise ValueError(
                f"flow {self.name!r} is not a service: read f.requests() and end in "
                "respond() to serve it (or run() it)"
            )
        if executor is None:
            executor = self._default_executor(0)
        count = executor.per_server if isinstance(executor, PlacesReplicas) else 1
        plan = physical(self.plan, count)

        def start(answer: Callable[[list[Answer]], None]) -> Run:
            self._run = Run(self, plan, executor, answer)
            return self._run

        respond = next(n.id for n in self.plan.nodes if n.kind == "respond")
        svc = start_service(name, self.name, self.cluster, plan, start, self._sinks[respond])
        svc.retries = retries
        return svc

    def queue(self, *, name: str | None = None) -> QueueStream:
        """A stream of what is pushed into it (``push(*items)``, any thread) until
        ``close()``."""
        push = PushQueue()
        node = self.plan.add("source", name, ("queue", push))
        return QueueStream(self, node, push)

    def _source(self, spec: tuple[Any, ...], name: str | None) -> Stream:
        self._building()
        return Stream(self, self.plan.add("source", name, spec))

    # ---- running -------------------------------------------------------------------------

    def explain(self, servers: int = 1) -> str:
        """The physical plan: one line per stage (chained operators), its replicas and
        where its output goes."""
        return physical(self.plan, servers).describe()

    def run(
        self, *, executor: Executor | None = None, servers: int = 1, restart: int | bool = 0
    ) -> Run:
        """Start the flow (once); its sinks' Pendings settle when it ends.

        ``executor``: where it runs (default: on the cluster's servers if it has some, else
        in this process). ``servers``: what ``replicas="per_server"`` means in this process.
        ``restart``: on servers, how many times a run that lost a server starts again from
        its sources (``True``: 3)."""
        self._building()
        if self.plan.is_service():
            raise ValueError(
                f"flow {self.name!r} is a service (it reads requests()): start it with "
                "f.serve(name), not run()"
            )
        if executor is None:
            executor = self._default_executor(restart)
        elif isinstance(executor, OnServers) and restart:
            executor.restart = _attempts(restart)
        count = executor.per_server if isinstance(executor, PlacesReplicas) else servers
        plan = physical(self.plan, count)
        self._run = Run(self, plan, executor)
        return self._run

    def _default_executor(self, restart: int | bool) -> Executor:
        attempts = _attempts(restart)
        backend = self.cluster.backend
        if isinstance(backend, LocalOnly) or not self.cluster.servers():
            return InProcess()
        return OnServers(self.cluster, restart=attempts)

    @property
    def started(self) -> Run | None:
        """The run of this flow once ``run()`` (or the end of its ``with`` block) started
        it; None before."""
        return self._run

    def __enter__(self) -> Self:
        """``with sperse.Flow(...) as f:`` builds the flow in the block and runs it at the
        end of the block (unless the block ran it, or raised): at the prompt, one statement
        that builds and runs a flow, so redefining a function it uses runs it again."""
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if kind is None and self._run is None:
            self.run()

    def _pending(self, node: NodeId, label: str) -> Pending[Any]:
        pending: Pending[Any] = Pending(self.cluster, label=f"{self.name}.{label}")
        self._sinks[node] = pending
        pending._on_settle(self._sink_settled)
        return pending

    def _sink_settled(self, pending: Pending[Any]) -> None:
        """A sink's Pending cancelled from outside (``p.cancel()``; the workspace does so
        when the statement that made it runs again) cancels the run (any thread)."""
        run = self._run
        if run is not None and isinstance(pending._error, TaskCancelled) and not run.done():
            run.cancel()

    def _building(self) -> None:
        if self._run is not None:
            raise ValueError(
                f"flow {self.name!r} has been run already: a flow runs once; build a new "
                "Flow to run again"
            )

    def __repr__(self) -> str:
        return f"<Flow {self.name!r}: {len(self.plan.nodes)} operators>"


def _attempts(restart: int | bool) -> int:
    return (3 if restart else 0) if isinstance(restart, bool) else int(restart)


class QueueStream(Stream):
    """The stream of ``Flow.queue()``: push items into it while the flow runs."""

    def __init__(self, flow: Flow, node: NodeId, push: PushQueue) -> None:
        super().__init__(flow, node)
        self._push = push

    def push(self, *items: Any) -> None:
        self._push.push(*items)

    def close(self) -> None:
        """No more items: the stream ends."""
        self._push.close()


class Run:
    """A started flow: ``result()`` waits for its end, ``cancel()`` stops it, ``progress()``
    tells how far it is."""

    def __init__(
        self,
        flow: Flow,
        plan: PhysicalPlan,
        executor: Executor,
        answer: Callable[[list[Answer]], None] | None = None,
    ) -> None:
        self.flow = flow
        self.plan = plan
        self._stopped: Stopped | None = None
        self.started_at = time.monotonic()
        self.ended_at: float | None = None
        self._samples: deque[tuple[float, dict[str, int]]] = deque()  # for rates
        self._samples_lock = threading.Lock()
        if answer is None:
            self._handle = executor.start(plan, self._settle, self._done)
        else:
            self._handle = executor.start(plan, self._settle, self._done, answer)
        _RUNS.add(self)

    def _settle(self, settle: Settle) -> None:
        pending = self.flow._sinks.get(settle.node)
        if pending is None:
            return
        if settle.cancelled:
            pending._settle(error=TaskCancelled(f"flow {self.flow.name!r} was cancelled"))
        elif settle.error is not None:
            pending._settle(error=settle.error.to_exception(self.flow.name))
        else:
            pending._settle(settle.value)

    def _done(self, stopped: Stopped) -> None:
        self.ended_at = time.monotonic()
        self._stopped = stopped
        # Every sink has settled by now, unless the executor itself failed: they end with it.
        error: BaseException | None = None
        if stopped.cancelled:
            error = TaskCancelled(f"flow {self.flow.name!r} was cancelled")
        elif stopped.error is not None:
            error = stopped.error.to_exception(self.flow.name)
        if error is not None:
            for pending in self.flow._sinks.values():
                if not pending.done():
                    pending._settle(error=error)
        self.flow.cluster.wake()

    def done(self) -> bool:
        return self._stopped is not None

    def result(self, timeout: float | None = None) -> FlowProgress:
        """Wait for the end; the final progress, or raise what failed it (``FlowFailed``,
        ``TaskCancelled``)."""
        if not self.flow.cluster.run_until(self.done, timeout):
            raise TimeoutError(f"flow {self.flow.name!r} did not end within {timeout} s")
        stopped = self._stopped
        assert stopped is not None
        if stopped.cancelled:
            raise TaskCancelled(f"flow {self.flow.name!r} was cancelled")
        if stopped.error is not None:
            raise stopped.error.to_exception(self.flow.name)
        return self.progress()

    def error(self) -> BaseException | None:
        """What failed the run (``FlowFailed``: the operator, the item, the traceback); None
        while it runs, and when it ended well or was cancelled."""
        stopped = self._stopped
        if stopped is None or stopped.cancelled or stopped.error is None:
            return None
        return stopped.error.to_exception(self.flow.name)

    def cancel(self) -> bool:
        """Stop the run; False if it had ended."""
        if self.done():
            return False
        self._handle.cancel()
        return True

    def progress(self) -> FlowProgress:
        stopped = self._stopped
        if stopped is None:
            state = "running"
        elif stopped.cancelled:
            state = "cancelled"
        else:
            state = "failed" if stopped.error is not None else "done"
        return FlowProgress(state, self._handle.counts(), tuple(self._handle.rounds()))

    def hosts(self) -> list[dict[str, Any]]:
        """Where each stage replica runs (on servers: ``server``, ``pid``, ``ppid``) and its
        transport's counters; empty in this process."""
        return self._handle.hosts()

    def operators(self) -> list[OperatorStats]:
        """Every operator as it stands (in the order they were added): replicas, items in
        and out, backlog and rate (see :class:`OperatorStats`)."""
        tally = self._handle.tally()
        now = time.monotonic()
        ended = self.ended_at
        counts = {name: n_in for name, (n_in, _, _) in tally.items()}
        then: tuple[float, dict[str, int]] = (self.started_at, {})
        if ended is None:
            with self._samples_lock:
                samples = self._samples
                while samples and now - samples[0][0] > RATE_WINDOW:
                    samples.popleft()
                for sample in samples:  # the oldest within the window, at least 1 s old
                    if now - sample[0] >= 1.0:
                        then = sample
                        break
                if not samples or now - samples[-1][0] >= 0.5:
                    samples.append((now, counts))
        seconds = max((ended if ended is not None else now) - then[0], 1e-9)
        plan = self.plan
        out = []
        for node in plan.logical.nodes:
            n_in, n_out, backlog = tally.get(node.name, (0, 0, 0))
            rate = (n_in - then[1].get(node.name, 0)) / seconds
            replicas = plan.stages[plan.stage_of[node.id]].replicas
            # an async operator's items in and not yet out are its calls' (hosts' counts
            # are sampled at different times: never below 0)
            held = max(0, n_in - n_out) if node.kind == "map_async" else 0
            out.append(OperatorStats(node.name, replicas, n_in, n_out, backlog, rate, held))
        return out

    def __repr__(self) -> str:
        return f"<Run of flow {self.flow.name!r}: {self.progress().state}>"


RATE_WINDOW = 10.0  # seconds of samples kept for an operator's recent rate
_RUNS: weakref.WeakSet[Run] = weakref.WeakSet()


def runs() -> list[Run]:
    """The runs of this process that are still referenced (a running one always is: its
    executor holds it), oldest first: what ``%flows`` shows."""
    return sorted(list(_RUNS), key=lambda run: run.started_at)


flowfeed.register(runs, flow_snapshot)  # for a client's dashboard (its Flows page)
