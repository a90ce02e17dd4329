"""Worker side: the output of remote code, and word that it started, on their way to the
driver (docs/ray.md, "Events, output, and the I/O thread").

Ray cannot push to the driver, so a mailbox actor of the driver (``_Mailbox``, one per
backend, 0 CPUs) sits in between: a worker's ``Relay`` thread puts complete lines there as
they are printed, and word that a task started once it has run ``STARTED_AFTER`` seconds
(short tasks send nothing: their start and output travel in their summary); the driver's
I/O thread long-polls the mailbox. Items are in :mod:`.protocol`'s format.

Invariants: ``sys.stdout``/``sys.stderr`` are the relay's while at least one task runs in
this process, and the worker's own otherwise; each task counts what it put in the mailbox
(``sent``), so that the driver reports its end only after that output.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import io
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from sperse._backends.ray.imports import import_ray
from sperse._backends.ray.protocol import NAME_LABEL

__all__ = ["STARTED_AFTER", "Relay", "_Mailbox", "worker_relay"]

STARTED_AFTER: Final = 0.05  # a task running this long reports that it started
_PARTIAL_MAX: Final = 1 << 16  # a line longer than this without its end goes as it is


@dataclass(slots=True, eq=False)
class _Running:
    """A task (or a call of a remote object) that a worker runs now, as its relay sees it."""

    task_id: str
    mailbox: tuple[str, str]
    began: float
    chunks: list[tuple[str, str]] = field(default_factory=list)
    partial: dict[str, str] = field(default_factory=dict)
    sent: int = 0  # items handed to the mailbox for this task
    started_sent: bool = False
    active: bool = True


# The task whose code runs in this context: several run at once in an object's actor with
# max_concurrency > 1, each on a thread of its own (and a coroutine a call hands to the
# object's event loop runs in a copy of its caller's context).
_RUNNING: contextvars.ContextVar[_Running | None] = contextvars.ContextVar(
    "sperse_ray_task", default=None
)


class _TaskStream(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` while tasks run: text goes to the relay, line by line."""

    encoding = "utf-8"  # shadows TextIOBase's read-only attribute

    def __init__(self, relay: Relay, name: Literal["stdout", "stderr"]) -> None:
        super().__init__()
        self._relay = relay
        self._name = name

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if not self._relay.write(self._name, text):
            self._relay.original(self._name).write(text)  # no task of its own: Ray's log
        return len(text)

    def flush(self) -> None:
        self._relay.flush(self._name)


