"""The runner of a remote object's worker: the one instance of the object in this process.

Loaded as ``"sperse._server.actor_runner:run"`` by a pool of one worker per remote object
(see :mod:`sperse._server.core`), whose ``concurrency`` is the object's ``max_concurrency``.
Envelopes and results are those of :mod:`sperse._server.runner`, so the server treats a
method's result exactly as a task's (small values inline, big ones kept in its store) and
an exception comes back with its remote traceback.

Invariants:

- ``ObjectCreate`` builds the instance (a class pickled once, ``PickledFunction``, is cached
  like a function); its result is ``None``. A later create in the same process replaces it
  (the server sends one per worker: at the start, and after the worker was replaced).
- ``ObjectCall`` exposes public names only: a name that starts with ``_`` is refused, as is
  a name the instance does not have (the message lists its public methods), calling an
  attribute that is not callable, and reading a method as an attribute. Each of these is an
  ``AttributeError``/``TypeError`` of kind ``raised``, without a traceback of ours.
- A method that returns an awaitable (``async def``) is awaited on one asyncio event loop
  that runs in a thread of this worker, started at the first such call: the coroutines of
  one object share that loop, and with ``max_concurrency`` N, N of them await at once (each
  worker thread waits for its own). A cancel (an interrupt of the waiting thread) cancels
  the coroutine.
- A call that reaches a worker without an instance (it was replaced, and the server has
  not rebuilt the object) fails with kind ``object_lost``.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import threading
from collections.abc import Awaitable
from types import TracebackType
from typing import Any

from sperse._core import CallTask, ObjectCall, ObjectCreate
from sperse._exec.runner import execute
from sperse._pool.worker import TaskInterrupted, keep_until_answered
from sperse._server.envelope import Envelope, ResultFailure, pack_failure, unpack_envelope
from sperse._server.runner import LoadFailed, load_work, pack_result, raised

__all__ = ["run"]

_NOT_BUILT: Any = object()
_instance: Any = _NOT_BUILT
_type_name = ""
_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()
# Frames of these files are ours: a user's traceback starts after them.
_OUR_FILES = frozenset(
    {
        __file__,
        execute.__code__.co_filename,
        asyncio.tasks.__file__,
        asyncio.futures.__file__,
        asyncio.events.__file__,
        asyncio.base_events.__file__,
    }
)


class _Refused(Exception):
    """A call the object does not allow: sent back as ``raised``, without a traceback."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(message)
        self.failure = ResultFailure("raised", type_name, message)


def run(payload: bytes) -> bytes:
    envelope = unpack_envelope(payload)  # made by the server: a failure here is a server bug
    try:
        work = load_work(envelope, objects=True)
    except LoadFailed as failed:
        return pack_failure(failed.failure)
    keep_until_answered(work)  # its arguments may map big files: unmapped after the reply
    if isinstance(work, ObjectCreate):
        return _create(work, envelope)
    if isinstance(work, ObjectCall):
        return _call(work, envelope)
    return pack_failure(  # a close is the server's business: it never reaches a worker
        ResultFailure("internal", "RunnerError", f"{type(work).__name__} reached a worker")
    )


def _create(work: ObjectCreate, envelope: Envelope) -> bytes:
    global _instance, _type_name
    try:
        instance = execute(CallTask(work.cls, work.args, work.kwargs))
    except TaskInterrupted:
        raise
    except BaseException as exc:  # the constructor's error, SystemExit included
        return pack_failure(_user_error(exc))
    _instance = instance
    kind = type(instance)
    _type_name = work.type_name or f"{kind.__module__}.{kind.__qualname__}"
    return pack_result(work, None, envelope)


