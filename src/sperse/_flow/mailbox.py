"""A service's answers waiting for their clients, on the host of a respond replica
(:class:`~sperse._flow.host.ReplicaHost`), and where they are taken once it answers no more.

Each client long-polls ``take`` with its session id: the call returns as soon as answers
for it are there. An answer is kept until a later poll of the client says it received it
(``received``: the request ids of the answers it got): a poll whose reply is lost (the host
is closed while the reply is on its way) loses nothing, the next poll returns the same
answers again, and a stopping service ends once its answers were received, not only sent.
A client that has not polled for ``FORGET`` seconds is gone (one with requests waiting polls
every few seconds): its answers are dropped, so clients that leave cost no memory here.
Once the service was reshaped, the host is *retired*: a poll returns what is left for the
client, then ``[Moved]``, which names the new respond replicas. On the host
of the requests replica (which every reshape keeps), the mailbox holds the last ``Moved``
for clients that lost their respond replica's host with its server (``moved_after``).

Everything runs on the host's one event loop: no locks. The events bind to that loop when
first awaited there (the host is made on a worker thread).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection
from typing import Any

from sperse._flow.service import Answer, Moved

__all__ = ["FORGET", "Mailbox"]

FORGET = 60.0  # seconds without a poll after which a client's answers are dropped


class Mailbox:
    """The answers kept for each client (see the module docstring)."""

    __slots__ = ("_clock", "_mail", "_mailed", "_seen", "_sweep_at", "closing", "moved")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._mail: dict[str, list[Answer]] = {}  # each client's, not received yet
        self._seen: dict[str, float] = {}  # when each client with answers last polled
        self._clock = clock
        self._sweep_at = clock() + FORGET
        self._mailed = asyncio.Event()
        self.moved: Moved | None = None  # reshaped: the answers are taken elsewhere now
        self.closing = False

    def put(self, answers: list[Answer]) -> None:
        now = self._clock()
        for answer in answers:
            self._mail.setdefault(answer.client, []).append(answer)
            self._seen.setdefault(answer.client, now)
        self._mailed.set()
        if now >= self._sweep_at:
            self._forget_gone(now)

    def _forget_gone(self, now: float) -> None:
        """Drop the answers of clients that have not polled for ``FORGET`` seconds."""
        self._sweep_at = now + FORGET / 2
        for client in [c for c, seen in self._seen.items() if now - seen > FORGET]:
            del self._seen[client]
            self._mail.pop(client, None)
        if not self._mail:
            self._mailed.set()  # a finish waiting for the mailboxes to empty

    async def take(
        self, client: str, wait: float, received: Collection[int] = ()
    ) -> list[tuple[Any, ...] | Moved]:
        """The answers waiting for ``client``, as soon as there are some, else after
        ``wait`` seconds; once retired and none is left, ``[Moved]``. ``received``: the
        request ids of answers the client got from earlier takes (dropped now)."""
        self._seen[client] = self._clock()
        self._received(client, received)
        if not self._mail.get(client):
            try:
                async with asyncio.timeout(wait):
                    while not self._mail.get(client) and not self.closing and not self.moved:
                        self._mailed.clear()
                        await self._mailed.wait()
            except TimeoutError:
                pass
        answers = self._mail.get(client, [])
        self._seen[client] = self._clock()
        if not answers:
            self._seen.pop(client, None)  # nothing kept for it: nothing to forget
        if not answers and self.moved is not None:
            return [self.moved]
        return [(a.client, a.rid, a.value, a.error) for a in answers]

    def _received(self, client: str, received: Collection[int]) -> None:
        """``client`` got the answers to the requests ``received``."""
        mail = self._mail.get(client)
        if mail is None or not received:
            return
        got = set(received)
        mail[:] = [a for a in mail if a.rid not in got]
        if not mail:
            del self._mail[client]
            self._seen.pop(client, None)
            if not self._mail:
                self._mailed.set()  # a finish waiting for the mailboxes to empty

    async def moved_after(self, epoch: int, wait: float) -> Moved | None:
        """The reshape after ``epoch`` once there is one, else None after ``wait`` s."""
        try:
            async with asyncio.timeout(wait):
                while not self.closing and (self.moved is None or self.moved.epoch <= epoch):
                    self._mailed.clear()
                    await self._mailed.wait()
        except TimeoutError:
            pass
        moved = self.moved
        return moved if moved is not None and moved.epoch > epoch else None

    def retire(self, moved: Moved | None) -> None:
        """Answer no more: polls take what is left, then ``moved`` (None: answer again)."""
        self.moved = moved
        self._mailed.set()

    async def drain(self, wait: float) -> None:
        """Return once every answer was received, or after ``wait`` seconds."""
        try:
            async with asyncio.timeout(wait):
                while any(self._mail.values()):
                    self._mailed.clear()
                    await self._mailed.wait()
        except TimeoutError:
            pass

    def close(self) -> None:
        """The host stops: polls return now."""
        self.closing = True
        self._mailed.set()
