"""Held values and who owns their shared memory files: a pure part of the server's state.

A value a task returns that is at least its inline limit is *held*: kept by its session
under a fresh id (128 random bits, the capability to use it). Its files go (an ``Unlink``
action) once it is *freed*: released (by its client, or its session's end) and used by no
task (``users``: queued or running tasks, a remote object's rebuild, a peer reading it).
A *replica* (a copy pulled from another server) is released from the start: no session owns
it, and it goes when the last task using it ends.

The server holds at most ``max_held_bytes`` of them (``--max-held-bytes``): ``bytes``
counts the values its sessions hold (from their result until their release) and the
replicas. A result that would pass it is not kept: ``over_cap`` says why, and its task fails
with that (its files go at once); results held already are never dropped to make room.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from sperse._core import ErrorInfo
from sperse._server.actions import Action, Unlink
from sperse._server.envelope import ResultValue
from sperse._server.model import HeldObject, HeldValue, InlineValue, Pulled

if TYPE_CHECKING:
    from sperse._server.sessions import SessionState

__all__ = ["HeldValues", "mib"]


def mib(size: int) -> str:
    """``size`` bytes, as a message says them."""
    return f"{size / (1 << 20):,.1f} MiB"


class HeldValues:
    """The replicas, and the rules of every held value's life. ``new_id``: a fresh id."""

    def __init__(self, new_id: Callable[[], str], max_bytes: int) -> None:
        self._new_id = new_id
        self.max_bytes = max_bytes
        self.bytes = 0  # of the values sessions hold, and of the replicas
        self.replicas: dict[str, HeldObject] = {}  # by object id: pulled, used by tasks

    def over_cap(
        self,
        server: str,
        values: Iterable[ResultValue],
        inline_limit: int,
        what: str = "its result",
    ) -> ErrorInfo | None:
        """Why the values of at least ``inline_limit`` of a task's result (``what``) cannot
        be kept (None: they can): they would take the server past its cap."""
        size = 0
        for v in values:  # (a loop: asked for every task's result)
            value_size = v.value.size
            if value_size >= inline_limit:
                size += value_size
        if not size or self.bytes + size <= self.max_bytes:
            return None
        return ErrorInfo(
            "internal",
            "LimitExceeded",
            f"{what} of {mib(size)} was not kept: server {server!r} holds {mib(self.bytes)} "
            f"of results already, and its limit is {mib(self.max_bytes)} (--max-held-bytes). "
            "Release results you no longer need (let go of their Pending or RemoteValue), "
            "bring them here with fetch(), or start the server with a larger --max-held-bytes",
        )

    def keep(
        self, session: SessionState, values: Iterable[ResultValue], inline_limit: int
    ) -> tuple[InlineValue | HeldValue, ...]:
        """Values of at least ``inline_limit`` go to the session's objects; the others are
        sent inline (their files, if any, were read into bytes already)."""
        out: list[InlineValue | HeldValue] = []
        for v in values:
            size = v.value.size
            if size < inline_limit:
                out.append(InlineValue(v.name, v.value))
                continue
            object_id = self._new_id()
            while object_id in session.objects:  # pragma: no cover - 128 random bits
                object_id = self._new_id()
            session.objects[object_id] = HeldObject(v.value, v.type_name, v.repr)
            session.object_bytes += size
            self.bytes += size
            out.append(HeldValue(v.name, object_id, v.type_name, size, v.repr))
        return tuple(out)

    def lookup(self, session: SessionState, object_id: str) -> HeldObject | None:
        """What a task of ``session`` that uses ``object_id`` gets, if it is here."""
        return session.objects.get(object_id) or self.replicas.get(object_id)

    def add_replica(self, object_id: str, pulled: Pulled) -> HeldObject:
        held = HeldObject(pulled.value, pulled.type_name, pulled.repr, released=True)
        self.replicas[object_id] = held
        self.bytes += held.size
        return held

    @staticmethod
    def use(held: HeldObject) -> None:
        held.users += 1

    def unuse(self, object_id: str, held: HeldObject) -> list[Action]:
        """A task (or a remote object's rebuild, or a reader) no longer uses ``held``."""
        held.users -= 1
        if not held.freed:
            return []
        if self.replicas.get(object_id) is held:
            del self.replicas[object_id]
            self.bytes -= held.size
        return [Unlink(tuple(held.value.shm_names()))]

    @staticmethod
    def unpin(held: HeldObject) -> list[Action]:
        """A reader (a peer that pulled it) is done with ``held``."""
        held.users -= 1
        return [Unlink(tuple(held.value.shm_names()))] if held.freed else []

    def release(self, session: SessionState, object_id: str) -> list[Action] | None:
        """Release one held value of ``session``; None: it holds none of that id."""
        held = session.objects.pop(object_id, None)
        if held is None:
            return None
        session.object_bytes -= held.size
        self.bytes -= held.size
        held.released = True
        return [Unlink(tuple(held.value.shm_names()))] if held.freed else []

    def release_all(self, session: SessionState) -> list[Action]:
        """Release every held value of ``session`` (it has ended)."""
        self.bytes -= session.object_bytes
        actions: list[Action] = []
        for held in session.objects.values():
            held.released = True
            if held.freed:
                actions.append(Unlink(tuple(held.value.shm_names())))
        session.objects.clear()
        session.object_bytes = 0
        return actions
