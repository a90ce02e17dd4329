"""The pool's policy as a pure state machine: no processes, no clock, no loop.

Tables of event sequences with the actions each step must return, then Hypothesis runs of
random sequences against a simulated shell that checks the invariants after every step.
Worker ``n`` (its :class:`WorkerId`) runs as pid ``100 + n``; a task's payload is its id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sperse._core.events import Done, ErrorInfo, ErrorKind, Failed, Output, Started
from sperse._pool.events import (
    Action,
    Cancel,
    Close,
    Event,
    Exited,
    Hangup,
    InitFailed,
    Interrupt,
    Interrupted,
    Kill,
    Log,
    Malformed,
    Open,
    Printed,
    Ready,
    Result,
    RunnerRaised,
    Send,
    SendCancel,
    SetTimer,
    Spawned,
    SpawnFailed,
    StartWorker,
    Stopped,
    Submit,
    Tick,
    WorkerExited,
    WorkerId,
    WriteFailed,
)
from sperse._pool.policy import (
    PIPELINE_TASK_MAX,
    PolicyConfig,
    PoolPolicy,
    describe_exit,
)

W1, W2, W3 = WorkerId(1), WorkerId(2), WorkerId(3)
HUGE = 2**32 - 1
POOL = "p"  # the policy's name: ``where`` of its events

# The pool's reasons of a failure, as the (kind, type_name) of the error it reports: those a
# server made of them before the pool reported errors (users' messages depend on them).
REASONS: dict[str, tuple[ErrorKind, str]] = {
    "worker_died": ("worker_died", "WorkerDied"),
    "cancelled": ("cancelled", "TaskCancelled"),
    "runner_error": ("internal", "RunnerError"),
}


def pid(worker: WorkerId) -> int:
    return 100 + worker


def task_done(task_id: str, result: bytes) -> Done:
    return Done(task_id, POOL, result)


def task_output(task_id: str, stream: Literal["stdout", "stderr"], text: str) -> Output:
    return Output(task_id, POOL, stream, text)


def task_failed(task_id: str, reason: str, message: str, traceback: str = "") -> Failed:
    kind, type_name = REASONS[reason]
    return Failed(task_id, POOL, ErrorInfo(kind, type_name, message, traceback))


def spawn_all(policy: PoolPolicy, actions: list[Action], now: float = 0.0) -> list[Action]:
    """Carry out StartWorker as a shell would; returns the other actions."""
    rest: list[Action] = []
    for action in actions:
        if isinstance(action, StartWorker):
            rest += spawn_all(
                policy, policy.handle(Spawned(action.worker, pid(action.worker)), now)
            )
        else:
            rest.append(action)
    return rest


def make(size: int = 1, *, ready: bool = True, **config: Any) -> PoolPolicy:
    """A policy whose ``size`` workers have started (and said READY)."""
    policy = PoolPolicy(PolicyConfig(name=POOL, runner="m:f", size=size, **config))
    spawn_all(policy, policy.handle(Open(), 0.0))
    if ready:
        for n in range(1, size + 1):
            policy.handle(Ready(WorkerId(n)), 0.0)
        assert policy.handle(Tick(), 0.0) == []  # no deadline left
    return policy


def submit(task_id: str, *, front: bool = False) -> Submit:
    return Submit(task_id, task_id.encode(), front)


def started(task_id: str, worker: WorkerId, seq: int) -> list[Action]:
    return [Started(task_id, POOL, pid(worker)), Send(worker, seq, task_id.encode())]


def warm_up(policy: PoolPolicy, worker: WorkerId = W1, now: float = 0.0) -> None:
    """Run 8 instant tasks on ``worker``: the moving average says "short", pipelining is on."""
    for i in range(8):
        actions = policy.handle(submit(f"warm{i}"), now)
        (send,) = [a for a in actions if isinstance(a, Send)]
        policy.handle(Result(worker, send.seq, b""), now)


def no_logs(actions: list[Action]) -> list[Action]:
    return [a for a in actions if not isinstance(a, Log)]


# -- tables ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A policy built with ``size``/``config`` (its workers ready unless ``ready=False``,
    ``warm``: pipelining on), then ``steps``: (now, event, the actions expected, logs aside)."""

    id: str
    steps: list[tuple[float, Event, list[Action]]]
    size: int = 1
    config: dict[str, Any] = field(default_factory=dict)
    ready: bool = True
    warm: bool = False


