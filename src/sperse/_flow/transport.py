"""The transport's rules, without the network: channel order, adaptive batching, credits.

The server executor (:mod:`sperse._flow.host`, :mod:`sperse._flow.servers`) moves a
replica's :class:`~sperse._flow.messages.Send`\\ s to the host of the receiving replica as
``deliver(channel, seq, messages)`` calls. What it needs to decide is here, pure (the clock
comes in as ``now``), so it is tested without servers:

- :class:`Reorder`: calls may start on the receiver in any order (a host serves several at
  once), so each channel (one sender to one receiver) numbers its deliveries from 0 and the
  receiver releases them in that order, holding early ones back. Channels are FIFO again.
- :class:`Outbox`: what a replica sends, buffered per destination replica and flushed as
  one delivery when it holds ``BATCH_ITEMS`` items, when its oldest message has waited
  ``LINGER`` seconds, or when the host has nothing else to do (so a quiet pipeline does not
  wait for a batch to fill). Consecutive batches for the same port and round are merged
  (their loop weights add up: weight is conserved).
- :class:`Credits`: at most ``window`` deliveries of a channel are un-acknowledged at once;
  a delivery is acknowledged when the receiver has *processed* it, so a slow replica's
  inbox is bounded and its senders wait for it. Feedback edges of loops take no credit (a
  cycle of bounded channels can deadlock: each side waiting for the other to make room).
"""

from __future__ import annotations

import contextlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sperse._flow.messages import Batch, Message

__all__ = ["BATCH_ITEMS", "LINGER", "WINDOW", "Credits", "Outbox", "Reorder"]

BATCH_ITEMS = 1000  # flush a destination's buffer once it holds this many items
LINGER = 0.005  # ... or once its oldest message has waited this long (seconds)
WINDOW = 4  # un-acknowledged deliveries per channel

T = TypeVar("T")


class Reorder(Generic[T]):
    """Deliveries of many channels in, each channel's out in sequence order."""

    def __init__(self) -> None:
        self._next: dict[str, int] = {}
        self._early: dict[str, dict[int, T]] = {}

    def put(self, channel: str, seq: int, value: T) -> list[T]:
        """Take delivery ``seq`` of ``channel``; return what can go on now, in order."""
        expected = self._next.get(channel, 0)
        if seq < expected:
            raise ValueError(f"delivery {seq} of channel {channel!r} came twice")
        if seq > expected:
            self._early.setdefault(channel, {})[seq] = value
            return []
        out = [value]
        expected += 1
        early = self._early.get(channel)
        while early and expected in early:
            out.append(early.pop(expected))
            expected += 1
        self._next[channel] = expected
        return out

    def held(self) -> int:
        """Deliveries waiting for an earlier one."""
        return sum(len(e) for e in self._early.values())


@dataclass(slots=True)
class _Buffer:
    messages: list[Message] = field(default_factory=list)
    items: int = 0
    since: float = 0.0


Destination = tuple[int, int]  # (stage, replica)


class Outbox:
    """Messages buffered per destination until a flush (see the module docstring)."""

    def __init__(self, batch_items: int = BATCH_ITEMS, linger: float = LINGER) -> None:
        self.batch_items = batch_items
        self.linger = linger
        self._buffers: dict[Destination, _Buffer] = {}

    def add(self, dest: Destination, message: Message, now: float) -> None:
        buffer = self._buffers.get(dest)
        if buffer is None:
            buffer = self._buffers[dest] = _Buffer(since=now)
        elif not buffer.messages:
            buffer.since = now
        last = buffer.messages[-1] if buffer.messages else None
        if isinstance(message, Batch):
            buffer.items += len(message.items)
            if (
                isinstance(last, Batch)
                and (last.port, last.sender, last.round)
                == (message.port, message.sender, message.round)
                and (last.weight is None) == (message.weight is None)
            ):
                weight = None if last.weight is None else last.weight + (message.weight or 0)
                last.items.extend(message.items)  # the outbox owns the first batch's list
                buffer.messages[-1] = Batch(
                    last.port,
                    last.sender,
                    last.items,
                    last.round,
                    weight,
                    max(last.now, message.now),
                )
                return
            message = Batch(
                message.port, message.sender, list(message.items), message.round,
                message.weight, message.now,
            )  # fmt: skip
        buffer.messages.append(message)

    def due(self, now: float, idle: bool) -> list[tuple[Destination, list[Message]]]:
        """The buffers to send now: full ones, old ones, or all of them when ``idle``."""
        out = []
        for dest, buffer in self._buffers.items():
            if not buffer.messages:
                continue
            if idle or buffer.items >= self.batch_items or now - buffer.since >= self.linger:
                out.append((dest, buffer.messages))
                buffer.messages = []
                buffer.items = 0
        return out

    def pending(self) -> int:
        """Messages buffered, not yet sent."""
        return sum(len(b.messages) for b in self._buffers.values())


class Credits:
    """Un-acknowledged deliveries per channel, at most ``window`` where credited."""

    def __init__(self, window: int = WINDOW) -> None:
        self.window = window
        self._out: dict[Any, deque[int]] = {}
        self._next: dict[Any, int] = {}
        self.most = 0  # the most un-acknowledged deliveries one credited channel ever had

    def blocked(self, channel: Any) -> bool:
        """Whether ``channel`` must wait for an acknowledgement before sending."""
        return len(self._out.get(channel, ())) >= self.window

    def send(self, channel: Any, credited: bool = True) -> int:
        """The next sequence number of ``channel``, counted as un-acknowledged if
        ``credited``."""
        seq = self._next.get(channel, 0)
        self._next[channel] = seq + 1
        if credited:
            out = self._out.setdefault(channel, deque())
            out.append(seq)
            self.most = max(self.most, len(out))
        return seq

    def ack(self, channel: Any, seq: int) -> None:
        out = self._out.get(channel)
        if out is not None:
            with contextlib.suppress(ValueError):
                out.remove(seq)

    def unacked(self) -> int:
        """Deliveries not acknowledged yet, over every channel."""
        return sum(len(out) for out in self._out.values())

    def outstanding(self, channel: Any) -> int:
        return len(self._out.get(channel, ()))
