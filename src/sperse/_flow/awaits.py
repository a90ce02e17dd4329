"""Async operators (``map`` of an ``async def`` function), pure: which calls run, which wait,
and in what order their results go on.

An :class:`AsyncMap` on a replica does not call its function itself: it asks the shell to
(:class:`Call`, an action), and the shell runs the coroutine on its event loop (the host's,
on servers; a loop thread of the in-process executor) and gives the outcome back as
:class:`Resumed`. Meanwhile the replica handles other batches: a call that waits (on another
service, say) does not hold its stream.

Invariants
----------
- **In flight.** At most ``limit`` calls run at once per replica *per call depth* (a request a
  client sent is depth 0; one sent from inside an operator's call serving a request of depth
  d is d + 1; :mod:`sperse._flow.calls`). The others wait in the operator, first come first
  served within their depth. So a call waits only on requests deeper than its own, whose
  calls never wait on it: by induction from the deepest (a base case), every call ends, and
  cycles of services (A calls B calls A) do not deadlock, however many requests come.
- **Not holding the channel.** Items waiting for a slot wait here, not in the channel: the
  delivery that brought them is acknowledged at once, so a request that an earlier one is
  waiting for (deeper, on the same channel) is never stuck behind it.
- **Order.** With ``ordered`` (the default) results go on in the order the items came, per
  *order group*: in a service, per client and call depth (so the requests of one client are
  answered in the order sent, as the services contract says); in a plain flow, all of them
  (Flink's ordered mode). Without it, as they end. A result waits only for earlier items of
  its group, and those never wait on it (they are not deeper).
- ``outstanding`` counts items taken and not yet released; a replica whose input ended waits
  for it to reach 0 before it ends its stage.
- **Tags.** Inside a loop each item is taken with a tag (its round and, in a per-item loop,
  its share of the loop's termination weight: :mod:`sperse._flow.looping`) that comes back
  with its result: an item awaiting a call still holds its weight, so the loop cannot be
  found empty while it waits.
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from sperse._core import ErrorInfo
from sperse._exec.runner import short_repr
from sperse._flow.messages import FlowError
from sperse._flow.ops import Ctx, ItemError, Op
from sperse._flow.service import failure
from sperse.errors import FlowFailed

__all__ = [
    "CALL_TIMEOUT",
    "MAX_DEPTH",
    "MAX_IN_FLIGHT",
    "AsyncMap",
    "Call",
    "Resumed",
    "is_async",
]

MAX_IN_FLIGHT = 64  # calls at once per replica and call depth, by default
CALL_TIMEOUT = 120.0  # seconds one call may take, by default
MAX_DEPTH = 32  # requests nested deeper than this (a cycle without a base case) fail


def is_async(fn: Any) -> bool:
    """Whether calling ``fn`` makes a coroutine (an ``async def`` function, method, partial
    of one, or an object whose ``__call__`` is one)."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - the method itself, not callable()
    )


@dataclass(frozen=True, slots=True)
class Call:
    """A replica's action: run ``fn(value)`` (a coroutine) for slot ``token`` of the
    operator at ``op`` in the replica's chain; ``depth``: the call depth of the request it
    serves; at most ``timeout`` seconds."""

    op: int
    token: int
    fn: Callable[[Any], Awaitable[Any]]
    value: Any
    operator: str
    depth: int
    timeout: float | None


@dataclass(frozen=True, slots=True)
class Resumed:
    """To a replica: the call of slot ``token`` of the operator at ``op`` ended, with
    ``value`` or ``error``."""

    op: int
    token: int
    value: Any = None
    error: BaseException | None = None


class _Slot:
    __slots__ = ("done", "group", "item", "lane", "out", "tag")

    def __init__(self, item: Any, lane: int, group: Any, tag: Any) -> None:
        self.item = item
        self.lane = lane
        self.group = group
        self.tag = tag
        self.done = False
        self.out: Any = None


