"""Hosting a remote object: its one instance, its public names, its event loop.

What every place that runs a remote object does (a server's object worker,
:mod:`sperse._server.actor_runner`, and the in-memory backend), written once:

- ``create`` builds the instance from an ``ObjectCreate`` (a class pickled once is cached
  like a function).
- ``call`` runs an ``ObjectCall``. Public names only: a name that starts with ``_`` is
  refused, as is a name the instance does not have (the message lists its public methods),
  calling an attribute that is not callable, and reading a method as an attribute; each is
  a ``Refused`` (an ``AttributeError``/``TypeError`` for the caller, without a traceback of
  ours).
- A method that returns an awaitable (``async def``) is awaited on one asyncio event loop
  of this host, in a thread of its own started at the first such call: the coroutines of
  one object share it, and several callers' threads may wait at once (``max_concurrency``).
  An exception in the waiting thread (a cancel) cancels the coroutine.
- ``our_frames`` counts the frames of a traceback that are ours, so that the user's
  traceback starts at their code.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Awaitable
from types import TracebackType
from typing import Any

from sperse._core import CallTask, ObjectCall, ObjectCreate
from sperse._exec.runner import execute

__all__ = ["ObjectHost", "Refused", "our_frames"]

_NOT_BUILT: Any = object()

# Frames of these files are ours: a user's traceback starts after them.
_OUR_FILES = {
    __file__,
    execute.__code__.co_filename,
    asyncio.tasks.__file__,
    asyncio.futures.__file__,
    asyncio.events.__file__,
    asyncio.base_events.__file__,
}


class Refused(Exception):
    """A call the object does not allow: ``type_name`` is what the caller sees raised."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.message = message


class ObjectHost:
    """One remote object's instance (once built) and its event loop."""

    def __init__(self) -> None:
        self._instance: Any = _NOT_BUILT
        self.type_name = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_lock = threading.Lock()

    @property
    def built(self) -> bool:
        return self._instance is not _NOT_BUILT

    def create(self, work: ObjectCreate) -> None:
        """Build the instance (replacing any); the constructor's error propagates."""
        instance = execute(CallTask(work.cls, work.args, work.kwargs))
        self._instance = instance
        kind = type(instance)
        self.type_name = work.type_name or f"{kind.__module__}.{kind.__qualname__}"

    def call(self, work: ObjectCall) -> Any:
        """Call the method (or read the attribute) ``work`` names: its value. ``Refused``
        for what the object does not allow; the method's own error propagates."""
        assert self.built, "ObjectHost.call before create"
        value = self._member(work)
        if not work.attribute:
            value = value(*work.args, **work.kwargs)
            if inspect.isawaitable(value):
                value = self._await(value)
        return value

    def close(self) -> None:
        """Forget the instance; stop the event loop, if one was started."""
        self._instance = _NOT_BUILT
        with self._loop_lock:
            loop, self._loop = self._loop, None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)

    def _member(self, work: ObjectCall) -> Any:
        """The attribute ``work`` names, checked: public, present, callable or not as asked."""
        instance = self._instance
        name = work.name
        what = self.type_name or type(instance).__qualname__
        if not name or name.startswith("_"):
            raise Refused(
                "AttributeError",
                f"{name or '(empty)'!r} of remote object {what} is not exposed: only public "
                "names (not starting with '_') can be called or read through a proxy",
            )
        try:
            member = getattr(instance, name)
        except AttributeError:
            if inspect.getattr_static(instance, name, _NOT_BUILT) is not _NOT_BUILT:
                raise  # raised by the attribute's own code (a property): the user's error
            methods = ", ".join(_public_methods(instance)) or "(none)"
            raise Refused(
                "AttributeError",
                f"remote object {what} has no attribute {name!r}; its public methods: {methods}",
            ) from None
        if work.attribute:
            if inspect.ismethod(member) or inspect.isroutine(member):
                raise Refused(
                    "TypeError",
                    f"{name!r} of remote object {what} is a method: call it "
                    f"(proxy.{name}(...)) rather than read it",
                )
        elif not callable(member):
            raise Refused(
                "TypeError",
                f"{name!r} of remote object {what} is {_article(type(member).__name__)}, not a "
                f"method: read it as an attribute (proxy.{name}) rather than call it",
            )
        return member

    def _await(self, awaitable: Awaitable[Any]) -> Any:
        """Run ``awaitable`` on the object's event loop; wait here for its value.

        A lock rather than ``run_coroutine_threadsafe``: a quarter less time per call. The
        task starts in a copy of this thread's context, so what it prints is the call's
        output."""
        loop = self._event_loop()
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

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        """The object's event loop, in a daemon thread of its own (started once)."""
        with self._loop_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(
                    target=_run_until_stopped, args=(loop,), name="sperse-object-loop", daemon=True
                ).start()
                self._loop = loop
            return self._loop


def _run_until_stopped(loop: asyncio.AbstractEventLoop) -> None:
    """The loop's thread: it runs until ``close`` stops it, then closes it."""
    try:
        loop.run_forever()
    finally:
        loop.close()


async def _wrap(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _public_methods(instance: Any) -> list[str]:
    kind = type(instance)
    return sorted(
        name
        for name in dir(kind)
        if not name.startswith("_") and callable(inspect.getattr_static(kind, name, None))
    )


def _article(noun: str) -> str:
    return f"an {noun}" if noun[:1] in "aeiouAEIOU" else f"a {noun}"


def our_frames(tb: TracebackType | None, also: frozenset[str] = frozenset()) -> int:
    """How many frames at the top of ``tb`` are ours (this package's, asyncio's, or in a
    file of ``also``): the user's traceback starts after them."""
    count = 0
    while tb is not None and (
        tb.tb_frame.f_code.co_filename in _OUR_FILES or tb.tb_frame.f_code.co_filename in also
    ):
        count += 1
        tb = tb.tb_next
    return count
