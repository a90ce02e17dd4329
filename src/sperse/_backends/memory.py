"""``MemoryBackend``: remote work in this process, with no sockets and no processes.

For unit tests of the layers above a backend (the workspace, ``Pending``, map/reduce,
jobs) and for trying code without a server. It does what a server does, in threads:

- tasks run one at a time per worker thread, in the order they were sent (``workers=1``,
  the default: the same order on every run);
- work and values are pickled both ways, as over a network, so what cannot be sent fails
  as it would on a server (``SerializationError``);
- what a task prints arrives as ``Output`` events, line by line as written;
- remote objects live here, each with threads of its own (``max_concurrency`` of them),
  their calls in the order they were made, hosted as every backend hosts them
  (:mod:`sperse._exec.objects`);
- ``sperse.callback`` calls come back through the same pickling;
- ``sperse.state()`` in its tasks is a store of its own, the same table as a server's
  (:mod:`sperse._state.local`);
- nested work (remote code that calls remote functions) goes to the same backend.

What it cannot do: stop a task that is running (a cancel stops what has not started and
drops the result of what has), run a pip environment, or lose a worker.
"""

from __future__ import annotations

import collections
import contextlib
import io
import itertools
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TextIO

from sperse._backends.local import no_environments
from sperse._core import (
    Backend,
    BackendEvent,
    Done,
    ErrorInfo,
    EventSink,
    Failed,
    ObjectCall,
    ObjectClose,
    ObjectCreate,
    ObjectInfo,
    Output,
    ServerInfo,
    Started,
    TaskSpec,
)
from sperse._core.callbacks import SENDERS, deliver, sending_to
from sperse._core.nested import running_nested, stop_nested
from sperse._exec.objects import ObjectHost, Refused, our_frames
from sperse._exec.runner import dumps_work, encode_error, run
from sperse._serialize import dumps, loads
from sperse._state import PROVIDERS, State
from sperse._state.local import LocalStore
from sperse.errors import ClientGone, SerializationError, SperseError

__all__ = ["MemoryBackend"]

MAX_VALUE_SIZE = 64 << 20  # bytes of one value in its store, as a server's default
_ids = itertools.count(1)


@dataclass(slots=True)
class _Job:
    spec: TaskSpec
    payload: bytes
    cancelled: bool = False
    thread: int = 0  # the ident of the worker thread running it (0: not started)


@dataclass(slots=True, eq=False)
class _Object:
    info: ObjectInfo
    host: ObjectHost
    queue: collections.deque[_Job] = field(default_factory=collections.deque)
    cond: threading.Condition = field(default_factory=threading.Condition)
    threads: list[threading.Thread] = field(default_factory=list)
    alive: bool = True
    calls: int = 0


