"""A session as its streams see it: the events on their way to its client, and how many
bytes of them wait there.

Invariants:

- ``unread`` is the size of the events in ``outbox``: the inline bytes of a ``Done``, the
  text of an ``Output`` or a failure, 64 for the rest (each reckoned once, as it goes in).
  Events go in by ``emit`` and out by ``take`` (a stream takes them when it has sent what it took before), nowhere else.
- A session is ``over`` from the ``emit`` that takes ``unread`` past ``limit`` (the server's
  ``--max-unread-bytes``) until a ``take`` brings it back to half of it or under (so a
  client that reads slowly does not flip it at every batch it reads); and, while the
  unread bytes of every session together (``UnreadTotal``) are past the server's
  ``--max-unread-total``, from the ``emit`` that takes it past its share of that (the total
  over the sessions) until it is back to half of its share: the sessions that hold the most
  wait, not the others. Each
  crossing is said once (``emit`` and ``take`` return True), for the driver to tell the
  machine: while over, the session's queued tasks wait (back-pressure; see
  :mod:`sperse._server.tasks`); nothing is dropped.
"""

from __future__ import annotations

import asyncio
import collections

from sperse._core import BackendEvent, Done, Failed, Output
from sperse._server.envelope import PickledBytes
from sperse._server.model import Listener, inline_bytes
from sperse._server.sessions import SessionState

__all__ = ["Session", "UnreadTotal", "event_bytes"]


def event_bytes(event: BackendEvent) -> int:
    """What ``event`` costs while it waits to be sent (its big parts; 64 for the rest)."""
    if isinstance(event, Done):
        return 64 + inline_bytes(event)
    if isinstance(event, Output):
        return 64 + len(event.text)
    if isinstance(event, Failed):
        return 64 + len(event.error.message) + len(event.error.traceback)
    return 64


class UnreadTotal:
    """The unread bytes of every session of a server, against ``limit`` (the server's
    ``--max-unread-total``), and how many sessions share it; ``per_session``: each one's
    own limit (``--max-unread-bytes``)."""

    __slots__ = ("bytes", "limit", "per_session", "sessions")

    def __init__(self, limit: int, per_session: int) -> None:
        self.limit = limit
        self.per_session = per_session
        self.bytes = 0
        self.sessions = 0

    def share(self) -> int:
        return self.limit // max(1, self.sessions)


class Session:
    """One client's session as its streams see it: undelivered events and callback calls.
    Outlives its streams; its tasks and objects are in ``state`` (the machine's). ``total``:
    the server's unread bytes and limits (see the module docstring)."""

    def __init__(
        self,
        state: SessionState,
        client_name: str,
        peer: str,
        shm_prefix: str,
        total: UnreadTotal,
    ) -> None:
        self.state = state
        self.session_id = state.session_id
        self.client_name = client_name
        self.peer = peer
        self.shm_prefix = shm_prefix  # of the files its client uploads
        self.outbox: collections.deque[BackendEvent] = collections.deque()
        self._sizes: collections.deque[int] = collections.deque()  # of each, in step
        self.limit = total.per_session
        self.total = total
        total.sessions += 1
        self.unread = 0  # bytes of the events in the outbox
        self.unread_peak = 0
        self.over = False
        # Calls of its client's callbacks by remote code: (callback id, pickled arguments).
        self.callbacks: collections.deque[tuple[str, PickledBytes]] = collections.deque()
        self.listener: Listener | None = None
        self.expiry: asyncio.TimerHandle | None = None

    @property
    def closed(self) -> bool:
        return self.state.closed

    def emit(self, event: BackendEvent) -> bool:
        """Queue ``event`` for the client; True: the session is over its limit from now."""
        self.outbox.append(event)
        size = event_bytes(event)
        self._sizes.append(size)
        self.unread += size
        self.total.bytes += size
        self.unread_peak = max(self.unread_peak, self.unread)
        if self.listener is not None:
            self.listener.wake()
        if self.over or not self._past():
            return False
        self.over = True
        return True

    def _past(self) -> bool:
        total = self.total
        if self.unread > self.limit:
            return True
        return total.bytes > total.limit and self.unread > total.share()

    def take(self) -> BackendEvent:
        """The next event to send (the outbox is not empty)."""
        event = self.outbox.popleft()
        size = self._sizes.popleft()
        self.unread -= size
        self.total.bytes -= size
        return event

    def under_again(self) -> bool:
        """Whether the session was over its limit and is no longer (said once)."""
        if not self.over or self.unread > min(self.limit, self.total.share()) // 2:
            return False
        self.over = False
        return True

    def clear(self) -> None:
        """The session ended: nothing more is sent, nor counted."""
        self.outbox.clear()
        self._sizes.clear()
        self.total.bytes -= self.unread
        self.total.sessions -= 1
        self.unread = 0

    def __repr__(self) -> str:
        return f"<Session {self.session_id} {self.state!r}>"
