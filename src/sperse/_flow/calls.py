"""Running the calls of async operators: the shells' side of :mod:`sperse._flow.awaits`.

A replica asks for a :class:`~sperse._flow.awaits.Call`; the shell runs it as a task with
:func:`run_call` on an event loop (a server host's own loop; :class:`CallLoop`, a thread of
the in-process executor) and gives the replica the :class:`~sperse._flow.awaits.Resumed`
outcome. While it runs, :data:`CALLING` says which operator's call this is and at what call
depth, so that a request the call sends to a service (``sperse.service(name).request(x)``)
goes one level deeper, and is given a slot of that depth where it is served.

A call's own error (it raised, or took more than its ``timeout``) is its outcome: the
request it served fails with it, naming the operator. ``CancelledError`` is never turned
into an outcome: a cancelled call (the host closing) reports nothing.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sperse._flow.awaits import Call, Resumed
from sperse.errors import TaskTimeout

__all__ = ["CALLING", "CallLoop", "CallTasks", "Calling", "run_call"]


@dataclass(frozen=True, slots=True)
class Calling:
    """The async operator call running in this context: flow ``flow``, operator
    ``operator``, serving a request of call depth ``depth``, until ``deadline`` (of
    ``time.monotonic()``; None: no timeout)."""

    flow: str
    operator: str
    depth: int
    deadline: float | None = None


CALLING: contextvars.ContextVar[Calling | None] = contextvars.ContextVar(
    "sperse_flow_calling", default=None
)


async def run_call(call: Call, flow: str) -> Resumed:
    """Run ``call`` (in the task's own context, where :data:`CALLING` is set); its outcome."""
    deadline = None if call.timeout is None else time.monotonic() + call.timeout
    CALLING.set(Calling(flow, call.operator, call.depth, deadline))
    scope = asyncio.timeout(call.timeout)
    try:
        async with scope:
            value = await call.fn(call.value)
    except TimeoutError as exc:
        if not scope.expired():
            return Resumed(call.op, call.token, error=exc)  # the function's own
        error = TaskTimeout(
            f"flow {flow!r}: a call of the async operator {call.operator!r} did not end "
            f"within its timeout of {call.timeout:g} s; give map(..., timeout=) more, or "
            "look at what it awaits"
        )
        return Resumed(call.op, call.token, error=error)
    except Exception as exc:
        return Resumed(call.op, call.token, error=exc)
    return Resumed(call.op, call.token, value)


class CallTasks:
    """The calls running on a server host's event loop, each a task it owns. As each ends
    its outcome goes first in the host's ``inbox`` (as a delivery that needs no
    acknowledgement: the item holds a slot, not the channel) and ``wake`` is set;
    ``cancel`` cancels the rest (the host is closing)."""

    def __init__(self, flow: str, inbox: deque[Any], wake: asyncio.Event) -> None:
        self._flow = flow
        self._inbox = inbox
        self._wake = wake
        self._tasks: set[asyncio.Task[Resumed]] = set()

    def start(self, call: Call) -> None:
        """Run ``call`` (on the running loop)."""
        task = asyncio.get_running_loop().create_task(run_call(call, self._flow))
        self._tasks.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[Resumed]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            self._inbox.appendleft(([task.result()], None))
            self._wake.set()

    def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()


class CallLoop:
    """An event loop on a thread of its own, started on first use, that runs the calls of
    the in-process executor; ``done(key, resumed)`` is called on that thread as each ends.
    ``close`` cancels what runs and stops the thread."""

    def __init__(self, flow: str, done: Callable[[Any, Resumed], None]) -> None:
        self._flow = flow
        self._done = done
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[Resumed]] = set()

    def start(self, key: Any, call: Call) -> None:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=loop.run_forever, name=f"sperse-flow-{self._flow}-calls", daemon=True
            )
            self._thread.start()
        loop.call_soon_threadsafe(self._create, key, call)

    def _create(self, key: Any, call: Call) -> None:
        assert self._loop is not None
        task = self._loop.create_task(run_call(call, self._flow))
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._ended(key, t))

    def _ended(self, key: Any, task: asyncio.Task[Resumed]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            self._done(key, task.result())

    def close(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        def stop() -> None:
            for task in list(self._tasks):
                task.cancel()
            loop.call_soon(loop.stop)  # after the cancelled tasks have run their last step

        loop.call_soon_threadsafe(stop)
        thread.join(5.0)
        if not thread.is_alive():
            loop.close()
