"""What a server sends about tasks, decoded into backend events (on the I/O thread).

``TaskTable`` holds the tasks sent and not yet ended, and whether the session is lost: under
one lock, so that a task is either refused at submit or failed with the session, never
neither. ``Decoder`` turns a server's ``Event`` into ``Started``/``Output``/``Done``/``Failed``
for the sink, a value held by the server into a ``RemoteValue``, and a ``Callback`` into a
call of the user's callback.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sperse._backends.sperse.uploads import received, writable
from sperse._core import (
    Done,
    ErrorInfo,
    ErrorKind,
    EventSink,
    Failed,
    Output,
    Started,
    StatementTask,
    TaskSpec,
)
from sperse._core.callbacks import deliver
from sperse._serialize import RemoteRef, RemoteValue, loads_oob
from sperse._wire import BlobReceiver, pb
from sperse.errors import ServerLost, SperseError

__all__ = ["Decoder", "TaskTable"]

log = logging.getLogger("sperse.client")

_KINDS = frozenset(
    {
        "raised",
        "worker_died",
        "cancelled",
        "serialization",
        "missing_module",
        "object_lost",
        "environment",
        "internal",
    }
)


@dataclass(slots=True)
class _Task:
    spec: TaskSpec
    is_statement: bool  # its result is a dict of the names a remote statement defined


class TaskTable:
    """The tasks sent and not ended, and the error that ended the session (any thread)."""

    def __init__(self) -> None:
        self._tasks: dict[str, _Task] = {}
        self._lock = threading.Lock()
        self.lost: SperseError | None = None

    def add(self, specs: Sequence[TaskSpec]) -> None:
        """Record tasks about to be sent; raises the session's error if it is lost."""
        with self._lock:
            if self.lost is not None:  # lost while these were prepared: never sent
                raise self.lost
            for spec in specs:
                work = spec.work
                returns_names = isinstance(work, StatementTask) and not work.is_expression
                self._tasks[spec.task_id] = _Task(spec, returns_names)

    def pop(self, task_id: str) -> _Task | None:
        with self._lock:
            return self._tasks.pop(task_id, None)

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._tasks)

    def __len__(self) -> int:
        with self._lock:
            return len(self._tasks)

    def lose(self, error: SperseError) -> list[str]:
        """The session is over: every unfinished task, forgotten (``add`` raises from now)."""
        with self._lock:
            self.lost = error
            tasks, self._tasks = self._tasks, {}
        return list(tasks)


class Decoder:
    """Server messages about tasks → backend events for ``sink``. ``name``: the server's
    name now; ``fetch`` and ``release``: what a ``RemoteValue`` of this server calls."""

    def __init__(
        self,
        tasks: TaskTable,
        *,
        name: Callable[[], str],
        fetch: Callable[[RemoteRef, float | None], Any],
        release: Callable[[str], None],
    ) -> None:
        self.sink: EventSink | None = None
        self._tasks = tasks
        self._name = name
        self._fetch = fetch
        self._release = release

    def event(self, event: pb.Event, receiver: BlobReceiver) -> None:
        sink = self.sink
        assert sink is not None
        task_id = event.task_id
        where = self._name()
        kind = event.WhichOneof("kind")
        if kind == "started":
            sink(Started(task_id, where, event.started.worker))
        elif kind == "output":
            stderr = event.output.stream == "stderr"
            sink(Output(task_id, where, "stderr" if stderr else "stdout", event.output.text))
        elif kind == "done":
            task = self._tasks.pop(task_id)
            try:
                values = {v.name: self.value(v, receiver) for v in event.done.values}
            except SperseError as exc:
                sink(
                    Failed(task_id, where, ErrorInfo("serialization", type(exc).__name__, str(exc)))
                )
                return
            if task is not None and task.is_statement:
                sink(Done(task_id, where, values))
            else:
                sink(Done(task_id, where, values.get("")))
        elif kind == "failed":
            self._tasks.pop(task_id)
            f = event.failed
            info = ErrorInfo(_kind(f.kind), f.type_name, f.message, f.traceback)
            sink(Failed(task_id, where, info))

    def lost(self, task_ids: Sequence[str], error: SperseError) -> None:
        """Tasks that will never end on this server, failed with ``error``."""
        sink = self.sink
        if sink is None:
            return
        kind: ErrorKind = "server_lost" if isinstance(error, ServerLost) else "internal"
        name = self._name()
        for task_id in task_ids:
            sink(Failed(task_id, name, ErrorInfo(kind, type(error).__name__, str(error))))

    def callback(self, message: pb.Callback, receiver: BlobReceiver) -> None:
        """Remote code called one of this client's callbacks: run it on the user's thread."""
        try:
            data, buffers = writable(*received(message.args, receiver))
            args, kwargs = loads_oob(data, buffers, what="the arguments of a callback")
        except Exception as exc:  # not ours to raise on the I/O thread: say it
            log.warning("a callback from %s could not be read: %s", self._name(), exc)
            return
        if not deliver(message.callback_id, args, kwargs):
            log.warning("remote code called back callback %s, which is gone", message.callback_id)

    def value(self, value: pb.Value, receiver: BlobReceiver) -> Any:
        name = self._name()
        if value.WhichOneof("kind") == "ref":
            r = value.ref
            ref = RemoteRef(r.object_id, name, r.type_name, r.size, r.repr)
            handle = RemoteValue(ref, self._fetch)
            weakref.finalize(handle, self._release, r.object_id)
            return handle
        try:
            data, buffers = writable(*received(value.inline, receiver))
        except (OSError, KeyError) as exc:
            raise SperseError(f"cannot read a result from {name}: {exc}") from exc
        return loads_oob(data, buffers, what=f"a result from {name}")


def _kind(kind: str) -> Any:
    return kind if kind in _KINDS else "internal"
