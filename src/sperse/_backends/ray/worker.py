"""Worker side: what runs inside a Ray worker process for a task (docs/ray.md, "The
mapping"; the formats are :mod:`.protocol`'s).

``_run_task`` is the Ray remote function of every Sperse task: ``execute(work)`` from the
shared runner, with the task's output relayed (:mod:`.relay`), and the result or the error
coming back as data in a summary and value slots. ``run_work`` is the part shared with the
calls of remote objects (:mod:`.actors`): load the work, run it, answer with a summary.

Importing this module registers what remote code on Ray reaches through ``_core``: how a
callback calls back (``SENDERS["ray"]``) and the per-node store (:mod:`.state` appends its
provider to ``sperse._state.PROVIDERS``). Remote code runs with ``sperse.current()`` set
(``running_nested``) to a backend of its worker, started on first use: the class the driver
module names with ``nested_backends_are`` (it imports this module, so this one cannot import
it; the package's ``__init__`` imports the driver, and Python runs it before any module of
the package, so every worker that loads ``_run_task`` has it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sperse._backends.ray.errors import first_line
from sperse._backends.ray.imports import import_ray
from sperse._backends.ray.protocol import unpickle_buffers
from sperse._backends.ray.relay import worker_relay
from sperse._backends.ray.state import node_state as node_state  # registers the store
from sperse._core import ErrorInfo, EventSink, ObjectInfo, ServerInfo, TaskSpec
from sperse._core.backend import Backend
from sperse._core.callbacks import SENDERS
from sperse._core.nested import running_nested, stop_nested
from sperse._exec.runner import (
    cannot_send_back,
    encode_error,
    execute,
    short_repr,
    type_name,
    work_from_wire,
)
from sperse._serialize import describe, dumps, dumps_oob, loads_oob
from sperse.errors import ClientGone, SerializationError

__all__ = [
    "Failure",
    "_run_task",
    "call_back",
    "nested_backends_are",
    "run_user_code",
    "run_work",
]


class Failure(Exception):
    """The work failed: ``info`` is its error, as data, for the summary."""

    def __init__(self, info: ErrorInfo) -> None:
        super().__init__(info.message)
        self.info = info


def _run_task(header: list[Any], *held: list[Any]) -> Any:
    """One Sperse task inside a Ray worker: ``header`` and ``held`` as :mod:`.protocol`
    describes them; returns the summary and the value slots. (Named as before the package
    split: Ray shows remote functions by name.)"""
    return run_work(header, held, work_from_wire, run_user_code)


def run_work(
    header: list[Any],
    held: Sequence[list[Any]],
    decode: Callable[[Any], Any],
    run: Callable[[Any], Any],
    *,
    relay_output: bool = True,
) -> Any:
    """Load the work of ``header`` (``decode`` tells what it is), ``run`` it, and return the
    summary and value slots of ``_run_task``; ``run`` raises ``Failure`` for an error.
    Shared by tasks and the calls of remote objects, so the driver treats both alike. The
    work runs with this worker's cluster as ``sperse.current()`` (nested work)."""
    data, buffers, ref_ids, task_id, namespace, mailbox, inline_limit, names = header
    relay = worker_relay()
    running = relay.begin(task_id, (namespace, mailbox)) if relay_output else None
    nested = running_nested(_nested)
    try:
        try:
            work = _load_work(data, buffers, ref_ids, held, inline_limit, relay.server, decode)
            value = run(work)
            entries, objects = _encode(names, value, inline_limit)
            outcome: list[Any] = [True, entries]
        except Failure as failure:
            info = failure.info
            outcome = [False, [info.kind, info.type_name, info.message, info.traceback]]
            objects = [None] * (len(names) if names is not None else 1)
    finally:
        stop_nested(nested)
        sent, tail = relay.end(*running) if running is not None else (0, [])
    summary = [relay.node_id, sent, tail, *outcome]
    return (summary, *objects) if objects else summary


def run_user_code(work: Any) -> Any:
    try:
        return execute(work)
    except (Exception, SystemExit) as exc:  # the user's code; KeyboardInterrupt is Ray's cancel
        # The traceback starts at the user's code: after run_user_code() and execute().
        raise Failure(encode_error(exc, skip_frames=2)) from None


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
                unpickle_buffers(held_buffers, inline_limit),
                resolve=resolve,
                what=f"held object {object_id}",
            )
        return loaded[object_id]

    try:
        obj = loads_oob(
            data,
            unpickle_buffers(buffers, inline_limit),
            resolve=resolve if held else None,
            what="the task",
        )
    except ModuleNotFoundError as exc:
        module = exc.name or str(exc)
        raise Failure(
            ErrorInfo(
                "missing_module",
                "ModuleNotFoundError",
                f"module {module!r} is not installed on server {server!r} (a Ray node): install "
                "it on every node (or in the job's runtime_env), or keep it in a file under "
                "the client's working directory so that it is sent along with the code",
            )
        ) from None
    except SerializationError as exc:
        raise Failure(ErrorInfo("serialization", "SerializationError", str(exc))) from None
    finally:
        loaded.clear()  # `resolve` refers to itself: the held values go with the work, not later
    work = decode(obj)
    if work is None:
        raise Failure(
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
        raise Failure(ErrorInfo("serialization", "SerializationError", message)) from None
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
    relay = worker_relay()
    task_id = relay.count_item()  # the driver ends the task only once it has this too
    try:
        box = ray.get_actor(mailbox, namespace=namespace)
        ray.get(box.put.remote([[task_id, relay.node_id, "callback", callback_id, data]]))
    except (ValueError, ray.exceptions.RayActorError) as exc:
        raise ClientGone(
            f"callback {what}: the client that made it has gone (its Ray mailbox is gone: "
            f"{first_line(exc)})"
        ) from None


SENDERS["ray"] = call_back  # how a callback pickled for Ray (via "ray") calls back


# ---- nested work: remote code that uses Sperse ------------------------------------------------

# The class of the backend nested work goes to (RayBackend, which names itself here).
_backend_class: list[Callable[[], Backend]] = []


def nested_backends_are(make: Callable[[], Backend]) -> None:
    """Nested work in a Ray worker goes to a backend ``make()`` returns (the driver module
    calls this when it is imported: see the module doc)."""
    _backend_class[:] = [make]


def _nested() -> Backend:
    """The factory ``running_nested`` names while a task runs here."""
    if not _backend_class:
        raise RuntimeError("sperse._backends.ray.driver was not imported in this Ray worker")
    return _NestedBackend(_backend_class[0])


class _NestedBackend:
    """The backend of remote code on Ray (``sperse.current()`` in a task or a method): a
    ``RayBackend`` that joins the Ray its worker belongs to, started on first use, since
    it starts a mailbox actor and most remote code never needs one."""

    def __init__(self, make: Callable[[], Backend]) -> None:
        self._make = make
        self._sink: EventSink | None = None
        self._backend: Backend | None = None
        self._lock = threading.Lock()

    def _started(self) -> Backend:
        with self._lock:
            if self._backend is None:
                assert self._sink is not None
                backend = self._make()
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