class MemoryBackend:
    """Runs remote work in this process (see the module docstring): one server named
    ``name``, with ``tags`` and ``resources`` for placements to match, ``workers`` threads
    for tasks."""

    local_only = True  # flows run in-process (sperse._core.LocalOnly)

    def __init__(
        self,
        workers: int = 1,
        *,
        name: str = "local",
        tags: Iterable[str] = (),
        resources: Mapping[str, float] | None = None,
    ) -> None:
        self.name = name
        self.tags = frozenset(tags)
        self.resources = dict(resources or {})
        self.address = f"memory-{next(_ids)}"
        self._size = max(1, workers)
        self._sink: EventSink | None = None
        self._cond = threading.Condition()
        self._queue: collections.deque[_Job] = collections.deque()
        self._jobs: dict[str, _Job] = {}  # sent, not ended
        self._objects: dict[str, _Object] = {}
        self._threads: list[threading.Thread] = []
        self._retired: set[int] = set()  # threads replaced mid-task: they end with it
        self._busy = 0
        self._done = 0
        self._failed = 0
        self._closed = False
        self._store = LocalStore(MAX_VALUE_SIZE)
        # The routes of nested work's backends: each takes the events of its own tasks.
        self._nested_sinks: list[Callable[[BackendEvent], bool]] = []
        _BACKENDS[self.address] = self

    # ---- the Backend seam ----------------------------------------------------------------

    def start(self, sink: EventSink) -> None:
        if self._sink is not None:
            raise SperseError("this MemoryBackend is already started")
        self._sink = sink
        with self._cond:
            for _ in range(self._size):
                self._start_worker()

    def _start_worker(self) -> None:
        """Under ``self._cond``."""
        thread = threading.Thread(
            target=self._work, name=f"sperse-memory-{len(self._threads)}", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def submit(self, specs: Sequence[TaskSpec]) -> None:
        if self._sink is None:
            raise SperseError("MemoryBackend.start() was not called")
        no_environments(specs, "MemoryBackend")
        with sending_to(self.address, "", via="memory"):
            jobs = [_Job(spec, dumps_work(spec.work, spec.label or "the task")) for spec in specs]
        for job in jobs:
            self._send(job)

    def cancel(self, task_id: str) -> None:
        """Not started: it never runs. Running: its end is dropped, and its thread, which
        cannot be stopped mid-call, is replaced by a new one (as a server replaces the
        worker it kills), so the backend is free again at once."""
        with self._cond:
            job = self._jobs.pop(task_id, None)
            if job is None:
                return
            job.cancelled = True
            if job.thread and job.thread not in self._retired:
                self._retired.add(job.thread)
                self._busy -= 1
                self._start_worker()

    def release(self, object_ids: Iterable[str]) -> None:
        for object_id in object_ids:
            self._close_object(object_id, "its owner released it")

    def servers(self) -> list[ServerInfo]:
        return [
            ServerInfo(
                self.name,
                self.tags,
                self.resources,
                workers=self._size,
                busy=self._busy,
                address=self.address,
            )
        ]

    def stats(self) -> dict[str, int]:
        table = self._store.table
        return {
            "workers": self._size,
            "busy": self._busy,
            "tasks_done": self._done,
            "tasks_failed": self._failed,
            "objects": sum(1 for o in self._objects.values() if o.alive),
            "state_keys": table.keys,
            "state_bytes": table.bytes,
            "state_ops": table.ops,
        }

    def objects(self, name: str = "") -> list[ObjectInfo]:
        with self._cond:
            found = [o for o in self._objects.values() if o.alive]
        return [_with_calls(o) for o in found if not name or o.info.name == name]

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
            objects = list(self._objects)
        for object_id in objects:
            self._close_object(object_id, "the backend was closed")
        _BACKENDS.pop(self.address, None)

    @property
    def state(self) -> State:
        """``sperse.state()`` of this backend's tasks."""
        return self._store.state

    # ---- tasks -----------------------------------------------------------------------------

    def _send(self, job: _Job) -> None:
        work = job.spec.work
        with self._cond:
            if self._closed:
                raise SperseError("this MemoryBackend is closed")
            self._jobs[job.spec.task_id] = job
            if isinstance(work, ObjectCreate):
                self._new_object(work, job)
                return
            if isinstance(work, ObjectCall | ObjectClose):
                obj = self._objects.get(work.object_id)
                if obj is None or not obj.alive:
                    why = "does not exist" if obj is None else "was closed"
                    lost = ErrorInfo("object_lost", "ObjectLost", f"remote object {why}")
                    self._jobs.pop(job.spec.task_id, None)
                    self._emit_later(Failed(job.spec.task_id, self.name, lost))
                    return
                if isinstance(work, ObjectClose):
                    self._jobs.pop(job.spec.task_id, None)
                    self._emit_later(Done(job.spec.task_id, self.name, None))
                    closing = work.object_id
                else:
                    with obj.cond:
                        obj.queue.append(job)
                        obj.cond.notify()
                    return
            else:
                self._queue.append(job)
                self._cond.notify()
                return
        self._close_object(closing, "it was closed")

    def _work(self) -> None:
        """A worker thread: the tasks, in the order they were sent."""
        me = threading.get_ident()
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                job = self._queue.popleft()
                if job.cancelled:
                    continue
                job.thread = me
                self._busy += 1
            self._run_task(job)
            with self._cond:
                if me in self._retired:  # replaced while it ran: its successor goes on
                    self._retired.discard(me)
                    return
                self._busy -= 1

    def _run_task(self, job: _Job) -> None:
        task_id = job.spec.task_id
        self._emit(Started(task_id, self.name))
        with self._running(job):
            try:
                result = run(job.payload)
            except BaseException as exc:  # SystemExit and the like: the task's error
                result = dumps((False, encode_error(exc)))
        ok, value = loads(result, what="the result")
        self._end(job, Done(task_id, self.name, value) if ok else Failed(task_id, self.name, value))

    def _end(self, job: _Job, event: Done | Failed) -> None:
        with self._cond:
            if self._jobs.pop(job.spec.task_id, None) is None:
                return  # cancelled: its caller has settled it
            if isinstance(event, Done):
                self._done += 1
            else:
                self._failed += 1
        self._emit(event)

    @contextlib.contextmanager
    def _running(self, job: _Job) -> Iterator[None]:
        """While ``job`` runs on this thread: its output goes to its events, its
        ``sperse.state()`` is this backend's store, its nested work comes back here."""
        _install_streams()
        previous = getattr(_current, "run", None)
        _current.run = (self, job.spec.task_id)
        nested = running_nested(self.client)
        try:
            yield
        finally:
            stop_nested(nested)
            _current.run = previous

    def client(self) -> Backend:
        """Another client of this backend: a backend for a second ``Cluster`` that sees the
        same tasks, objects and store (nested work is one)."""
        return _Client(self)

    def _emit(self, event: BackendEvent) -> None:
        for route in self._nested_sinks:
            if route(event):
                return
        sink = self._sink
        if sink is not None:
            sink(event)

    def _emit_later(self, event: BackendEvent) -> None:
        """Emit from a thread of ours, not the caller's (events never come from ``submit``)."""
        threading.Thread(target=self._emit, args=(event,), daemon=True).start()

    # ---- objects -----------------------------------------------------------------------------

    def _new_object(self, work: ObjectCreate, job: _Job) -> None:
        """Under ``self._cond``."""
        info = ObjectInfo(
            work.object_id,
            self.name,
            work.name,
            work.type_name,
            work.methods,
            work.max_concurrency,
            work.restart,
        )
        obj = _Object(info, ObjectHost())
        self._objects[work.object_id] = obj
        obj.queue.append(job)
        for k in range(max(1, work.max_concurrency)):
            thread = threading.Thread(
                target=self._serve_object,
                args=(obj, k == 0),
                name=f"sperse-memory-object-{work.object_id[:8]}",
                daemon=True,
            )
            obj.threads.append(thread)
            thread.start()

    def _serve_object(self, obj: _Object, first: bool) -> None:
        """One of an object's threads: its calls in order (the first thread builds it)."""
        if not first:
            with obj.cond:
                while not obj.host.built and obj.alive:
                    obj.cond.wait()
        while True:
            with obj.cond:
                while not obj.queue and obj.alive:
                    obj.cond.wait()
                if not obj.alive:
                    return
                job = obj.queue.popleft()
            if not job.cancelled:
                self._run_object_work(obj, job)
            if first and isinstance(job.spec.work, ObjectCreate):
                with obj.cond:
                    obj.cond.notify_all()  # the other threads may start
                if not obj.host.built:
                    self._close_object(obj.info.object_id, "its constructor failed")
                    return

    def _run_object_work(self, obj: _Object, job: _Job) -> None:
        task_id = job.spec.task_id
        self._emit(Started(task_id, self.name))
        with self._running(job):
            try:
                work = loads(job.payload, what="the task")
                if isinstance(work, ObjectCreate):
                    obj.host.create(work)
                    value: Any = None
                else:
                    value = obj.host.call(work)
                    obj.calls += 1
                result = dumps(value, what="the result")
            except Refused as refused:
                info = ErrorInfo("raised", refused.type_name, refused.message)
                self._end(job, Failed(task_id, self.name, info))
                return
            except SerializationError as exc:
                info = ErrorInfo("serialization", "SerializationError", str(exc))
                self._end(job, Failed(task_id, self.name, info))
                return
            except BaseException as exc:  # the user's error
                info = encode_error(exc, skip_frames=our_frames(exc.__traceback__, _OURS))
                self._end(job, Failed(task_id, self.name, info))
                return
        self._end(job, Done(task_id, self.name, loads(result, what="the result")))

    def _close_object(self, object_id: str, why: str) -> None:
        with self._cond:
            obj = self._objects.pop(object_id, None)
        if obj is None:
            return
        with obj.cond:
            obj.alive = False
            left = list(obj.queue)
            obj.queue.clear()
            obj.cond.notify_all()
        obj.host.close()
        if left:  # from a thread of ours: this may be the caller's (submit, release)
            lost = ErrorInfo("object_lost", "ObjectLost", f"remote object {object_id[:8]}: {why}")
            threading.Thread(target=self._fail_all, args=(left, lost), daemon=True).start()

    def _fail_all(self, jobs: list[_Job], error: ErrorInfo) -> None:
        for job in jobs:
            self._end(job, Failed(job.spec.task_id, self.name, error))


_OURS = frozenset({__file__, contextlib.__file__})


def _with_calls(obj: _Object) -> ObjectInfo:
    info = obj.info
    return ObjectInfo(
        info.object_id,
        info.server,
        info.name,
        info.type_name,
        info.methods,
        info.max_concurrency,
        info.restart,
        calls=obj.calls,
    )


class _Client:
    """Another client of a ``MemoryBackend`` (``MemoryBackend.client()``), as nested work
    (remote code that sends work) is: the same tasks and objects, with events to a sink of
    its own. Its cluster numbers tasks as the first client's does, so their ids get a
    prefix of its own here."""

    def __init__(self, parent: MemoryBackend) -> None:
        self._parent = parent
        self._sink: EventSink | None = None
        self._prefix = f"client-{next(_ids)}/"

    def start(self, sink: EventSink) -> None:
        self._sink = sink
        self._parent._nested_sinks.append(self._route)

    def _route(self, event: BackendEvent) -> bool:
        if not event.task_id.startswith(self._prefix):
            return False
        assert self._sink is not None
        self._sink(replace(event, task_id=event.task_id[len(self._prefix) :]))
        return True

    def submit(self, specs: Sequence[TaskSpec]) -> None:
        self._parent.submit([replace(s, task_id=self._prefix + s.task_id) for s in specs])

    def cancel(self, task_id: str) -> None:
        self._parent.cancel(self._prefix + task_id)

    def release(self, object_ids: Iterable[str]) -> None:
        self._parent.release(object_ids)

    def servers(self) -> list[ServerInfo]:
        return self._parent.servers()

    def stats(self) -> dict[str, int]:
        return self._parent.stats()

    def objects(self, name: str = "") -> list[ObjectInfo]:
        return self._parent.objects(name)

    def close(self) -> None:
        """The parent's: it goes on."""
        with contextlib.suppress(ValueError):
            self._parent._nested_sinks.remove(self._route)


# ---- what tasks print ------------------------------------------------------------------------

_current = threading.local()  # .run: (backend, task id) of the task this thread runs
_BACKENDS: dict[str, MemoryBackend] = {}


class _TaskStream(io.TextIOBase):
    """Stands in for ``sys.stdout``/``sys.stderr``: a task's writes become its ``Output``
    events; any other thread's go where they went before."""

    def __init__(self, target: TextIO, stream: str) -> None:
        self._target = target
        self._stream = stream

    def write(self, text: str) -> int:
        running = getattr(_current, "run", None)
        if running is None:
            return self._target.write(text)
        backend, task_id = running
        if text:
            _current.run = None  # what the event's listeners print is not the task's
            try:
                backend._emit(Output(task_id, backend.name, self._stream, text))  # type: ignore[arg-type]
            finally:
                _current.run = running
        return len(text)

    def flush(self) -> None:
        if getattr(_current, "run", None) is None:
            self._target.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


def _install_streams() -> None:
    if not isinstance(sys.stdout, _TaskStream):
        sys.stdout = _TaskStream(sys.stdout, "stdout")
    if not isinstance(sys.stderr, _TaskStream):
        sys.stderr = _TaskStream(sys.stderr, "stderr")


# ---- the hooks of the layers below: callbacks and the store --------------------------------


def _call_back(
    address: str,
    session_id: str,
    callback_id: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    name: str,
) -> None:
    """A callback called by a task of the backend at ``address``: to its client (this
    process), through a pickle as over a network."""
    if address not in _BACKENDS:
        raise ClientGone(f"callback {name}: its client's backend was closed")
    data = dumps((args, kwargs), what=f"the arguments of callback {name}")
    args, kwargs = loads(data, what=f"the arguments of callback {name}")
    deliver(callback_id, args, kwargs)


def _task_state() -> State | None:
    running = getattr(_current, "run", None)
    return running[0].state if running is not None else None


SENDERS["memory"] = _call_back
PROVIDERS.append(_task_state)
