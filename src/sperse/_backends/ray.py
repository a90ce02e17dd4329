"""``RayBackend``: remote work as Ray tasks, on a Ray cluster (docs/ray.md has the mapping).

Driver side (this process):

- ``submit`` pickles the work with Sperse's own serializer (so the user's modules travel by
  value and errors name the input that cannot be sent) and calls one Ray remote function,
  ``_run_task``, on the caller's thread. Values already held in Ray (``RemoteValue``s made by
  this backend) travel as top-level ``ObjectRef`` arguments: Ray moves them from node to node,
  never through this process.
- One background thread, the backend's I/O thread, waits on the in-flight tasks with
  ``ray.wait`` in a bounded loop (Ray has no push callbacks to the driver), turns what
  finished into ``Done``/``Failed`` and calls the sink. It alone calls the sink.
- A task returns ``1 + slots`` objects: a small summary first (where it ran, its last output,
  the result or the error as data), then one slot per value. A value whose pickle is under
  ``inline_limit`` comes back inside the summary; a bigger one stays in its slot, an
  ``ObjectRef`` owned by this process, wrapped in a ``RemoteValue`` whose fetch is ``ray.get``.
  Dropping the ``RemoteValue`` drops the ``ObjectRef``, and Ray frees the object.

Worker side (``_run_task``, inside a Ray worker process): ``execute(work)`` from the shared
runner, with ``sys.stdout``/``sys.stderr`` replaced by streams that relay the task's output.
Ray cannot push to the driver either way, so a mailbox actor (one per backend, 0 CPUs) sits in
between: a worker's relay thread puts complete lines there as they are printed, and word that
the task started once it has run ``STARTED_AFTER`` seconds (short tasks send nothing: their
start and output travel in the summary); the I/O thread long-polls the mailbox in the same
``ray.wait``. The summary counts what was put in the mailbox, so ``Done`` is held back until
that output has been reported (or ``OUTPUT_GRACE`` passed): output always comes before the
result.

Remote objects (DESIGN §5): one actor each, ``_ObjectActor``, which builds the instance in its
``__init__`` (so that Ray's ``max_restarts`` rebuilds it) and runs calls through
``_run_work``, the part of ``_run_task`` that loads work, runs it and answers with a summary.
A creation or a call is then a task to the I/O thread: its summary and slots are handled
alike. The relay serves several tasks of one process at once (the calls of an object with
``max_concurrency`` N): output goes to the task of the writing context. Ray's
``RayActorError``s become ``ObjectLost`` here. A close, or a call of an object known to be
gone, ends at once, reported by the I/O thread like any end. Remote code runs with
``sperse.current()`` set to a ``RayBackend`` of its worker, started on first use (nested
work, and proxies passed to remote code).

Invariants: every submitted task ends in exactly one ``Done`` or ``Failed`` (``close`` fails
what is left); events of a task come in the order ``Started``, ``Output``..., then the end.
The actors of the remote objects a backend created are killed when they are released or
closed, and when the backend closes.

Ray is imported lazily: ``import sperse`` never imports it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import inspect
import io
import itertools
import logging
import os
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

from sperse._backends.ray_import import import_ray
from sperse._backends.ray_state import node_state as node_state
from sperse._core import (
    CallTask,
    Done,
    ErrorInfo,
    ErrorKind,
    EventSink,
    Failed,
    ObjectCall,
    ObjectClose,
    ObjectCreate,
    ObjectInfo,
    Output,
    ServerInfo,
    Started,
    StatementTask,
    TaskSpec,
)
from sperse._core.callbacks import SENDERS, deliver, sending_to
from sperse._core.nested import running_nested, stop_nested
from sperse._core.routing import eligible, no_match_message
from sperse._exec.runner import (
    cannot_send_back,
    dumps_work_oob,
    encode_error,
    execute,
    object_work_from_wire,
    short_repr,
    type_name,
    work_from_wire,
)
from sperse._lang.placement import And, Placement, Resources, Tag, TagExpr
from sperse._serialize import (
    RemoteRef,
    RemoteValue,
    describe,
    dumps,
    dumps_oob,
    loads,
    loads_oob,
)
from sperse.errors import (
    ClientGone,
    EnvUnavailable,
    NoMatchingServer,
    SerializationError,
    ServerLost,
    ServerUnavailable,
    SperseError,
)

__all__ = ["NAME_LABEL", "RayBackend", "import_ray"]

log = logging.getLogger("sperse.ray")

NAME_LABEL: Final = "sperse/name"  # a node's server name: `ray start --labels sperse/name=db-1`
TAG_SHARE: Final = 0.0001  # what a task takes of a tag's resource: Ray's smallest unit
STARTED_AFTER: Final = 0.05  # a task running this long reports that it started
WAIT_SLICE: Final = 0.01  # the I/O thread's longest ray.wait: new tasks join the wait after it
FEW_IN_FLIGHT: Final = 8  # up to this many: wake at the first result; beyond: batch ...
BATCH_SLICE: Final = 0.05  # ... of what ends within this
WINDOW: Final = 512  # beyond this many in flight, wait on the oldest (they end first) ...
SWEEP_EVERY: Final = 0.2  # ... and on all of them this often
MAILBOX_POLL: Final = 1.0  # the mailbox's long poll
OUTPUT_GRACE: Final = 5.0  # the longest a result waits for output still in the mailbox
CANCEL_GRACE: Final = 1.0  # a cancelled task still running this long has its worker killed
CANCEL_SETTLE: Final = 0.5  # a task is interrupted no sooner than this after it was sent
NODES_TTL: Final = 2.0  # how long a snapshot of the cluster's nodes is used
START_TIMEOUT: Final = 60.0  # the longest start() waits for the mailbox actor
OBJECTS_NAMESPACE: Final = "sperse-objects"  # the Ray namespace of remote objects' actors
INFO_TIMEOUT: Final = 5.0  # the longest objects() waits for an object's actor to answer
_INFO_GROUP: Final = "sperse-info"  # the concurrency group of _ObjectActor.info
_GONE_KEPT: Final = 10_000  # objects remembered as gone, to say why a later call fails
_PARTIAL_MAX: Final = 1 << 16

_NOT_TAGS: Final = frozenset({"CPU", "memory", "object_store_memory"})
_NOT_RESOURCES: Final = frozenset({"memory", "object_store_memory"})


# ==== the worker side ==========================================================================


def _buffers(buffers: Sequence[Any], copy_under: int) -> list[Any]:
    """Buffers to unpickle from: small ones copied (their arrays writable, as on the other
    backends), big ones as they are (zero-copy, read-only views of Ray's object store)."""
    out: list[Any] = []
    for buffer in buffers:
        view = memoryview(buffer)
        out.append(bytearray(view) if view.nbytes < copy_under else view)
    return out


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

    def __init__(self, relay: _Relay, name: Literal["stdout", "stderr"]) -> None:
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


class _Relay:
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


_relay: _Relay | None = None
_relay_lock = threading.Lock()


def _worker_relay() -> _Relay:
    global _relay
    with _relay_lock:
        if _relay is None:
            context = import_ray().get_runtime_context()
            node_id = context.get_node_id()
            name = str(context.get_node_labels().get(NAME_LABEL) or node_id[:8])
            _relay = _Relay(node_id, name)
        return _relay


class _Failure(Exception):
    def __init__(self, info: ErrorInfo) -> None:
        super().__init__(info.message)
        self.info = info


def _run_task(header: list[Any], *held: list[Any]) -> Any:
    """One Sperse task inside a Ray worker (see the module doc for what it returns).

    ``header``: the work's pickle and out-of-band buffers, the ids of the held values it
    refers to (``held`` are those values, ``[pickle, buffers]``, resolved by Ray), the task's
    id, the mailbox's namespace and name, the inline limit, and the names a statement defines
    (None: one value). One argument, not eight: Ray serializes each argument of a call on
    its own. Lists, not tuples, here and in what comes back: Ray sends lists of plain
    values as msgpack, and pickles tuples.
    """
    return _run_work(header, held, work_from_wire, _execute)


def _run_work(
    header: list[Any],
    held: Sequence[list[Any]],
    decode: Callable[[Any], Any],
    run: Callable[[Any], Any],
    *,
    relay_output: bool = True,
) -> Any:
    """Load the work of ``header`` (``decode`` tells what it is), ``run`` it, and return the
    summary and value slots of ``_run_task``; ``run`` raises ``_Failure`` for an error.
    Shared by tasks and the calls of remote objects, so the driver treats both alike. The
    work runs with this worker's cluster as ``sperse.current()`` (nested work)."""
    data, buffers, ref_ids, task_id, namespace, mailbox, inline_limit, names = header
    relay = _worker_relay()
    running = relay.begin(task_id, (namespace, mailbox)) if relay_output else None
    nested = running_nested(_NestedBackend)
    try:
        try:
            work = _load_work(data, buffers, ref_ids, held, inline_limit, relay.server, decode)
            value = run(work)
            entries, objects = _encode(names, value, inline_limit)
            outcome: list[Any] = [True, entries]
        except _Failure as failure:
            info = failure.info
            outcome = [False, [info.kind, info.type_name, info.message, info.traceback]]
            objects = [None] * (len(names) if names is not None else 1)
    finally:
        stop_nested(nested)
        sent, tail = relay.end(*running) if running is not None else (0, [])
    summary = [relay.node_id, sent, tail, *outcome]
    return (summary, *objects) if objects else summary


def _execute(work: Any) -> Any:
    try:
        return execute(work)
    except (Exception, SystemExit) as exc:  # the user's code; KeyboardInterrupt is Ray's cancel
        raise _Failure(encode_error(exc, skip_frames=2)) from None  # _execute() and execute()


def _load_work(
    data: bytes,
    buffers: list[Any],
    ref_ids: list[str],
    held: Sequence[list[Any]],
    inline_limit: int,
    server: str,
    decode: Callable[[Any], Any],
) -> Any:
    loaded: dict[str, Any] = {}
    index = {object_id: i for i, object_id in enumerate(ref_ids)}

    def resolve(object_id: str) -> Any:
        if object_id not in loaded:
            held_data, held_buffers = held[index[object_id]]
            loaded[object_id] = loads_oob(
                held_data,
                _buffers(held_buffers, inline_limit),
                resolve=resolve,
                what=f"held object {object_id}",
            )
        return loaded[object_id]

    try:
        obj = loads_oob(
            data,
            _buffers(buffers, inline_limit),
            resolve=resolve if held else None,
            what="the task",
        )
    except ModuleNotFoundError as exc:
        module = exc.name or str(exc)
        raise _Failure(
            ErrorInfo(
                "missing_module",
                "ModuleNotFoundError",
                f"module {module!r} is not installed on server {server!r} (a Ray node): install "
                "it on every node (or in the job's runtime_env), or keep it in a file under "
                "the client's working directory so that it is sent along with the code",
            )
        ) from None
    except SerializationError as exc:
        raise _Failure(ErrorInfo("serialization", "SerializationError", str(exc))) from None
    work = decode(obj)
    if work is None:
        raise _Failure(
            ErrorInfo("serialization", "SerializationError", f"the task is {describe(obj)}")
        )
    return work


def _encode(names: list[str] | None, value: Any, inline_limit: int) -> tuple[list[Any], list[Any]]:
    """The summary's entries and the slots' objects for ``value``."""
    if names is None:
        entry, obj = _encode_value("", value, inline_limit)
        return [entry], [obj]
    entries: list[Any] = []
    objects: list[Any] = [None] * len(names)
    for slot, name in enumerate(names):
        if name in value:
            entry, objects[slot] = _encode_value(name, value[name], inline_limit)
            entries.append([name, entry])
    return entries, objects


def _encode_value(name: str, value: Any, inline_limit: int) -> tuple[list[Any], Any]:
    try:
        data, buffers, _ = dumps_oob(value, what=f"`{name}`" if name else "the result")
    except SerializationError as exc:
        message = cannot_send_back(name, value, exc.__cause__ or exc)
        raise _Failure(ErrorInfo("serialization", "SerializationError", message)) from None
    views = [b.raw() for b in buffers]
    size = len(data) + sum(v.nbytes for v in views)
    if size <= inline_limit:
        return ["inline", data, [bytes(v) for v in views]], None
    return ["held", type_name(value), size, short_repr(value)], [data, buffers]


def call_back(
    namespace: str,
    mailbox: str,
    callback_id: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    what: str,
) -> None:
    """In remote code on Ray: hand a callback's arguments to its client, by the client's
    mailbox actor. Returns once the mailbox has them; ``ClientGone`` if the client left."""
    ray = import_ray()
    data = dumps((args, kwargs), what=f"the arguments of callback {what}")
    relay = _worker_relay()
    task_id = relay.count_item()  # the driver ends the task only once it has this too
    try:
        box = ray.get_actor(mailbox, namespace=namespace)
        ray.get(box.put.remote([[task_id, relay.node_id, "callback", callback_id, data]]))
    except (ValueError, ray.exceptions.RayActorError) as exc:
        raise ClientGone(
            f"callback {what}: the client that made it has gone (its Ray mailbox is gone: "
            f"{_first_line(exc)})"
        ) from None


SENDERS["ray"] = call_back  # how a callback pickled for Ray (via "ray") calls back


def _deliver_callback(callback_id: str, data: bytes) -> None:
    try:
        args, kwargs = loads(data, what="the arguments of a callback")
    except SerializationError as exc:
        log.warning("a callback's arguments could not be read: %s", exc)
        return
    if not deliver(callback_id, args, kwargs):
        log.warning("remote code called back callback %s, which is gone", callback_id)


class _Mailbox:
    """The actor between workers and the driver: workers put, the driver long-polls."""

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


# ---- remote objects: one actor each -----------------------------------------------------------

_NOT_BUILT: Final[Any] = object()
# Frames of these files are ours: the traceback of a method's error starts after them.
_OUR_FILES: Final = frozenset(
    {
        __file__,
        execute.__code__.co_filename,
        asyncio.tasks.__file__,
        asyncio.futures.__file__,
        asyncio.events.__file__,
        asyncio.base_events.__file__,
        concurrent.futures._base.__file__,
    }
)


class _ObjectActor:
    """The Ray actor of one remote object (DESIGN §5, docs/ray.md).

    ``__init__`` builds the user's instance from the ``ObjectCreate`` it is given, so that
    Ray's ``max_restarts`` rebuilds it from its constructor's arguments. A constructor that
    raises leaves the actor up without an instance (the driver removes it): ``created``
    reports the construction as ``_run_task`` reports a task, its error as data.

    ``call`` runs one ``ObjectCall`` and answers as ``_run_task`` does. Only public names are
    exposed. A method that returns an awaitable (``async def``) is awaited on one event loop
    of the actor, in a thread of its own: the coroutines of one object share it, and with
    ``max_concurrency`` N, N of them await at once (each actor thread waits for its own).
    ``info`` runs in a concurrency group of its own: a listing never waits behind a call.
    """

    def __init__(self, header: list[Any], *held: list[Any]) -> None:
        self._rebuilt = bool(import_ray().get_runtime_context().was_current_actor_reconstructed)
        self._instance: Any = _NOT_BUILT
        self._create: ObjectCreate | None = None
        self._calls = 0  # calls that ended
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        # A rebuild's output goes to Ray's worker log: the creation it would belong to is over.
        self._created = _run_work(
            header, held, object_work_from_wire, self._build, relay_output=not self._rebuilt
        )
        self._unbuilt = ""  # why there is no instance
        summary = self._created[0]
        if not summary[3]:
            _, error_type, message, _ = summary[4]
            what = "rebuild (after its process died)" if self._rebuilt else "creation"
            self._unbuilt = f"its {what} failed: {error_type}: {message}"

    def created(self) -> tuple[Any, ...]:
        """The construction's summary and slot (``num_returns=2``)."""
        return tuple(self._created)

    def call(self, header: list[Any], *held: list[Any]) -> Any:
        """One call (``num_returns=2``): what ``_run_task`` returns for a task."""
        return _run_work(header, held, object_work_from_wire, self._call)

    def info(self) -> list[Any]:
        """``[pid, calls, built, node id, methods, max_concurrency, restart]``."""
        create = self._create
        with self._lock:
            calls = self._calls
        built = self._instance is not _NOT_BUILT
        node_id = _worker_relay().node_id
        if create is None:
            return [os.getpid(), calls, built, node_id, [], 1, False]
        return [
            os.getpid(),
            calls,
            built,
            node_id,
            list(create.methods),
            create.max_concurrency,
            create.restart,
        ]

    def _build(self, work: Any) -> None:
        if not isinstance(work, ObjectCreate):
            raise _Failure(ErrorInfo("internal", "SperseError", f"not a creation: {work!r}"))
        self._create = work
        self._instance = _execute(CallTask(work.cls, work.args, work.kwargs))

    def _call(self, work: Any) -> Any:
        if not isinstance(work, ObjectCall):
            raise _Failure(ErrorInfo("internal", "SperseError", f"not a call: {work!r}"))
        instance = self._instance
        if instance is _NOT_BUILT:
            what = f"remote object ({self._type_name()} {work.object_id[:8]})"
            raise _Failure(
                ErrorInfo("object_lost", "ObjectLost", f"{what} does not exist: {self._unbuilt}")
            )
        try:
            member = _member(instance, work, self._type_name())
            value = member if work.attribute else member(*work.args, **work.kwargs)
            if inspect.isawaitable(value):
                value = self._await(value)
        except _Failure:
            raise
        except (Exception, SystemExit) as exc:  # the user's code; KeyboardInterrupt: a cancel
            raise _Failure(_user_error(exc)) from None
        finally:
            with self._lock:
                self._calls += 1
        return value

    def _type_name(self) -> str:
        create = self._create
        if create is not None and create.type_name:
            return create.type_name
        return type(self._instance).__qualname__

    def _await(self, awaitable: Awaitable[Any]) -> Any:
        """Run ``awaitable`` on the object's event loop; wait here for its value."""
        future = asyncio.run_coroutine_threadsafe(_awaited(awaitable), self._event_loop())
        try:
            return future.result()
        except BaseException:
            future.cancel()  # interrupted (a cancel): the coroutine is cancelled too
            raise

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(
                    target=loop.run_forever, name="sperse-object-loop", daemon=True
                ).start()
                self._loop = loop
            return self._loop


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _member(instance: Any, work: ObjectCall, what: str) -> Any:
    """The attribute ``work`` names, checked as a sperse server checks it: public, present,
    callable or not as asked. A refusal is an error of kind ``raised`` without a traceback;
    a property that raises is the user's error."""
    name = work.name

    def refuse(error_type: str, message: str) -> _Failure:
        return _Failure(ErrorInfo("raised", error_type, message))

    if not name or name.startswith("_"):
        raise refuse(
            "AttributeError",
            f"{name or '(empty)'!r} of remote object {what} is not exposed: only public names "
            "(not starting with '_') can be called or read through a proxy",
        )
    if inspect.getattr_static(instance, name, _NOT_BUILT) is _NOT_BUILT:
        try:
            getattr(instance, name)  # a __getattr__ may still provide it
        except AttributeError:
            kind = type(instance)
            methods = sorted(
                n
                for n in dir(kind)
                if not n.startswith("_") and callable(inspect.getattr_static(kind, n, None))
            )
            raise refuse(
                "AttributeError",
                f"remote object {what} has no attribute {name!r}; its public methods: "
                f"{', '.join(methods) or '(none)'}",
            ) from None
    member = getattr(instance, name)
    if work.attribute:
        if inspect.ismethod(member) or inspect.isroutine(member):
            raise refuse(
                "TypeError",
                f"{name!r} of remote object {what} is a method: call it (proxy.{name}(...)) "
                "rather than read it",
            )
    elif not callable(member):
        raise refuse(
            "TypeError",
            f"{name!r} of remote object {what} is {_article(type(member).__name__)}, not a "
            f"method: read it as an attribute (proxy.{name}) rather than call it",
        )
    return member


def _article(noun: str) -> str:
    return f"an {noun}" if noun[:1] in "aeiouAEIOU" else f"a {noun}"


def _user_error(exc: BaseException) -> ErrorInfo:
    """``exc`` as data, its traceback starting at the user's code."""
    tb = exc.__traceback__
    ours = 0
    while tb is not None and tb.tb_frame.f_code.co_filename in _OUR_FILES:
        ours += 1
        tb = tb.tb_next
    return encode_error(exc, skip_frames=ours)


# ---- nested work: remote code that uses Sperse ------------------------------------------------


class _NestedBackend:
    """The backend of remote code on Ray (``sperse.current()`` in a task or a method): a
    ``RayBackend`` that joins the Ray its worker belongs to, started on first use, since
    it starts a mailbox actor and most remote code never needs one."""

    def __init__(self) -> None:
        self._sink: EventSink | None = None
        self._backend: RayBackend | None = None
        self._lock = threading.Lock()

    def _started(self) -> RayBackend:
        with self._lock:
            if self._backend is None:
                assert self._sink is not None
                backend = RayBackend()
                backend.start(self._sink)
                self._backend = backend
            return self._backend

    def start(self, sink: EventSink) -> None:
        self._sink = sink

    def submit(self, specs: Sequence[TaskSpec]) -> None:
        self._started().submit(specs)

    def cancel(self, task_id: str) -> None:
        if self._backend is not None:
            self._backend.cancel(task_id)

    def release(self, object_ids: Iterable[str]) -> None:
        if self._backend is not None:
            self._backend.release(object_ids)

    def servers(self) -> list[ServerInfo]:
        return self._started().servers()

    def stats(self) -> dict[str, int]:
        return self._started().stats()

    def objects(self, name: str = "") -> list[ObjectInfo]:
        return self._started().objects(name)

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()


# ==== the driver side ==========================================================================


@dataclass(frozen=True, slots=True)
class _Node:
    node_id: str
    info: ServerInfo  # busy is filled in when asked


@dataclass(slots=True)
class _Loop:
    """What the I/O thread keeps between turns."""

    active: dict[Any, _Task] = field(default_factory=dict)  # summary ObjectRef -> task
    waiting: list[_Task] = field(default_factory=list)  # ended, their output on its way
    cancelling: list[_Task] = field(default_factory=list)  # killed at kill_at if still running
    poll: Any = None  # the mailbox's long poll in flight
    swept: float = 0.0  # when every active task was last waited on


@dataclass(slots=True)
class _Task:
    task_id: str  # (not the spec: the task's inputs are not kept once sent)
    summary: Any  # the ObjectRef of the summary
    slots: list[Any]  # the ObjectRefs of the values
    names: tuple[str, ...] | None
    node: str = ""  # the node id, once known
    started: bool = False  # Started was emitted
    received: int = 0  # mailbox items reported
    ended: list[Any] | None = None  # its summary, once it ended
    wait_until: float = 0.0
    kill_at: float = 0.0  # cancelled: when to kill its worker if it still runs
    obj: _Object | None = None  # the remote object it creates or calls
    creating: bool = False
    sent_at: float = 0.0  # when it was handed to Ray
    interrupt_at: float = 0.0  # cancelled: when to ask Ray to interrupt it (0: asked)


@dataclass(slots=True, eq=False)
class _Object:
    """A remote object this backend created (``owned``) or found (a borrowed proxy's)."""

    object_id: str
    type_name: str
    name: str
    restart: bool
    owned: bool
    handle: Any = None  # its actor's handle, once created
    where: str = ""  # its node's name, once created here

    def describe(self) -> str:
        return _describe(self.object_id, self.type_name, self.name)


@dataclass(slots=True)
class _Prepared:
    """A task ready to go: ``send()`` sends it and returns what Ray returned, or the event
    that ends it at once (a close; a call of an object known to be gone)."""

    task_id: str
    send: Callable[[], Any]
    names: tuple[str, ...] | None = None
    obj: _Object | None = None
    creating: bool = False


class RayBackend:
    """Runs tasks on a Ray cluster: each Sperse task is one Ray task (docs/ray.md).

    ``address`` is what ``ray.init`` takes: ``None`` joins the Ray this machine runs (as
    ``RAY_ADDRESS`` or the last ``ray start`` says) or starts a local one, ``"auto"`` joins
    and never starts, ``"HOST:PORT"`` joins that cluster's head, ``"ray://HOST:PORT"`` is Ray
    Client. A Ray this process already runs (``ray.init`` called before) is used as it is,
    and left running by ``close``. A Ray started here listens on 127.0.0.1 only, with
    ``num_cpus``, custom ``resources`` (tags) and the server name ``name``.

    Remote objects are actors (``_ObjectActor``), named in ``OBJECTS_NAMESPACE`` by their
    object id, type and name (``_actor_name``), so that any process of the cluster finds
    them. The actors this backend created are killed when released, closed, or when it
    closes; Ray kills them too when this process exits (they are not detached).
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: int | None = None,
        resources: Mapping[str, float] | None = None,
        name: str | None = None,
        inline_limit: int = 1 << 20,
        init_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.address = address
        self._num_cpus = num_cpus
        self._resources = dict(resources or {})
        self._name = name
        self._inline_limit = inline_limit
        self._init_options = dict(init_options or {})
        self._ray: Any = None
        self._owns_ray = False
        self._sink: EventSink | None = None
        self._cond = threading.Condition()
        self._tasks: dict[str, _Task] = {}
        self._new: list[_Task] = []
        self._cancelling: list[_Task] = []
        self._objects: dict[str, Any] = {}  # object id -> ObjectRef of a held value
        self._nodes: dict[str, _Node] = {}  # node id -> node
        self._nodes_at = -NODES_TTL
        self._nodes_lock = threading.Lock()
        self._functions: dict[tuple[Any, ...], Any] = {}
        self._strategies: dict[str, Any] = {}
        self._round_robin = itertools.count()
        self._counters = dict.fromkeys(
            ("tasks_submitted", "tasks_done", "tasks_failed", "tasks_cancelled"), 0
        )
        self._task_fn: Any = None
        self._mailbox: Any = None
        self._mailbox_name = ["", ""]  # namespace, name
        self._thread: threading.Thread | None = None
        self._closed = False
        self._broken: SperseError | None = None  # the I/O thread failed: no more tasks
        self._immediate: list[tuple[_Task, Done | Failed]] = []  # ended when submitted
        self._remote_objects: dict[str, _Object] = {}  # object id -> a live remote object
        self._gone: dict[str, str] = {}  # object id -> what became of it (for messages)
        self._actor_class: Any = None

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self, sink: EventSink) -> None:
        if self._thread is not None:
            raise SperseError("this RayBackend is already started")
        ray = import_ray()
        self._ray = ray
        if ray.is_initialized():
            self._check_joined(ray)
        else:
            self._init(ray)
        try:
            self._task_fn = ray.remote(_run_task)
            namespace = ray.get_runtime_context().namespace
            name = f"sperse-mailbox-{uuid.uuid4().hex[:12]}"
            self._mailbox = (
                ray.remote(_Mailbox)
                .options(name=name, namespace=namespace, num_cpus=0, max_concurrency=1000)
                .remote()
            )
            self._mailbox_name = [namespace, name]
            self._refresh_nodes()
            self._wait_for_mailbox(ray)
        except BaseException:
            if self._mailbox is not None:  # in a Ray that stays, nothing of ours may stay
                with contextlib.suppress(Exception):
                    ray.kill(self._mailbox)
                self._mailbox = None
            self._shutdown_ray()
            raise
        self._sink = sink
        self._thread = threading.Thread(target=self._run, name="sperse-ray-io", daemon=True)
        self._thread.start()

    def _init(self, ray: Any) -> None:
        options: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
        address = self.address
        if address is None and _existing_cluster() is None:
            address = "local"
        if address == "local":
            options.update(include_dashboard=False, _node_ip_address="127.0.0.1")
            if self._num_cpus is not None:
                options["num_cpus"] = self._num_cpus
            if self._resources:
                options["resources"] = self._resources
            if self._name:
                options["labels"] = {NAME_LABEL: self._name}
        options.update(self._init_options)
        try:
            ray.init(address=address, **options)
        except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:
            where = address or "the Ray this machine runs"
            auth = ""
            if address not in (None, "auto", "local") and "RAY_AUTH_MODE" not in os.environ:
                auth = (
                    "; a cluster with token authentication (the default of a Ray started by "
                    "ray.init) also needs RAY_AUTH_MODE=token here, and its token in "
                    "~/.ray/auth_token or RAY_AUTH_TOKEN"
                )
            raise ServerUnavailable(
                f"cannot join Ray at {where}: {_first_line(exc)}. Start it (`ray start "
                "--head`), check the address (HOST:PORT of the head, ray://HOST:PORT for Ray "
                f"Client), or omit it to start a local Ray{auth}"
            ) from exc
        self._owns_ray = True

    def _wait_for_mailbox(self, ray: Any) -> None:
        """Wait until the mailbox actor runs: its first output is then live, and a cluster
        that cannot run Sperse's code (not installed on its nodes) is an error now."""
        try:
            ray.get(self._mailbox.take.remote(0), timeout=START_TIMEOUT)
        except Exception as exc:
            raise ServerUnavailable(
                f"the Ray cluster cannot start Sperse's mailbox actor: {_first_line(exc)}. "
                "Is sperse installed on every node (pip install sperse), in the same version?"
            ) from exc

    def _check_joined(self, ray: Any) -> None:
        """This process runs Ray already: it must be the Ray ``address`` names."""
        address = self.address
        if address in (None, "auto"):
            return
        joined = "Ray Client" if ray.util.client.ray.is_connected() else ""
        if not joined:
            joined = str(ray.get_runtime_context().gcs_address)
            if address == joined:
                return
        raise SperseError(
            f"this process runs Ray already ({joined}), so it cannot join Ray at {address}: "
            "a process joins one Ray at a time. Call ray.shutdown() first, or connect "
            "without an address to use the Ray it runs"
        )

    def close(self) -> None:
        """Fail what is unfinished, stop the I/O thread, and leave Ray (stopping it if it was
        started here)."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10)
        if self._mailbox is not None:
            with contextlib.suppress(Exception):
                self._ray.kill(self._mailbox)
            self._mailbox = None
        with self._cond:
            self._objects.clear()
            owned = [o for o in self._remote_objects.values() if o.owned]
        for obj in owned:  # a shared cluster keeps no object of a client that left
            self._forget(obj, "is gone: the client that created it closed its cluster", True)
        self._shutdown_ray()

    def _shutdown_ray(self) -> None:
        if self._owns_ray:
            self._owns_ray = False
            with contextlib.suppress(Exception):
                self._ray.shutdown()

    # ---- the Backend protocol (any thread) ---------------------------------------------------

    def submit(self, specs: Sequence[TaskSpec]) -> None:
        self._require_started()
        for spec in specs:
            if spec.pip:
                raise EnvUnavailable(
                    f"{spec.label or spec.task_id}: env={{'pip': [...]}} is for sperse servers;"
                    " on Ray, give the cluster a runtime_env (ray.init(runtime_env=...))"
                )
        prepared = [self._prepare(spec) for spec in specs]  # raises before anything is sent
        for ready in prepared:
            sent = ready.send()
            ended = sent if isinstance(sent, Done | Failed) else None
            if ended is not None:
                task = _Task(ready.task_id, None, [], None, obj=ready.obj)
            else:
                summary, slots = (sent[0], list(sent[1:])) if isinstance(sent, list) else (sent, [])
                task = _Task(ready.task_id, summary, slots, ready.names, sent_at=_now())
                task.obj, task.creating = ready.obj, ready.creating
            with self._cond:
                if self._closed or self._broken is not None:
                    # Not cancelled: a task cancelled as it is pushed to a worker can abort
                    # Ray's driver (see cancel); its result is never read.
                    stray = ready.obj if ready.creating else None
                else:
                    self._tasks[ready.task_id] = task
                    if ended is not None:
                        self._immediate.append((task, ended))
                    else:
                        self._new.append(task)
                    self._counters["tasks_submitted"] += 1
                    self._cond.notify_all()
                    continue
            if stray is not None:  # created as the backend closed: it must not stay
                self._forget(stray, "is gone: the Ray backend is closed", True)
            raise self._broken or ServerLost("the Ray backend is closed")

    def cancel(self, task_id: str) -> None:
        """Interrupt the task (``KeyboardInterrupt`` in it); if it is still running
        ``CANCEL_GRACE`` seconds later (Ray's interrupt waits for a blocking call such as
        ``time.sleep`` to return), kill its worker."""
        with self._cond:
            task = self._tasks.get(task_id)
            if task is None or task.kill_at or task.summary is None:
                return
            if task.obj is None:  # a call of a remote object: its actor is never killed
                # Ray (2.60) can abort the driver ("Tried to complete task that was not
                # pending") when a task is cancelled while it is being pushed to a worker,
                # so a task cancelled just after it was sent is interrupted only once it
                # has had CANCEL_SETTLE seconds to get there (its result is dropped anyway).
                task.interrupt_at = max(_now(), task.sent_at + CANCEL_SETTLE)
                task.kill_at = task.interrupt_at + CANCEL_GRACE
                self._cancelling.append(task)
                self._cond.notify_all()
                return
        with contextlib.suppress(Exception):  # already over: nothing to cancel
            self._ray.cancel(task.summary, force=False, recursive=True)

    def release(self, object_ids: Iterable[str]) -> None:
        """Drop held values; kill the actors of remote objects this backend created."""
        released: list[_Object] = []
        with self._cond:
            for object_id in object_ids:
                if self._objects.pop(object_id, None) is not None:
                    continue
                obj = self._remote_objects.get(object_id)
                if obj is not None and obj.owned:
                    released.append(obj)
                elif obj is None and object_id not in self._gone:
                    # An object released before its creation was sent: it never will be.
                    self._remember(object_id, f"{_describe(object_id, '', '')} was released")
        for obj in released:
            self._forget(obj, "was released (its proxy was garbage-collected)", True)

    def objects(self, name: str = "") -> list[ObjectInfo]:
        """The remote objects of the Ray cluster, every client's (only the one called
        ``name``, if given): the actors in ``OBJECTS_NAMESPACE``, as each describes itself.
        One that does not answer within ``INFO_TIMEOUT`` (being created, or dying) is left
        out."""
        self._require_started()
        ray = self._ray
        asked: list[tuple[_ActorName, Any, Any]] = []
        for entry in self._object_actors():
            if (name and entry.name != name) or self._gone_reason(entry.object_id):
                continue
            try:
                handle = ray.get_actor(entry.actor_name, namespace=OBJECTS_NAMESPACE)
            except ValueError:  # gone since it was listed
                continue
            asked.append(
                (entry, handle, handle.info.options(concurrency_group=_INFO_GROUP).remote())
            )
        if asked:
            refs = [ref for _, _, ref in asked]
            ray.wait(refs, num_returns=len(refs), timeout=INFO_TIMEOUT)
        found: list[ObjectInfo] = []
        for entry, handle, ref in asked:
            try:
                pid, calls, built, node_id, methods, concurrency, restart = ray.get(ref, timeout=0)
            except Exception:  # it died, or has not answered yet
                continue
            if built:
                found.append(
                    ObjectInfo(
                        entry.object_id,
                        self._where(node_id),
                        entry.name,
                        entry.type_name,
                        tuple(methods),
                        concurrency,
                        restart,
                        calls,
                        _restarts(handle),
                        pid,
                    )
                )
        return found

    def servers(self) -> list[ServerInfo]:
        nodes = self._current_nodes()
        with self._cond:
            busy: dict[str, int] = {}
            for task in self._tasks.values():
                if task.node and task.ended is None:
                    busy[task.node] = busy.get(task.node, 0) + 1
        out = []
        for node in nodes.values():
            info = node.info
            out.append(
                ServerInfo(
                    info.name,
                    info.tags,
                    info.resources,
                    workers=info.workers,
                    busy=busy.get(node.node_id, 0),
                    address=info.address,
                )
            )
        return out

    def stats(self) -> dict[str, int]:
        with self._cond:
            counters = dict(self._counters)
            counters["tasks_running"] = len(self._tasks)
            counters["objects_held"] = len(self._objects)
            counters["remote_objects"] = sum(o.owned for o in self._remote_objects.values())
        counters["nodes"] = len(self._current_nodes())
        return counters

    # ---- submitting --------------------------------------------------------------------------

    def _require_started(self) -> None:
        if self._thread is None:
            raise SperseError("RayBackend.start() was not called")
        if self._closed:
            raise ServerLost("the Ray backend is closed")
        if self._broken is not None:
            raise self._broken

    def _prepare(self, spec: TaskSpec) -> _Prepared:
        work = spec.work
        if isinstance(work, ObjectCreate):
            return self._prepare_create(spec, work)
        if isinstance(work, ObjectCall):
            return self._prepare_call(spec, work)
        if isinstance(work, ObjectClose):
            return self._prepare_close(spec, work)
        options = self._placement_options(spec.placement, spec.label or spec.task_id)
        names = work.defs if isinstance(work, StatementTask) and not work.is_expression else None
        header, held = self._header(spec, names)
        returns = 1 + (len(names) if names is not None else 1)
        fn = self._function(returns, spec.retries, options)
        return _Prepared(spec.task_id, functools.partial(fn.remote, header, *held), names)

    def _header(self, spec: TaskSpec, names: tuple[str, ...] | None) -> tuple[list[Any], list[Any]]:
        """The one argument of ``_run_task`` (and of an object's ``call``) for ``spec``, and
        the held values it refers to (the arguments after it)."""
        what = spec.label or spec.task_id
        with sending_to(*self._mailbox_name, via="ray"):  # callbacks come back by the mailbox
            data, buffers, refs = dumps_work_oob(spec.work, spec.label or "the task")
        ref_ids = list(dict.fromkeys(r.object_id for r in refs))
        with self._cond:
            held = [self._objects.get(object_id) for object_id in ref_ids]
        if any(ref is None for ref in held):
            raise SerializationError(
                f"{what}: an input is a remote value that this Ray backend does not hold (it "
                "was released, or comes from another cluster): fetch it, or compute it again"
            )
        header = [
            data,
            buffers,  # PickleBuffers: Ray sends them out of band
            ref_ids,
            spec.task_id,
            *self._mailbox_name,
            self._inline_limit,
            list(names) if names is not None else None,
        ]
        return header, held

    def _function(self, returns: int, retries: int, options: tuple[Any, ...]) -> Any:
        key = (returns, retries, options)
        fn = self._functions.get(key)
        if fn is None:
            kwargs: dict[str, Any] = {
                "num_returns": returns,
                "max_retries": retries,
                "retry_exceptions": False,
                **self._ray_resources(options),
            }
            fn = self._task_fn.options(**kwargs)
            if len(self._functions) > 256:
                self._functions.clear()
            self._functions[key] = fn
        return fn

    def _ray_resources(self, options: tuple[Any, ...]) -> dict[str, Any]:
        """Ray's options of a task or an actor for what ``_placement_options`` returned."""
        num_cpus, num_gpus, resources, node_id = options
        kwargs: dict[str, Any] = {}
        if num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
        if num_gpus is not None:
            kwargs["num_gpus"] = num_gpus
        if resources:
            kwargs["resources"] = dict(resources)
        if node_id:
            kwargs["scheduling_strategy"] = self._affinity(node_id)
        return kwargs

    # ---- remote objects ----------------------------------------------------------------------

    def _prepare_create(self, spec: TaskSpec, work: ObjectCreate) -> _Prepared:
        """An actor placed as a task would be, whose creation reports like a task (``created``
        returns a task's summary). Without ``resources`` it takes Ray's default for actors: a
        CPU to be placed, none while it lives."""
        task_id, object_id = spec.task_id, work.object_id
        options = self._placement_options(spec.placement, spec.label or task_id)
        obj = _Object(object_id, work.type_name, work.name, work.restart, owned=True)
        refused = self._gone_reason(object_id)
        if not refused and work.name:
            twin = next((e for e in self._object_actors() if e.name == work.name), None)
            if twin is not None and not self._gone_reason(twin.object_id):
                refused = (
                    f"a remote object named {work.name!r} exists already in this Ray cluster "
                    f"({twin.type_name} {twin.object_id[:8]}): close it, or choose another name"
                )
        if refused:
            info = ErrorInfo("raised", "ValueError", refused)
            return _Prepared(task_id, lambda: Failed(task_id, "", info))
        header, held = self._header(spec, None)
        actor_options = {
            "name": _actor_name(object_id, work.type_name, work.name),
            "namespace": OBJECTS_NAMESPACE,
            "max_concurrency": max(1, work.max_concurrency),
            "max_restarts": -1 if work.restart else 0,
            "max_task_retries": 0,  # a call in flight when its process dies fails
            **self._ray_resources(options),
        }

        def send() -> Any:
            if self._actor_class is None:
                concurrency_groups = {_INFO_GROUP: 1}
                self._actor_class = self._ray.remote(concurrency_groups=concurrency_groups)(
                    _ObjectActor
                )
            obj.handle = self._actor_class.options(**actor_options).remote(header, *held)
            with self._cond:
                self._remote_objects[object_id] = obj
            return obj.handle.created.options(num_returns=2).remote()

        return _Prepared(task_id, send, obj=obj, creating=True)

    def _prepare_call(self, spec: TaskSpec, work: ObjectCall) -> _Prepared:
        task_id = spec.task_id
        header, held = self._header(spec, None)
        obj, gone = self._object_of(work.object_id)
        if obj is None:
            info = ErrorInfo("object_lost", "ObjectLost", gone)
            return _Prepared(task_id, lambda: Failed(task_id, "", info))
        method = obj.handle.call.options(num_returns=2)
        return _Prepared(task_id, functools.partial(method.remote, header, *held), obj=obj)

    def _prepare_close(self, spec: TaskSpec, work: ObjectClose) -> _Prepared:
        """Kill the actor (whoever created it), and end the task at once."""
        task_id = spec.task_id
        obj, _ = self._object_of(work.object_id)

        def send() -> Done:
            if obj is None:
                return Done(task_id, "", None)  # gone already
            self._forget(obj, "was closed", True)
            return Done(task_id, obj.where, None)

        return _Prepared(task_id, send)

    def _object_of(self, object_id: str) -> tuple[_Object | None, str]:
        """The live object ``object_id`` (one this backend does not know yet is looked up in
        Ray by its actor's name), or None and what became of it."""
        with self._cond:
            obj = self._remote_objects.get(object_id)
            gone = self._gone.get(object_id, "")
        if obj is not None or gone:
            return obj, gone
        missing = (
            f"{_describe(object_id, '', '')} does not exist in this Ray cluster: it was closed "
            "or released, its process died, or the client that created it left"
        )
        entry = next((e for e in self._object_actors() if e.object_id == object_id), None)
        if entry is None:
            return None, missing
        try:
            handle = self._ray.get_actor(entry.actor_name, namespace=OBJECTS_NAMESPACE)
        except ValueError:  # gone since it was listed
            return None, missing
        found = _Object(object_id, entry.type_name, entry.name, False, owned=False, handle=handle)
        with self._cond:
            return self._remote_objects.setdefault(object_id, found), ""

    def _object_actors(self) -> list[_ActorName]:
        """The actors of remote objects in the Ray cluster (every client's)."""
        try:
            listed = self._ray.util.list_named_actors(all_namespaces=True)
        except Exception as exc:
            raise ServerLost(f"cannot list the remote objects of the Ray cluster: {exc}") from exc
        found = []
        for entry in listed:
            if entry.get("namespace") == OBJECTS_NAMESPACE:
                parsed = _parse_actor_name(str(entry.get("name", "")))
                if parsed is not None:
                    found.append(parsed)
        return found

    def _forget(self, obj: _Object, reason: str, kill: bool) -> None:
        """``obj`` is gone (``reason`` says how, after its description): later calls fail
        with that at once; ``kill``: end its actor (never to be restarted)."""
        with self._cond:
            if self._remote_objects.get(obj.object_id) is obj:
                del self._remote_objects[obj.object_id]
            self._remember(obj.object_id, f"{obj.describe()} {reason}")
            handle, obj.handle = obj.handle, None
        if kill and handle is not None:
            with contextlib.suppress(Exception):  # dead already
                self._ray.kill(handle, no_restart=True)

    def _remember(self, object_id: str, message: str) -> None:
        """(Under the lock.) What became of a gone object, for the calls still to come."""
        gone = self._gone
        gone.pop(object_id, None)
        gone[object_id] = message
        while len(gone) > _GONE_KEPT:
            del gone[next(iter(gone))]

    def _gone_reason(self, object_id: str) -> str:
        with self._cond:
            return self._gone.get(object_id, "")

    def _object_lost(self, task: _Task, obj: _Object, exc: BaseException) -> ErrorInfo:
        """A call's (or the creation's) ``RayActorError`` as Sperse's error: the object is
        gone, or (restarted) has lost its state; the message names it."""
        known = self._gone_reason(obj.object_id)
        if known:
            return ErrorInfo("object_lost", "ObjectLost", known)
        errors = self._ray.exceptions
        cause = _first_line(exc)
        if isinstance(exc, errors.ActorUnavailableError) and (obj.restart or not obj.owned):
            message = (
                f"{obj.describe()} lost this call and its state: its process died while the "
                f"call ran ({cause}). Created with restart=True, it is rebuilt from its "
                "constructor's arguments, its state reset; later calls go to the new one"
            )
            return ErrorInfo("object_lost", "ObjectLost", message)
        text = str(exc)
        if task.creating:
            reason = f"could not be created: its process died ({cause})"
        elif "ray.kill" in text:
            reason = "was closed or released (by the client that created it, or a proxy of it)"
        elif "owner" in text:
            reason = "is gone: the client that created it left"
        else:
            reason = (
                f"is lost: its process died ({cause}). Create it with restart=True to have it "
                "rebuilt when that happens"
            )
        self._forget(obj, reason, obj.owned)
        return ErrorInfo("object_lost", "ObjectLost", f"{obj.describe()} {reason}")

    def _affinity(self, node_id: str) -> Any:
        strategy = self._strategies.get(node_id)
        if strategy is None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            strategy = NodeAffinitySchedulingStrategy(node_id, soft=False)
            self._strategies[node_id] = strategy
        return strategy

    def _placement_options(self, placement: Placement, what: str) -> tuple[Any, ...]:
        """``(num_cpus, num_gpus, resources, node id)`` for Ray, or ``NoMatchingServer``.

        Tags are custom resources: a conjunction of tags asks for ``TAG_SHARE`` of each (Ray
        then places the task); other tag expressions (``!``, ``|``) pin to a node that
        matches. A pin is node affinity. Checked against the nodes up front: a task that no
        node can run is an error now, not a task that Ray keeps waiting.
        """
        if placement.pin is None and placement.tags is None and not placement.resources:
            return _ANYWHERE
        nodes = self._current_nodes()
        servers = [n.info for n in nodes.values()]
        needs = dict(placement.resources)
        runnable = replace(placement, resources=Resources({"CPU": 1.0, **needs}))
        fits = eligible(runnable, servers)
        if not fits:
            nodes = self._current_nodes(refresh=True)
            servers = [n.info for n in nodes.values()]
            fits = eligible(runnable, servers)
        if not fits:
            if eligible(placement, servers):
                raise NoMatchingServer(
                    f"{what}: every Ray node matching [{placement}] has no CPU for tasks"
                )
            raise NoMatchingServer(no_match_message(placement, servers, what))
        num_cpus = needs.pop("CPU", None)
        num_gpus = needs.pop("GPU", None)
        node_id = ""
        if placement.pin is not None:
            node_id = next(n.node_id for n in nodes.values() if n.info.name == placement.pin)
        elif placement.tags is not None:
            tags = _conjunction(placement.tags)
            if tags is None:
                if len(fits) < len(servers):
                    chosen = fits[next(self._round_robin) % len(fits)]
                    node_id = next(n.node_id for n in nodes.values() if n.info is chosen)
            else:
                for tag in tags:
                    if tag == "GPU":
                        num_gpus = max(num_gpus or 0.0, TAG_SHARE)
                    else:
                        needs[tag] = max(needs.get(tag, 0.0), TAG_SHARE)
        return (num_cpus, num_gpus, tuple(sorted(needs.items())), node_id)

    # ---- the cluster's nodes ---------------------------------------------------------------

    def _current_nodes(self, *, refresh: bool = False) -> dict[str, _Node]:
        with self._nodes_lock:
            stale = refresh or time.monotonic() - self._nodes_at > NODES_TTL
            if stale and not self._closed:  # (closed: Ray calls would start a new Ray)
                self._refresh_nodes()
            return self._nodes

    def _refresh_nodes(self) -> None:
        try:
            listed = [n for n in self._ray.nodes() if n.get("Alive")]
        except Exception as exc:
            if self._nodes:
                return  # keep the last snapshot: the head may be busy
            raise ServerLost(f"cannot list the nodes of the Ray cluster: {exc}") from exc
        self._nodes = _nodes_of(listed)
        self._nodes_at = time.monotonic()

    def _where(self, node_id: str) -> str:
        node = self._nodes.get(node_id)
        if node is None:
            node = self._current_nodes(refresh=True).get(node_id)
        return node.info.name if node is not None else node_id[:8]

    # ---- the I/O thread ----------------------------------------------------------------------

    def _run(self) -> None:
        loop = _Loop()
        try:
            while self._turn(loop):
                pass
        except Exception as exc:  # a bug here must not leave every task pending forever
            log.exception("the Ray backend's I/O thread failed")
            with self._cond:
                self._broken = SperseError(f"the Ray backend's I/O thread failed: {exc!r}")
        self._fail_unfinished()

    def _turn(self, loop: _Loop) -> bool:
        """One turn of the I/O thread: wait (at most ``WAIT_SLICE``) for tasks to end, and
        report what happened. False once closed. The tasks that ended are locals, dropped on
        return: they hold ObjectRefs that Ray frees once nobody does."""
        with self._cond:
            while not (self._closed or self._new or self._immediate or loop.active or loop.waiting):
                self._cond.wait()
            if self._closed:
                return False
            new, self._new = self._new, []
            immediate, self._immediate = self._immediate, []
            loop.cancelling += self._cancelling
            self._cancelling.clear()
        for task, event in immediate:
            if isinstance(event, Done):
                assert self._sink is not None
                self._sink(Started(task.task_id, event.where))
            self._end(task, event)
        loop.active.update((t.summary, t) for t in new)
        if loop.cancelling:
            loop.cancelling = self._kill_stuck(loop.cancelling, loop.active)
        if loop.poll is None and self._mailbox is not None:
            loop.poll = self._mailbox.take.remote(MAILBOX_POLL)
        active, waiting = loop.active, loop.waiting
        if len(active) <= WINDOW:
            refs = list(active)
        elif _now() - loop.swept >= SWEEP_EVERY:
            refs, loop.swept = list(active), _now()
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
            slice_ = max(0.0, min(slice_, min(deadlines) - _now()))
        wanted = 1 if few else len(refs)
        ready, _ = self._ray.wait(refs, num_returns=wanted, timeout=slice_, fetch_local=False)
        if loop.poll is not None and loop.poll in ready:
            ready.remove(loop.poll)
            items, loop.poll = self._get_one(loop.poll), None
            if isinstance(items, list):
                self._on_mailbox(items, waiting)
            else:  # the mailbox is gone: results no longer wait for output
                log.warning("the Ray backend's mailbox failed: %s", items)
                self._mailbox = None
                for task in list(waiting):
                    self._finish(task, waiting)
        ended = [active.pop(ref) for ref in ready]
        if ended:
            self._on_ended(ended, waiting)
        if waiting:
            now = _now()
            for task in [t for t in waiting if t.wait_until <= now]:
                self._finish(task, waiting)
        return True

    def _kill_stuck(self, cancelling: list[_Task], active: dict[Any, _Task]) -> list[_Task]:
        """Kill the workers of cancelled tasks past their grace; the rest still wait."""
        now = _now()
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

    def _on_mailbox(self, items: list[Any], waiting: list[_Task]) -> None:
        sink = self._sink
        assert sink is not None
        with self._cond:
            tasks = self._tasks
            found = [(tasks.get(item[0]), item) for item in items]
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
                sink(Started(task_id, self._where(node_id)))
            if kind == "output":
                sink(Output(task_id, self._where(node_id), stream, text))
            if task.ended is not None and task.received >= task.ended[1]:
                self._finish(task, waiting)

    def _on_ended(self, ended: list[_Task], waiting: list[_Task]) -> None:
        try:
            summaries: list[Any] = self._ray.get([t.summary for t in ended])
        except Exception:
            summaries = [self._get_one(t.summary) for t in ended]
        for task, summary in zip(ended, summaries, strict=True):
            if isinstance(summary, BaseException):
                obj = task.obj
                if obj is not None and isinstance(summary, self._ray.exceptions.RayActorError):
                    self._fail(task, self._object_lost(task, obj, summary))
                else:
                    self._fail(task, _ray_error(summary, task.node))
                continue
            task.ended = summary
            if task.received >= summary[1]:
                self._finish(task, None)
            else:  # output is still on its way through the mailbox
                task.wait_until = _now() + OUTPUT_GRACE
                waiting.append(task)

    def _finish(self, task: _Task, waiting: list[_Task] | None) -> None:
        """Report a task that ended with a summary: start, last output, then the outcome."""
        if waiting is not None:
            waiting.remove(task)
        sink = self._sink
        assert sink is not None and task.ended is not None
        node_id, _, tail, ok, payload = task.ended
        task.node = node_id
        task_id = task.task_id
        where = self._where(node_id)
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
                value = self._value(payload[0], task.slots[0], where)
            else:
                slot_of = {name: i for i, name in enumerate(task.names)}
                value = {
                    name: self._value(entry, task.slots[slot_of[name]], where)
                    for name, entry in payload
                }
        except SperseError as exc:
            info = ErrorInfo("serialization", type(exc).__name__, str(exc))
            self._end(task, Failed(task_id, where, info))
            return
        self._end(task, Done(task_id, where, value))

    def _value(self, entry: tuple[Any, ...], slot: Any, where: str) -> Any:
        if entry[0] == "inline":
            _, data, buffers = entry
            copies: list[Any] = [bytearray(b) for b in buffers]  # writable, as elsewhere
            return loads_oob(data, copies, what=f"a result from {where}")
        _, type_name_, size, text = entry
        object_id = slot.hex()
        handle = RemoteValue(RemoteRef(object_id, where, type_name_, size, text), self._fetch)
        with self._cond:
            self._objects[object_id] = slot
        weakref.finalize(handle, self._release_one, object_id)
        return handle

    def _fail(self, task: _Task, info: ErrorInfo) -> None:
        where = self._where(task.node) if task.node else ""
        self._end(task, Failed(task.task_id, where, info))

    def _end(self, task: _Task, event: Done | Failed) -> None:
        obj = task.obj
        if obj is not None and task.creating:
            if isinstance(event, Done):
                obj.where = event.where
            elif not self._gone_reason(obj.object_id):  # its actor is of no use
                self._forget(
                    obj, f"does not exist: its creation failed: {event.error.message}", True
                )
        with self._cond:
            self._tasks.pop(task.task_id, None)
            if isinstance(event, Done):
                self._counters["tasks_done"] += 1
            elif event.error.kind == "cancelled":
                self._counters["tasks_cancelled"] += 1
            else:
                self._counters["tasks_failed"] += 1
        sink = self._sink
        assert sink is not None
        sink(event)

    def _fail_unfinished(self) -> None:
        """End every task not ended yet (the I/O thread stops): cancel it, report it failed."""
        with self._cond:
            left = list(self._tasks.values())
            self._new.clear()
            broken = self._broken
        if broken is not None:
            info = ErrorInfo("internal", "SperseError", f"{broken}; see the log")
        else:
            message = "the Ray backend was closed before the task ended"
            info = ErrorInfo("server_lost", "ServerLost", message)
        # Leave no work running in a shared cluster: cancel what is left, but nothing sent
        # less than CANCEL_SETTLE ago (see cancel): wait until it is that old.
        youngest = max((t.sent_at for t in left if t.summary is not None), default=0.0)
        settle = youngest + CANCEL_SETTLE - _now()
        if settle > 0:
            time.sleep(min(settle, CANCEL_SETTLE))
        for task in left:
            if task.summary is not None:
                with contextlib.suppress(Exception):
                    self._ray.cancel(task.summary, force=True, recursive=True)
            self._fail(task, info)

    # ---- held values ---------------------------------------------------------------------------

    def _fetch(self, ref: RemoteRef, timeout: float | None) -> Any:
        with self._cond:
            object_ref = self._objects.get(ref.object_id)
        if self._closed:
            raise ServerLost(
                f"{ref.type_name} held on {ref.server} is gone: the Ray backend is closed"
            )
        if object_ref is None:
            raise SperseError(f"{ref.type_name} held on {ref.server} was released")
        ray = self._ray
        try:
            data, buffers = ray.get(object_ref, timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            raise TimeoutError(
                f"fetching {ref.type_name} from {ref.server} took more than {timeout} s"
            ) from None
        except ray.exceptions.RayError as exc:
            raise ServerLost(
                f"{ref.type_name} held on {ref.server} is lost: {_first_line(exc)}. Compute it "
                "again (give the task retries to have Ray rebuild lost values)"
            ) from exc
        what = f"{ref.type_name} fetched from {ref.server}"
        return loads_oob(data, _buffers(buffers, self._inline_limit), what=what)

    def _release_one(self, object_id: str) -> None:
        self.release([object_id])


# ==== helpers ===================================================================================


_ANYWHERE: Final[tuple[Any, ...]] = (None, None, (), "")


def _now() -> float:
    return time.monotonic()


def _existing_cluster() -> str | None:
    """The address of the Ray this machine runs (``RAY_ADDRESS``, ``ray start``), if any."""
    try:
        from ray._private.services import canonicalize_bootstrap_address

        found = canonicalize_bootstrap_address(None)  # type: ignore[arg-type]  # None: look
    except Exception:
        return None
    return str(found) if found else None


def _conjunction(expr: TagExpr) -> list[str] | None:
    """The tags of ``a & b & ...``; None for an expression with ``!`` or ``|``."""
    if isinstance(expr, Tag):
        return [expr.name]
    if isinstance(expr, And):
        left, right = _conjunction(expr.left), _conjunction(expr.right)
        if left is not None and right is not None:
            return left + right
    return None


def _nodes_of(listed: list[dict[str, Any]]) -> dict[str, _Node]:
    """Ray's node records as servers: named by their ``sperse/name`` label, else by the first
    8 hex digits of their node id; tags are their custom resources."""
    named: list[tuple[str, dict[str, Any]]] = []
    for record in listed:
        node_id = str(record["NodeID"])
        labels = record.get("Labels") or {}
        named.append((str(labels.get(NAME_LABEL) or node_id[:8]), record))
    counts: dict[str, int] = {}
    for name, _ in named:
        counts[name] = counts.get(name, 0) + 1
    nodes: dict[str, _Node] = {}
    for name, record in named:
        node_id = str(record["NodeID"])
        if counts[name] > 1:
            name = f"{name}-{node_id[:8]}"  # two nodes labelled alike: both stay reachable
        total: dict[str, float] = {
            k: float(v) for k, v in (record.get("Resources") or {}).items() if ":" not in k
        }
        tags = frozenset(k for k, v in total.items() if k not in _NOT_TAGS and v > 0)
        resources = {k: v for k, v in total.items() if k not in _NOT_RESOURCES}
        address = str(record.get("NodeManagerAddress", ""))
        info = ServerInfo(
            name,
            tags,
            resources,
            workers=int(total.get("CPU", 0)),
            address=f"ray node {node_id[:8]} at {address}",
        )
        nodes[node_id] = _Node(node_id, info)
    return nodes


def _describe(object_id: str, type_name: str, name: str) -> str:
    """A remote object as ``ObjectProxy`` names it: ``remote object 'hits' (Counter 1a2b3c4d)``."""
    named = f" {name!r}" if name else ""
    kind = f"{type_name} " if type_name else ""
    return f"remote object{named} ({kind}{object_id[:8]})"


@dataclass(frozen=True, slots=True)
class _ActorName:
    """What the name of a remote object's actor says: ``OBJECT_ID/TYPE/NAME``."""

    actor_name: str
    object_id: str
    type_name: str
    name: str


def _actor_name(object_id: str, type_name: str, name: str) -> str:
    return f"{object_id}/{type_name}/{name}"


def _parse_actor_name(actor_name: str) -> _ActorName | None:
    parts = actor_name.split("/", 2)
    if len(parts) != 3 or not parts[0]:
        return None
    return _ActorName(actor_name, *parts)


def _restarts(handle: Any) -> int:
    """How often Ray rebuilt an actor (from the GCS's actor table; 0 if it cannot say)."""
    try:
        from ray._private import state

        record = state.actors(handle._actor_id.hex())
        return int(record.get("NumRestarts", 0))
    except Exception:
        return 0


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _ray_error(exc: BaseException, node_id: str) -> ErrorInfo:
    """A Ray exception from ``ray.get`` of a task's summary, as Sperse's error data.

    User code's exceptions never get here (``_run_task`` reports them as data); these are the
    task's fate in Ray: cancelled, its worker or node died, it could not be scheduled.
    """
    ray = import_ray()
    errors = ray.exceptions
    where = f" on Ray node {node_id[:8]}" if node_id else ""
    kind: ErrorKind
    if isinstance(exc, errors.TaskCancelledError):
        return ErrorInfo("cancelled", "TaskCancelled", "cancelled")
    if isinstance(exc, errors.RayTaskError):
        cause = exc.cause if isinstance(exc.cause, BaseException) else None
        name = type_name(cause) if cause is not None else exc.function_name
        if isinstance(cause, KeyboardInterrupt | errors.TaskCancelledError):
            return ErrorInfo("cancelled", "TaskCancelled", "cancelled")
        message = str(cause) if cause is not None else _first_line(exc)
        return ErrorInfo("raised", name, message, str(exc.traceback_str))
    if isinstance(exc, errors.OutOfMemoryError):
        kind, message = "worker_died", f"Ray killed its worker{where} to free memory"
    elif isinstance(exc, errors.WorkerCrashedError):
        kind, message = "worker_died", f"the Ray worker running it died{where}"
    elif isinstance(exc, errors.NodeDiedError | errors.LocalRayletDiedError):
        kind, message = "server_lost", f"the Ray node running it died{where}"
    elif isinstance(exc, errors.TaskUnschedulableError):
        kind, message = "server_lost", "no Ray node can run it now (its pinned node left?)"
    elif isinstance(exc, errors.ObjectLostError):
        kind, message = "server_lost", "an input held in Ray was lost"
    else:
        kind, message = "internal", f"Ray failed to run it{where}"
    return ErrorInfo(kind, type(exc).__name__, f"{message}: {_first_line(exc)}")