# Sequence numbers: every dispatch takes the next (warm-up uses 1..8).
CASES = [
    Case("an idle worker gets a task at once", [(0, submit("a"), started("a", W1, 1))]),
    Case(
        "one task at a time while tasks are not known to be short",
        [
            (0, submit("a"), started("a", W1, 1)),
            (0, submit("b"), []),
            (0, Result(W1, 1, b"ra"), [task_done("a", b"ra"), *started("b", W1, 2)]),
        ],
    ),
    Case(
        "idle workers first, in the order they started",
        [
            (0, submit("a"), started("a", W1, 1)),
            (0, submit("b"), started("b", W2, 2)),
            (0, submit("c"), started("c", W3, 3)),
            (0, submit("d"), []),
            (0, Result(W2, 2, b""), [task_done("b", b""), *started("d", W2, 4)]),
        ],
        size=3,
    ),
    Case(
        "a task waits for a worker that is not ready yet",
        [(0, submit("a"), [SetTimer(30)]), (0, Ready(W1), started("a", W1, 1))],
        ready=False,
    ),
    Case(
        "submit to the front",
        [
            (0, submit("a"), started("a", W1, 1)),
            (0, submit("b"), []),
            (0, submit("c", front=True), []),
            (0, Result(W1, 1, b""), [task_done("a", b""), *started("c", W1, 2)]),
        ],
    ),
    Case(
        "output of a running task; of an unknown sequence number, nothing",
        [
            (0, submit("a"), started("a", W1, 1)),
            (0, Printed(W1, 1, "stderr", "hi\n"), [task_output("a", "stderr", "hi\n")]),
            (0, Printed(W1, 7, "stdout", "?"), []),
            (0, RunnerRaised(W1, 1, "bug", "tb"), [task_failed("a", "runner_error", "bug", "tb")]),
        ],
    ),
    Case(
        "cancel a queued task",
        [
            (0, submit("a"), started("a", W1, 1)),
            (0, submit("b"), []),
            (0, Cancel("b"), [task_failed("b", "cancelled", "cancelled while queued")]),
            (0, Result(W1, 1, b""), [task_done("a", b"")]),
        ],
    ),
    Case(
        "cancel a running task: interrupt; it answers CANCELLED in time",
        [
            (0, submit("a"), started("a", W1, 1)),
            (5, Cancel("a"), [Interrupt(W1, 1), SetTimer(6)]),
            (5.5, Cancel("a"), [SetTimer(6)]),  # asked again: nothing more
            (5.5, Interrupted(W1, 1), [task_failed("a", "cancelled", "cancelled while running")]),
            (7, Tick(), []),
        ],
    ),
    Case(
        "a result that races the cancel still ends the task as cancelled",
        [
            (0, submit("a"), started("a", W1, 1)),
            (0, Cancel("a"), [Interrupt(W1, 1), SetTimer(1)]),
            (0, Result(W1, 1, b"late"), [task_failed("a", "cancelled", "cancelled while running")]),
        ],
    ),
    Case(
        "cancel a running task that ignores the interrupt: killed after the grace",
        [
            (0, submit("a"), started("a", W1, 1)),
            (0, submit("b"), []),
            (2, Cancel("a"), [Interrupt(W1, 1), SetTimer(4)]),
            (3.9, Tick(), [SetTimer(4)]),
            (
                4,
                Tick(),
                [
                    Kill(W1),
                    task_failed(
                        "a",
                        "cancelled",
                        "cancelled; worker 101 did not stop within 2s and was killed",
                    ),
                ],
            ),
            (
                4,
                Exited(W1, -9),
                [WorkerExited(101, "killed by SIGKILL"), StartWorker(W2)],
            ),
            (4, Spawned(W2, 102), [SetTimer(4 + 30)]),
            (4.5, Ready(W2), started("b", W2, 2)),
        ],
        config={"cancel_grace": 2.0},
    ),
    Case(
        "cancel_grace=inf never kills",
        [(0, submit("a"), started("a", W1, 1)), (0, Cancel("a"), [Interrupt(W1, 1)])],
        config={"cancel_grace": math.inf},
    ),
    Case(
        "pipelining: short tasks are sent ahead, up to `pipeline` per worker",
        [
            (0, submit("a"), started("a", W1, 9)),
            (0, submit("b"), started("b", W1, 10)),
            (0, submit("c"), started("c", W1, 11)),
            (0, submit("d"), started("d", W1, 12)),
            (0, submit("e"), []),
            (0, Result(W1, 9, b""), [task_done("a", b""), *started("e", W1, 13)]),
        ],
        warm=True,
    ),
    Case(
        "pipelining: a worker busy with a long task gets no more",
        [
            (0, submit("a"), started("a", W1, 9)),
            (PIPELINE_TASK_MAX * 2, submit("b"), []),
        ],
        warm=True,
    ),
    Case(
        "cancel a task sent ahead: it ends at once, CANCEL goes to the worker",
        [
            (0, submit("a"), started("a", W1, 9)),
            (0, submit("b"), started("b", W1, 10)),
            (
                0,
                Cancel("b"),
                [task_failed("b", "cancelled", "cancelled before it started"), SendCancel(W1, 10)],
            ),
            (0, Interrupted(W1, 10), []),  # the worker's answer to CANCEL: dropped
        ],
        warm=True,
    ),
    Case(
        "a worker dies: its task fails, those sent ahead go first to its replacement",
        [
            (0, submit("a"), started("a", W1, 9)),
            (0, submit("b"), started("b", W1, 10)),
            (0, submit("c"), started("c", W1, 11)),
            (
                0,
                Exited(W1, 1),
                [
                    WorkerExited(101, "exit code 1"),
                    task_failed(
                        "a", "worker_died", "worker 101 died (exit code 1) while running task a"
                    ),
                    StartWorker(W2),
                ],
            ),
            (0, submit("d"), []),
            (0, Spawned(W2, 102), [SetTimer(30)]),
            # Announced already: no second Started; still pipelining.
            (
                0,
                Ready(W2),
                [Send(W2, 12, b"b"), Send(W2, 13, b"c"), *started("d", W2, 14)],
            ),
        ],
        warm=True,
    ),
    Case(
        "a concurrent worker gets up to `concurrency` tasks, level by level",
        [
            (0, submit("a"), started("a", W1, 1)),
            (0, submit("b"), started("b", W2, 2)),
            (0, submit("c"), started("c", W1, 3)),
            (0, submit("d"), started("d", W2, 4)),
            (0, submit("e"), []),
            (0, Result(W2, 2, b""), [task_done("b", b""), *started("e", W2, 5)]),
        ],
        size=2,
        config={"concurrency": 2},
    ),
    Case(
        "cancel in a concurrent worker: ended at once, CANCEL sent, the worker kept",
        [
            (0, submit("a"), started("a", W1, 1)),
            (0, submit("b"), started("b", W1, 2)),
            (
                0,
                Cancel("a"),
                [task_failed("a", "cancelled", "cancelled while running"), SendCancel(W1, 1)],
            ),
            (0, submit("c"), []),  # "a" runs on to its end: it still takes one of the two
            (0, Result(W1, 1, b"dropped"), started("c", W1, 3)),
        ],
        config={"concurrency": 2},
    ),
    Case(
        "a concurrent worker that dies fails every task it ran",
        [
            (0, submit("a"), started("a", W1, 1)),
            (0, submit("b"), started("b", W1, 2)),
            (
                0,
                Exited(W1, -9),
                [
                    WorkerExited(101, "killed by SIGKILL"),
                    task_failed(
                        "a",
                        "worker_died",
                        "worker 101 died (killed by SIGKILL) while running task a",
                    ),
                    task_failed(
                        "b",
                        "worker_died",
                        "worker 101 died (killed by SIGKILL) while running task b",
                    ),
                    StartWorker(W2),
                ],
            ),
        ],
        config={"concurrency": 3},
    ),
    Case(
        "a worker not ready in time is killed",
        [
            (0, submit("a"), [SetTimer(30)]),
            (29, Tick(), [SetTimer(30)]),
            (30, Tick(), [Kill(W1)]),
            (30, Exited(W1, -9), [WorkerExited(101, "killed by SIGKILL"), StartWorker(W2)]),
        ],
        ready=False,
    ),
    Case(
        "workers that die before they are ready break the pool",
        [
            (0, submit("a"), [SetTimer(30)]),
            (0, Exited(W1, 1), [WorkerExited(101, "exit code 1"), StartWorker(W2)]),
            (0, Spawned(W2, 102), [SetTimer(30)]),
            (0, Exited(W2, 1), [WorkerExited(102, "exit code 1"), StartWorker(W3)]),
            (0, Spawned(W3, 103), [SetTimer(30)]),
            (
                0,
                Exited(W3, 1),
                [
                    WorkerExited(103, "exit code 1"),
                    task_failed(
                        "a",
                        "worker_died",
                        "workers of pool 'p' die before they are ready (the last one: exit "
                        "code 1); see the server's log",
                    ),
                ],
            ),
            (
                0,
                submit("b"),
                [
                    task_failed(
                        "b",
                        "worker_died",
                        "workers of pool 'p' die before they are ready (the last one: exit "
                        "code 1); see the server's log",
                    )
                ],
            ),
        ],
        ready=False,
    ),
    Case(
        "a runner that cannot be loaded breaks the pool",
        [
            (0, submit("a"), [SetTimer(30)]),
            (
                0,
                InitFailed(W1, "No module named 'm'", "tb"),
                [
                    task_failed(
                        "a",
                        "runner_error",
                        "runner 'm:f' failed to load: No module named 'm'",
                        "tb",
                    ),
                    SetTimer(30),  # it exits next
                ],
            ),
        ],
        ready=False,
    ),
    Case(
        "a worker that cannot be started breaks the pool",
        [
            (0, submit("a"), started("a", W1, 1)),
            (0, submit("b"), []),
            (
                0,
                Exited(W1, 1),
                [
                    WorkerExited(101, "exit code 1"),
                    task_failed(
                        "a", "worker_died", "worker 101 died (exit code 1) while running task a"
                    ),
                    StartWorker(W2),
                ],
            ),
            (
                0,
                SpawnFailed(W2, "no memory"),
                [task_failed("b", "worker_died", "cannot start a worker: no memory")],
            ),
        ],
    ),
    Case(
        "an unknown frame, a failed write: the worker is killed, once",
        [
            (0, Malformed(W1), [Kill(W1)]),
            (0, WriteFailed(W1), []),
            (0, submit("a"), []),  # not to a worker being killed
        ],
    ),
    Case(
        "a worker whose pipe has ended gets no more tasks",
        [(0, Hangup(W1), []), (0, submit("a"), started("a", W2, 1))],
        size=2,
    ),
    Case(
        "close fails every task; then nothing is assigned, no worker replaced",
        [
            (0, submit("a"), started("a", W1, 1)),
            (0, submit("b"), []),
            (
                0,
                Close(),
                [
                    task_failed("a", "cancelled", "pool closed"),
                    task_failed("b", "cancelled", "pool closed"),
                ],
            ),
            (0, Result(W1, 1, b"late"), []),
            (0, Exited(W1, 0), []),
            (0, Stopped(), []),
        ],
    ),
    Case(
        "events about workers the policy does not know are ignored",
        [
            (0, Ready(W3), []),
            (0, Result(W3, 1, b""), []),
            (0, Printed(W3, 1, "stdout", "x"), []),
            (0, Exited(W3, 0), []),
            (0, Malformed(W3), []),
        ],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_steps(case: Case) -> None:
    policy = make(case.size, ready=case.ready, **case.config)
    if case.warm:
        warm_up(policy)
    for now, event, expected in case.steps:
        assert no_logs(policy.handle(event, now)) == expected, (now, event)


def test_submit_while_closing_or_twice_is_refused_and_changes_nothing() -> None:
    policy = make()
    policy.handle(submit("a"), 0)
    with pytest.raises(ValueError, match="already queued or running"):
        policy.handle(submit("a"), 0)
    assert policy.pending("a")
    policy.handle(Close(), 0)
    with pytest.raises(RuntimeError, match="closed"):
        policy.handle(submit("b"), 0)
    assert not policy.pending("a") and not policy.pending("b")


def test_submit_all_takes_every_task_or_none() -> None:
    policy = make(1)
    policy.handle(submit("a"), 0)
    with pytest.raises(ValueError, match="'a' is already queued or running"):
        policy.submit_all([submit("b"), submit("a")], 0)
    with pytest.raises(ValueError, match="already queued or running"):
        policy.submit_all([submit("c"), submit("c")], 0)
    assert not policy.pending("b") and not policy.pending("c")
    actions = policy.submit_all([submit("b"), submit("c")], 0)
    assert actions == []  # the worker holds "a"; "b" and "c" wait in order
    assert policy.handle(Result(W1, 1, b"A"), 0) == [
        task_done("a", b"A"),
        *started("b", W1, 2),
    ]
    policy.handle(Close(), 0)
    with pytest.raises(RuntimeError, match="closed"):
        policy.submit_all([submit("d")], 0)
    assert not policy.pending("d")


def test_stats_count_what_the_actions_said() -> None:
    policy = make(2)
    for task_id in "abc":
        policy.handle(submit(task_id), 0)
    stats = policy.stats()
    assert (stats.workers, stats.busy, stats.queued) == ((101, 102), 2, 1)
    policy.handle(Result(W1, 1, b""), 0)
    policy.handle(Cancel("b"), 0)
    policy.handle(Interrupted(W2, 2), 0)
    policy.handle(Exited(W1, -9), 0)  # "c" ran on W1
    stats = policy.stats()
    assert (stats.tasks_done, stats.tasks_failed, stats.workers_replaced) == (1, 2, 1)
    assert stats.workers == (102,)


@pytest.mark.parametrize(
    ("code", "how"),
    [
        (-9, "killed by SIGKILL"),
        (-15, "killed by SIGTERM"),
        (-99, "killed by signal 99"),
        (0, "exit code 0"),
        (None, "exit code None"),
    ],
)
def test_describe_exit(code: int | None, how: str) -> None:
    assert describe_exit(code) == how


def test_logs_say_what_the_pool_did() -> None:
    policy = make()
    logs = [a for a in policy.handle(Exited(W1, 1), 0) if isinstance(a, Log)]
    assert [log.message for log in logs] == [
        "pool 'p': worker 101 exited (exit code 1); starting another"
    ]


# -- assignment whatever the concurrency ----------------------------------------------------


def test_a_huge_concurrency_before_the_worker_is_ready() -> None:
    # The assignment once walked every slot from 1 to `concurrency` while no worker could
    # take a task: with 2**32-1, for minutes. (This test's timeout catches that.)
    policy = make(ready=False, concurrency=HUGE)
    assert policy.handle(submit("a"), 0) == [SetTimer(30)]
    assert policy.handle(Ready(W1), 0) == started("a", W1, 1)


def test_a_huge_concurrency_takes_every_task_in_order() -> None:
    policy = make(2, concurrency=HUGE)
    ids = [f"t{i}" for i in range(2000)]
    actions = policy.handle_all([submit(t) for t in ids], 0)
    sends = [a for a in actions if isinstance(a, Send)]
    assert [s.payload.decode() for s in sends] == ids
    assert [s.worker for s in sends] == [W1, W2] * 1000  # level by level
    assert policy.stats().queued == 0


def reference_order(loads: list[int], depth: int, count: int) -> list[int]:
    """The former assignment, one pass per level: which worker (index) each task goes to."""
    loads = list(loads)
    order: list[int] = []
    for limit in range(1, depth + 1):
        for i in range(len(loads)):
            if len(order) == count:
                return order
            if loads[i] < limit:
                loads[i] += 1
                order.append(i)
    return order


@settings(max_examples=150, deadline=None)
@given(
    depth=st.integers(2, 6),
    loads=st.lists(st.integers(0, 6), min_size=1, max_size=4),
    count=st.integers(0, 30),
)
def test_assignment_matches_the_level_by_level_reference(
    depth: int, loads: list[int], count: int
) -> None:
    loads = [min(load, depth) for load in loads]
    policy = make(len(loads), concurrency=depth)
    # Fill every worker, then end tasks until each holds its load.
    held: dict[WorkerId, list[int]] = {}
    for action in policy.handle_all([submit(f"fill{i}") for i in range(depth * len(loads))], 0):
        if isinstance(action, Send):
            held.setdefault(action.worker, []).append(action.seq)
    for n, load in enumerate(loads, start=1):
        for seq in held[WorkerId(n)][load:]:
            policy.handle(Result(WorkerId(n), seq, b""), 0)
    assert policy.stats().queued == 0
    actions = policy.handle_all([submit(f"t{i}") for i in range(count)], 0)
    got = [a.worker - 1 for a in actions if isinstance(a, Send)]
    assert got == reference_order(loads, depth, count)


# -- random runs against a simulated shell ---------------------------------------------------


class AlwaysChecks(PoolPolicy):
    """The policy without its shortcut: every event checks the deadlines (an oracle)."""

    def handle_all(self, events: list[Event], now: float) -> list[Action]:
        self._quiet = False
        return super().handle_all(events, now)


class World:
    """A shell that carries out the policy's actions like the real one would, and checks
    every invariant on each step. Workers answer in order unless they are concurrent. A
    twin policy that checks deadlines on every event must answer every step the same."""

    def __init__(self, config: PolicyConfig) -> None:
        self.policy = PoolPolicy(config)
        self.oracle = AlwaysChecks(config)
        self.concurrent = config.concurrency > 1
        self.limit = config.concurrency if self.concurrent else max(1, config.pipeline)
        self.now = 0.0
        self.alive: set[WorkerId] = set()
        self.ready: set[WorkerId] = set()
        self.killed: set[WorkerId] = set()
        self.hung_up: set[WorkerId] = set()
        self.sent: dict[WorkerId, dict[int, str]] = {}  # RUN frames not answered yet
        self.submitted: list[str] = []
        self.fronted: set[str] = set()
        self.events: dict[str, list[Action]] = {}
        self.started_order: list[str] = []
        self.do(Open())

    def do(self, event: Event) -> None:
        actions = self.policy.handle(event, self.now)
        assert actions == self.oracle.handle(event, self.now), event
        for action in actions:
            self.carry_out(action)

    def carry_out(self, action: Action) -> None:
        match action:
            case StartWorker(worker):
                assert worker not in self.alive
                self.alive.add(worker)
                self.sent[worker] = {}
                self.do(Spawned(worker, pid(worker)))
            case Send(worker, seq, payload):
                assert worker in self.ready and worker not in self.killed, action
                assert worker not in self.hung_up, action
                self.sent[worker][seq] = payload.decode()
                assert len(self.sent[worker]) <= self.limit, "more than a worker may hold"
            case SendCancel(worker, seq) | Interrupt(worker, seq):
                assert seq in self.sent[worker], action
            case Kill(worker):
                assert worker in self.alive and worker not in self.killed, action
                self.killed.add(worker)
            case SetTimer(at):
                assert at > self.now or at == self.now
            case Started() | Output() | Done() | Failed():
                events = self.events.setdefault(action.task_id, [])
                assert not any(isinstance(e, Done | Failed) for e in events), (
                    "an event after the terminal one",
                    action,
                    events,
                )
                if isinstance(action, Started):
                    assert not events, ("Started not first, or twice", action, events)
                    self.started_order.append(action.task_id)
                events.append(action)
            case WorkerExited() | Log():
                pass

    # -- stimuli --------------------------------------------------------------------------

    def submit(self, front: bool) -> None:
        task_id = f"t{len(self.submitted)}"
        self.submitted.append(task_id)
        if front:
            self.fronted.add(task_id)
        self.do(Submit(task_id, task_id.encode(), front))

    def answer(self, data: st.DataObject) -> None:
        busy = sorted(w for w in self.alive if self.sent[w])
        if not busy:
            return
        worker = data.draw(st.sampled_from(busy))
        seqs = list(self.sent[worker])
        seq = data.draw(st.sampled_from(seqs)) if self.concurrent else seqs[0]
        task_id = self.sent[worker].pop(seq)
        if data.draw(st.booleans()):
            self.do(Printed(worker, seq, "stdout", f"{task_id} says hi"))
        kind = data.draw(st.sampled_from(["done", "done", "cancelled", "error"]))
        if kind == "done":
            self.do(Result(worker, seq, task_id.encode()))
        elif kind == "cancelled":
            self.do(Interrupted(worker, seq))
        else:
            self.do(RunnerRaised(worker, seq, "bug", "tb"))

    def exit(self, worker: WorkerId, code: int) -> None:
        self.alive.discard(worker)
        self.ready.discard(worker)
        del self.sent[worker]
        self.do(Exited(worker, code))

    def step(self, data: st.DataObject) -> None:
        kinds = ["submit", "submit", "answer", "answer", "answer", "cancel", "ready", "exit"]
        kinds += ["time", "front", "hangup", "malformed"]
        match data.draw(st.sampled_from(kinds)):
            case "submit" | "front" as kind:
                self.submit(front=kind == "front")
            case "answer":
                self.answer(data)
            case "cancel" if self.submitted:
                self.do(Cancel(data.draw(st.sampled_from(self.submitted))))
            case "ready":
                waiting = sorted(self.alive - self.ready)
                if waiting:
                    worker = data.draw(st.sampled_from(waiting))
                    self.ready.add(worker)
                    self.do(Ready(worker))
            case "exit" if self.alive:
                worker = data.draw(st.sampled_from(sorted(self.alive)))
                self.exit(
                    worker, -9 if worker in self.killed else data.draw(st.sampled_from([0, 1]))
                )
            case "time":
                self.now += data.draw(st.sampled_from([0.001, 0.5, 5.0, 31.0]))
                self.do(Tick())
            case "hangup" if self.alive:
                worker = data.draw(st.sampled_from(sorted(self.alive)))
                self.hung_up.add(worker)
                self.do(Hangup(worker))
            case "malformed" if self.alive:
                self.do(Malformed(data.draw(st.sampled_from(sorted(self.alive)))))
            case _:
                pass

    def close(self) -> None:
        self.do(Close())
        for worker in sorted(self.alive):
            self.exit(worker, 0)
        self.do(Stopped())


configs = st.builds(
    PolicyConfig,
    size=st.integers(1, 3),
    concurrency=st.sampled_from([1, 1, 2, 3, HUGE]),
    pipeline=st.sampled_from([1, 4]),
    cancel_grace=st.sampled_from([0.5, math.inf]),
    start_timeout=st.just(30.0),
)


@settings(max_examples=300, deadline=None)
@given(config=configs, data=st.data())
def test_random_runs_keep_the_invariants(config: PolicyConfig, data: st.DataObject) -> None:
    world = World(config)
    for _ in range(data.draw(st.integers(0, 60))):
        world.step(data)
        stats = world.policy.stats()
        assert stats.busy <= len(world.alive)
        assert stats.tasks_done + stats.tasks_failed == sum(
            1 for events in world.events.values() if isinstance(events[-1], Done | Failed)
        )
    world.close()
    # Every submitted task ended exactly once (the World refused a second terminal event).
    for task_id in world.submitted:
        events = world.events.get(task_id, [])
        assert events and isinstance(events[-1], Done | Failed), (task_id, events)
        assert not world.policy.pending(task_id)
    # First in, first out: tasks start in the order they were submitted (those put in
    # front aside).
    order = [t for t in world.started_order if t not in world.fronted]
    assert order == sorted(order, key=lambda t: int(t[1:]))
    # A task that never started printed nothing and got no result.
    for events in world.events.values():
        if not isinstance(events[0], Started):
            assert len(events) == 1 and isinstance(events[0], Failed), events