class AsyncMap(Op):
    """``map(async_fn)`` on one replica (see the module docstring). ``at``: its index in the
    replica's chain (set by the replica); ``service``: items are request envelopes, whose
    value the function gets, and a failure fails that request only."""

    __slots__ = (
        "_calls",
        "_groups",
        "_running",
        "_slots",
        "_tokens",
        "_waiting",
        "at",
        "fn",
        "limit",
        "ordered",
        "service",
        "timeout",
    )
    kind = "map_async"

    def __init__(
        self,
        name: str,
        fn: Callable[[Any], Awaitable[Any]],
        limit: int = MAX_IN_FLIGHT,
        ordered: bool = True,
        timeout: float | None = CALL_TIMEOUT,
        service: bool = False,
    ) -> None:
        super().__init__(name)
        self.fn = fn
        self.limit = limit
        self.ordered = ordered
        self.timeout = timeout
        self.service = service
        self.at = 0
        self._tokens = 0
        self._slots: dict[int, _Slot] = {}
        self._groups: dict[Any, deque[int]] = {}
        self._waiting: dict[int, deque[int]] = {}  # per lane (call depth), tokens in order
        self._running: dict[int, int] = {}
        self._calls: list[Call] = []

    @property
    def outstanding(self) -> int:
        """Items taken and not released yet (running, waiting for a slot or for their turn)."""
        return len(self._slots)

    @property
    def running(self) -> int:
        return sum(self._running.values())

    def on_batch(self, port: int, items: list[Any], ctx: Ctx) -> list[Any]:
        return [out for out, _ in self.accept(items)]

    def accept(self, items: list[Any], tags: list[Any] | None = None) -> list[tuple[Any, Any]]:
        """Take ``items`` (each with its tag, if ``tags``); the (result, tag) pairs that go
        on at once (a service's requests that failed before: nothing to call)."""
        out: list[tuple[Any, Any]] = []
        for n, item in enumerate(items):
            token = self._tokens
            self._tokens += 1
            lane, group = (item.depth, (item.client, item.depth)) if self.service else (0, 0)
            tag = None if tags is None else tags[n]
            slot = self._slots[token] = _Slot(item, lane, group, tag)
            if self.ordered:
                self._groups.setdefault(group, deque()).append(token)
            if self.service and item.done:  # failed before, or answered: nothing to call
                out += self._complete(token, item)
            else:
                self._waiting.setdefault(lane, deque()).append(token)
                self._start(slot.lane)
        return out

    def resumed(self, ev: Resumed) -> list[Any]:
        """A call ended: what goes on now (in order), and more calls start."""
        return [out for out, _ in self.resumed_with_tags(ev)]

    def resumed_with_tags(self, ev: Resumed) -> list[tuple[Any, Any]]:
        """As :meth:`resumed`, each result with its item's tag."""
        slot = self._slots.get(ev.token)
        if slot is None or slot.done:
            return []
        self._running[slot.lane] -= 1
        item = slot.item
        if not self.service:
            if ev.error is not None:
                raise ItemError(item, ev.error)
            out = self._complete(ev.token, ev.value)
        elif ev.error is not None:
            failed = self._failure(item.value, ev.error)
            out = self._complete(ev.token, replace(item, failed=failed))
        else:
            out = self._complete(ev.token, replace(item, value=ev.value))
        self._start(slot.lane)
        return out

    def _failure(self, value: Any, error: BaseException) -> FlowError:
        """The request's failure: the call raised, or a request it awaited failed (then
        said as one line per level, with the first failure's type and traceback, so that a
        failure deep in a cycle of services does not grow as it comes back up)."""
        if not isinstance(error, FlowFailed):
            return failure(self.name, value, ItemError(value, error))
        callee = Exception.__str__(error)  # its message, without the traceback section
        what = f"a request it awaited failed: {callee}"
        info = ErrorInfo("raised", error.type_name or "FlowFailed", callee, error.remote_traceback)
        return FlowError(self.name, short_repr(value), info, what, error.server)

    def take_calls(self) -> list[Call]:
        calls, self._calls = self._calls, []
        return calls

    def _start(self, lane: int) -> None:
        waiting = self._waiting.get(lane)
        while waiting and self._running.get(lane, 0) < self.limit:
            token = waiting.popleft()
            item = self._slots[token].item
            value = item.value if self.service else item
            self._running[lane] = self._running.get(lane, 0) + 1
            self._calls.append(Call(self.at, token, self.fn, value, self.name, lane, self.timeout))

    def _complete(self, token: int, out: Any) -> list[tuple[Any, Any]]:
        slot = self._slots[token]
        slot.done, slot.out = True, out
        if not self.ordered:
            del self._slots[token]
            return [(out, slot.tag)]
        group = self._groups[slot.group]
        released = []
        while group and self._slots[group[0]].done:
            first = self._slots.pop(group.popleft())
            released.append((first.out, first.tag))
        if not group:
            del self._groups[slot.group]
        return released
