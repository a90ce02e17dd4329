"""Requests sent from inside an async operator's call (``await sperse.service(name)
.request(x)`` in an ``async def`` given to ``map``): their call depth, and the Pending the
call awaits.

A request's depth is one more than that of the request whose call sends it (a client's are
0; :data:`~sperse._flow.calls.CALLING` says which call runs): where it is served, it gets
a slot of its own depth (:mod:`sperse._flow.awaits`), so a cycle of services cannot
deadlock. A recursion that does not reach its base case is cut at :data:`MAX_DEPTH`: the
request raises ``RecursionError``, which fails the request being served, and so on back up.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from sperse._cluster.pending import Pending
from sperse._flow.awaits import MAX_DEPTH
from sperse._flow.calls import CALLING
from sperse._serialize import RemoteValue

__all__ = ["Nested", "nested_depth", "time_left"]


def nested_depth(service: str) -> int:
    """The call depth of a request to ``service`` sent here and now: 0 outside a call."""
    calling = CALLING.get()
    if calling is None:
        return 0
    if calling.depth + 1 > MAX_DEPTH:
        raise RecursionError(
            f"a request to service {service!r} from the operator {calling.operator!r} of "
            f"flow {calling.flow!r} would be nested {MAX_DEPTH + 1} calls deep: a cycle of "
            "services that does not reach its base case? (each request an async operator "
            "sends while serving one is one level deeper)"
        )
    return calling.depth + 1


def time_left() -> float | None:
    """The seconds the call running here has left before its timeout (None: no call, or no
    timeout): a request it sends without a ``timeout`` gets this one, so that its Pending
    does not outlive the call (deadlines pass down a chain of calls)."""
    calling = CALLING.get()
    if calling is None or calling.deadline is None:
        return None
    return max(calling.deadline - time.monotonic(), 0.001)


class Nested(Pending[Any]):
    """The Pending of a request sent from inside an async operator's call: awaited on the
    call's event loop by a hook on its settling (not by the cluster's wakers, which every
    settled Pending rings: a thousand calls waiting would each be woken a thousand times),
    and without running the user's queued callbacks on that loop's thread."""

    __slots__ = ()

    def __await__(self) -> Any:
        return self._wait_here().__await__()

    async def _wait_here(self) -> Any:
        if not self.done():
            loop = asyncio.get_running_loop()
            settled = loop.create_future()

            def set_settled() -> None:
                if not settled.done():  # not cancelled (a timeout)
                    settled.set_result(None)

            def wake(_: Pending[Any]) -> None:
                with contextlib.suppress(RuntimeError):  # the loop closed (its host did)
                    loop.call_soon_threadsafe(set_settled)

            self._on_settle(wake)
            await settled
        if self._error is not None:
            raise self._error
        value = self._value
        if isinstance(value, RemoteValue):
            return await asyncio.to_thread(value.fetch, 60)
        return value
