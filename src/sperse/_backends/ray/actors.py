"""Worker side of remote objects (DESIGN §5, docs/ray.md "Remote objects"): one Ray actor
each, of ``_ObjectActor``.

Its ``__init__`` builds the user's instance, so that Ray's ``max_restarts`` rebuilds it from
its constructor's arguments; a creation and each call answer as a task does
(:func:`.worker.run_work`: a summary and value slots, output relayed), so the driver handles
them alike. Only public names of the instance can be called or read.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import os
import threading
from collections.abc import Awaitable
from typing import Any, Final

from sperse._backends.ray.imports import import_ray
from sperse._backends.ray.relay import worker_relay
from sperse._backends.ray.worker import Failure, run_user_code, run_work
from sperse._core import CallTask, ErrorInfo, ObjectCall, ObjectCreate
from sperse._exec.runner import encode_error, execute, object_work_from_wire

# Ray shows an actor by its class name: _ObjectActor, as before the package split.
__all__ = ["_ObjectActor"]


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
        self._created = run_work(
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
        return run_work(header, held, object_work_from_wire, self._call)

    def info(self) -> list[Any]:
        """``[pid, calls, built, node id, methods, max_concurrency, restart]``."""
        create = self._create
        with self._lock:
            calls = self._calls
        built = self._instance is not _NOT_BUILT
        node_id = worker_relay().node_id
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
            raise Failure(ErrorInfo("internal", "SperseError", f"not a creation: {work!r}"))
        self._create = work
        self._instance = run_user_code(CallTask(work.cls, work.args, work.kwargs))

    def _call(self, work: Any) -> Any:
        if not isinstance(work, ObjectCall):
            raise Failure(ErrorInfo("internal", "SperseError", f"not a call: {work!r}"))
        instance = self._instance
        if instance is _NOT_BUILT:
            what = f"remote object ({self._type_name()} {work.object_id[:8]})"
            raise Failure(
                ErrorInfo("object_lost", "ObjectLost", f"{what} does not exist: {self._unbuilt}")
            )
        try:
            member = _member(instance, work, self._type_name())
            value = member if work.attribute else member(*work.args, **work.kwargs)
            if inspect.isawaitable(value):
                value = self._await(value)
        except Failure:
            raise
        except (Exception, SystemExit) as exc:  # the user's code; KeyboardInterrupt: a cancel
            raise Failure(_user_error(exc)) from None
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

    def refuse(error_type: str, message: str) -> Failure:
        return Failure(ErrorInfo("raised", error_type, message))

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