def _call(work: ObjectCall, envelope: Envelope) -> bytes:
    instance = _instance
    if instance is _NOT_BUILT:
        return pack_failure(
            ResultFailure(
                "object_lost",
                "ObjectLost",
                f"remote object {work.object_id} is not built in worker {os.getpid()} "
                f"on server {envelope.server!r} (its worker was replaced): create it again",
            )
        )
    try:
        value = _member(instance, work)
        if not work.attribute:
            value = value(*work.args, **work.kwargs)
            if inspect.isawaitable(value):
                value = _await(value)
    except _Refused as refused:
        return pack_failure(refused.failure)
    except TaskInterrupted:
        raise
    except BaseException as exc:  # the method's error, SystemExit included
        return pack_failure(_user_error(exc))
    return pack_result(work, value, envelope)


def _member(instance: Any, work: ObjectCall) -> Any:
    """The attribute ``work`` names, checked: public, present, callable or not as asked."""
    name = work.name
    what = _type_name or type(instance).__qualname__
    if not name or name.startswith("_"):
        raise _Refused(
            "AttributeError",
            f"{name or '(empty)'!r} of remote object {what} is not exposed: only public names "
            "(not starting with '_') can be called or read through a proxy",
        )
    try:
        member = getattr(instance, name)
    except AttributeError:
        if inspect.getattr_static(instance, name, _NOT_BUILT) is not _NOT_BUILT:
            raise  # raised by the attribute's own code (a property): the user's error
        methods = ", ".join(_public_methods(instance)) or "(none)"
        raise _Refused(
            "AttributeError",
            f"remote object {what} has no attribute {name!r}; its public methods: {methods}",
        ) from None
    if work.attribute:
        if inspect.ismethod(member) or inspect.isroutine(member):
            raise _Refused(
                "TypeError",
                f"{name!r} of remote object {what} is a method: call it "
                f"(proxy.{name}(...)) rather than read it",
            )
    elif not callable(member):
        raise _Refused(
            "TypeError",
            f"{name!r} of remote object {what} is {_article(type(member).__name__)}, not a "
            f"method: read it as an attribute (proxy.{name}) rather than call it",
        )
    return member


def _public_methods(instance: Any) -> list[str]:
    kind = type(instance)
    return sorted(
        name
        for name in dir(kind)
        if not name.startswith("_") and callable(inspect.getattr_static(kind, name, None))
    )


def _article(noun: str) -> str:
    return f"an {noun}" if noun[:1] in "aeiouAEIOU" else f"a {noun}"


def _await(awaitable: Awaitable[Any]) -> Any:
    """Run ``awaitable`` on the object's event loop; wait here for its value.

    A lock rather than ``run_coroutine_threadsafe``: a quarter less time per call. The task
    starts in a copy of this thread's context, so what it prints is the call's output."""
    loop = _event_loop()
    done = threading.Lock()
    done.acquire()
    started: list[asyncio.Task[Any]] = []

    def start() -> None:
        coroutine = awaitable if asyncio.iscoroutine(awaitable) else _wrap(awaitable)
        task = loop.create_task(coroutine)
        started.append(task)
        task.add_done_callback(lambda _: done.release())

    loop.call_soon_threadsafe(start)
    try:
        done.acquire()
    except BaseException:  # interrupted (a cancel): the coroutine is cancelled too
        loop.call_soon_threadsafe(lambda: started[0].cancel())  # after start(): in order
        raise
    return started[0].result()


async def _wrap(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _event_loop() -> asyncio.AbstractEventLoop:
    """The object's event loop, in a daemon thread of its own (started once)."""
    global _loop
    with _loop_lock:
        if _loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(
                target=loop.run_forever, name="sperse-object-loop", daemon=True
            ).start()
            _loop = loop
        return _loop


def _user_error(exc: BaseException) -> ResultFailure:
    """``exc`` as a failure whose traceback starts at the user's code."""
    return raised(exc, skip_frames=_our_frames(exc.__traceback__))


def _our_frames(tb: TracebackType | None) -> int:
    count = 0
    while tb is not None and tb.tb_frame.f_code.co_filename in _OUR_FILES:
        count += 1
        tb = tb.tb_next
    return count