class Relay:
    """One per worker process: ships the output of the tasks it runs, and word that they
    started, to their backends' mailboxes. Its thread does the sending, so user code never
    waits for it.

    Output goes to the task of the writing context; a write from a context of no running
    task (a thread the task started) goes to the task if it is the only one running, else
    to the worker's own stream. ``sys.stdout``/``sys.stderr`` are the relay's while at least
    one task runs.
    """

    def __init__(self, node_id: str, server: str) -> None:
        self.node_id = node_id
        self.server = server  # its name, for messages (the driver names nodes the same way)
        self._cond = threading.Condition()
        self._tasks: list[_Running] = []
        self._saved: tuple[Any, Any] = (sys.stdout, sys.stderr)
        self._handles: dict[tuple[str, str], Any] = {}
        self.stdout = _TaskStream(self, "stdout")
        self.stderr = _TaskStream(self, "stderr")
        threading.Thread(target=self._loop, name="sperse-relay", daemon=True).start()

    def begin(self, task_id: str, mailbox: tuple[str, str]) -> tuple[_Running, Any]:
        """A task starts in this context: its running record, and the token to end it."""
        task = _Running(task_id, mailbox, time.monotonic())
        with self._cond:
            if not self._tasks:
                self._saved = (sys.stdout, sys.stderr)
                sys.stdout, sys.stderr = self.stdout, self.stderr
            self._tasks.append(task)
        return task, _RUNNING.set(task)

    def end(self, task: _Running, token: Any) -> tuple[int, list[list[str]]]:
        """The task is over: how many items went to the mailbox, and the output left."""
        _RUNNING.reset(token)
        with self._cond:
            task.active = False
            self._tasks.remove(task)
            if not self._tasks:
                sys.stdout, sys.stderr = self._saved
        tail = [[s, t] for s, t in task.chunks] + [[s, t] for s, t in task.partial.items() if t]
        return task.sent, tail

    def count_item(self) -> str:
        """An item this context's task sends to its mailbox itself (a callback): counted, so
        the driver waits for it before it ends the task. Its task id ("" if none)."""
        with self._cond:
            task = self._current()
            if task is None:
                return ""
            task.sent += 1
            return task.task_id

    def original(self, stream: str) -> Any:
        return self._saved[0] if stream == "stdout" else self._saved[1]

    def _current(self) -> _Running | None:
        """The task a write in this context belongs to (under the lock)."""
        task = _RUNNING.get()
        if task is not None and task.active:
            return task
        return self._tasks[0] if len(self._tasks) == 1 else None

    def write(self, stream: str, text: str) -> bool:
        with self._cond:
            task = self._current()
            if task is None:
                return False
            text = task.partial.get(stream, "") + text
            head, newline, rest = text.rpartition("\n")
            if len(rest) > _PARTIAL_MAX:  # a long line without an end: send it as it is
                head, newline, rest = text, "", ""
            task.partial[stream] = rest
            if head or newline:
                task.chunks.append((stream, head + newline))
                self._cond.notify()
            return True

    def flush(self, stream: str) -> None:
        with self._cond:
            task = self._current()
            if task is not None and task.partial.get(stream):
                task.chunks.append((stream, task.partial.pop(stream)))
                self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                batches = self._take()
                while not batches:  # (a poll: waking it for each task would cost more)
                    self._cond.wait(STARTED_AFTER)
                    batches = self._take()
            for mailbox, items in batches.items():
                self._send(mailbox, items)

    def _take(self) -> dict[tuple[str, str], list[list[str]]]:
        """What to send now, by mailbox (under the lock), counted as sent."""
        batches: dict[tuple[str, str], list[list[str]]] = {}
        now = time.monotonic()
        for task in self._tasks:
            if task.chunks:
                items = [[task.task_id, self.node_id, "output", s, t] for s, t in task.chunks]
                task.chunks = []
            elif not task.started_sent and now - task.began >= STARTED_AFTER:
                items = [[task.task_id, self.node_id, "started", "", ""]]
            else:
                continue
            task.started_sent = True
            task.sent += len(items)
            batches.setdefault(task.mailbox, []).extend(items)
        return batches

    def _send(self, mailbox: tuple[str, str], items: list[list[str]]) -> None:
        ray = import_ray()
        try:
            handle = self._handles.get(mailbox)
            if handle is None:
                namespace, name = mailbox
                handle = self._handles[mailbox] = ray.get_actor(name, namespace=namespace)
            handle.put.remote(items)
        except Exception:  # the driver went away: the output has nowhere to go
            self._handles.pop(mailbox, None)


_relay: Relay | None = None
_relay_lock = threading.Lock()


def worker_relay() -> Relay:
    global _relay
    with _relay_lock:
        if _relay is None:
            context = import_ray().get_runtime_context()
            node_id = context.get_node_id()
            name = str(context.get_node_labels().get(NAME_LABEL) or node_id[:8])
            _relay = Relay(node_id, name)
        return _relay


class _Mailbox:
    """The actor between workers and the driver: workers put, the driver long-polls.
    (Named as before the package split: Ray shows actor classes by name.)"""

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._ready = asyncio.Event()

    async def put(self, items: list[Any]) -> None:
        self._items.extend(items)
        self._ready.set()

    async def take(self, timeout: float) -> list[Any]:
        if not self._items:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), timeout)
        items, self._items = self._items, []
        self._ready.clear()
        return items
