"""Test helpers: the server's state machine with the test as its driver.

``Machine`` feeds ``ServerState`` events on a clock of its own and keeps every action it
returns; it remembers the pool ids the machine gave each task's attempts, holds the timers
the machine sets (``tick`` fires them when due), and writes what a session was sent as short
strings (``started t1``, ``out t1 hi``, ``done t1``, ``failed t1 WorkerDied``).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sperse._core import Done, ErrorInfo, Failed, Output, Started
from sperse._pool.events import cancelled, runner_error, worker_died
from sperse._server.actions import (
    Action,
    Emit,
    SetAnnounceTimer,
    SetExpiry,
    StartObject,
    Submit,
    SubmitToObject,
)
from sperse._server.config import ServerConfig
from sperse._server.envelope import PickledBytes, ResultValue, ShmBuffer
from sperse._server.model import ObjectOp, PeerRef, TaskRequest
from sperse._server.state import ServerState

PREFIX = "sperse-1-"  # the server's file prefix
WORK = PickledBytes(b"work")


def files(*names: str) -> PickledBytes:
    """A value whose buffers are these shared memory files (1 KiB each)."""
    return PickledBytes(b"v", tuple(ShmBuffer(name, 1024) for name in names))


def value(name: str = "x", data: PickledBytes | None = None) -> ResultValue:
    return ResultValue(name, "int", "1", data if data is not None else PickledBytes(b"1"))


def pool_error(reason: str, message: str) -> ErrorInfo:
    """The error the pool reports for a task that ended for ``reason`` (worker_died,
    cancelled, runner_error)."""
    make = {"worker_died": worker_died, "cancelled": cancelled, "runner_error": runner_error}
    return make[reason](message)


def describe(event: Any) -> str:
    if isinstance(event, Started):
        return f"started {event.task_id}"
    if isinstance(event, Output):
        return f"out {event.task_id} {event.text}"
    if isinstance(event, Done):
        return f"done {event.task_id}"
    assert isinstance(event, Failed)
    return f"failed {event.task_id} {event.error.type_name}"


@dataclass
class Machine:
    state: ServerState
    now: float = 0.0
    actions: list[Action] = field(default_factory=list)
    timer: float | None = None  # of the Started hold-back
    expiry: dict[str, float] = field(default_factory=dict)
    pool_ids: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    started: set[str] = field(default_factory=set)  # attempts said to have started

    # ---- feeding -------------------------------------------------------------------------

    def feed(self, actions: list[Action]) -> list[Action]:
        for action in actions:
            self.actions.append(action)
            if isinstance(action, SetAnnounceTimer):
                self.timer = action.at
            elif isinstance(action, SetExpiry):
                if action.at is None:
                    self.expiry.pop(action.session_id, None)
                else:
                    self.expiry[action.session_id] = action.at
            elif isinstance(action, Submit | SubmitToObject | StartObject):
                task = self.state.tasks.attempts.get(action.pool_id)
                if task is not None:
                    self.pool_ids[task.task_id].append(action.pool_id)
        return actions

    def open(self, session: str = "s") -> None:
        self.state.open_session(session)

    def submit(
        self,
        task_id: str,
        *,
        session: str = "s",
        work: PickledBytes | None = WORK,
        **fields: Any,
    ) -> list[Action]:
        request = TaskRequest(task_id, work, **fields)
        return self.feed(self.state.submit(session, request))

    def pool_id(self, task_id: str, attempt: int = -1) -> str:
        return self.pool_ids[task_id][attempt]

    def start(self, task_id: str, worker: int = 1) -> list[Action]:
        return self.feed(self.state.tasks.started(self.pool_id(task_id), worker, self.now))

    def output(self, task_id: str, text: str) -> list[Action]:
        return self.feed(self.state.tasks.output(self.pool_id(task_id), "stdout", text))

    def done(self, task_id: str, *values: ResultValue, attempt: int = -1) -> list[Action]:
        result = list(values) or [value()]
        return self.feed(self.state.tasks.done(self.pool_id(task_id, attempt), result))

    def raised(self, task_id: str) -> list[Action]:
        failure = ErrorInfo("raised", "ZeroDivisionError", "division by zero", "tb")
        return self.feed(self.state.tasks.done(self.pool_id(task_id), failure))

    def fail(self, task_id: str, reason: str = "worker_died", attempt: int = -1) -> list[Action]:
        pool_id = self.pool_id(task_id, attempt)
        message = f"task {pool_id}: {reason}"
        return self.feed(self.state.tasks.failed(pool_id, pool_error(reason, message)))

    def cancel(self, task_id: str, session: str = "s") -> list[Action]:
        return self.feed(self.state.cancel(session, task_id))

    def tick(self, seconds: float) -> list[Action]:
        """Let time pass; fire the timers that are due (as the driver's loop would)."""
        self.now += seconds
        fired: list[Action] = []
        if self.timer is not None and self.timer <= self.now:
            self.timer = None
            fired += self.feed(self.state.tasks.announce(self.now))
        for session_id, at in list(self.expiry.items()):
            if at <= self.now:
                del self.expiry[session_id]
                fired += self.feed(self.state.expire(session_id))
        return fired

    # ---- reading -------------------------------------------------------------------------

    def sent(self, session: str = "s") -> list[str]:
        """What the session was sent, in order, as short strings."""
        return [describe(a.event) for a in self.emits(session)]

    def emits(self, session: str = "s") -> list[Emit]:
        return [a for a in self.actions if isinstance(a, Emit) and a.session_id == session]

    def of(self, kind: type[Any] | tuple[type[Any], ...]) -> list[Any]:
        return [a for a in self.actions if isinstance(a, kind)]


def machine(*sessions: str, can_pull: bool = True, **config: Any) -> Machine:
    """A machine with these sessions open (default: one, ``s``)."""
    config.setdefault("token", "t")
    config.setdefault("workers", 1)
    config.setdefault("session_grace", 10.0)
    ids = itertools.count(1)
    state = ServerState(ServerConfig(**config), "srv", PREFIX, lambda: f"obj{next(ids)}")
    state.can_pull = can_pull
    m = Machine(state)
    for session in sessions or ("s",):
        m.open(session)
    return m


def create(object_id: str, name: str = "", restart: bool = False) -> ObjectOp:
    return ObjectOp(object_id, "create", name=name, restart=restart, type_name="Counter")


def call(object_id: str) -> ObjectOp:
    return ObjectOp(object_id, "call")


def peer(object_id: str) -> PeerRef:
    return PeerRef(object_id, "other", "10.0.0.2:7000")
