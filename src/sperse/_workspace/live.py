"""What a workspace asks of things that run on after the cell that started them (a
service: :mod:`sperse._flow.serving` registers here when it is imported): which values they
use in place, and, when a cell binds a name to a new value, whether they take it in place (a
service swaps a redefined function into its running operator, keeping its state).

A cell whose run started such a thing takes in place the names it read whose values that
thing uses (``Graph.set_live``): a new definition of one does not run that cell again, the
thing takes the new value, and the prompt says so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

__all__ = [
    "LiveUser",
    "active",
    "marks",
    "notes_for",
    "register",
    "running",
    "started_since",
    "used_since",
]


class LiveUser(Protocol):
    def mark(self) -> int:
        """A count that grows with each thing started (``uses`` takes it)."""

    def running(self) -> bool:
        """Whether anything it started runs now (else a new value needs no look)."""

    def uses(self, value: Any, since: int) -> bool:
        """Whether something started since ``mark()`` returned ``since`` uses ``value``."""

    def redefined(self, name: str, old: Any, new: Any) -> list[str]:
        """``name`` was bound to ``new`` instead of ``old``: take it in place where ``old``
        is used; what was done, one note each (shown at the prompt)."""


_users: list[LiveUser] = []


def register(user: LiveUser) -> Callable[[], None]:
    """Add ``user``; returns how to remove it."""
    _users.append(user)
    return lambda: _users.remove(user) if user in _users else None


def active() -> bool:
    return bool(_users)


def marks() -> list[int]:
    """Every user's mark, before a cell runs."""
    return [user.mark() for user in _users]


def running() -> bool:
    return any(user.running() for user in _users)


def _since(before: Sequence[int]) -> list[tuple[LiveUser, int]]:
    """Each user with its mark before the cell ran (0: it registered while the cell ran)."""
    return [(user, before[i] if i < len(before) else 0) for i, user in enumerate(_users)]


def started_since(before: Sequence[int]) -> bool:
    return any(user.mark() != since for user, since in _since(before))


def used_since(before: Sequence[int], value: Any) -> bool:
    """Whether something started while the cell ran (after ``before = marks()``) uses
    ``value``."""
    return any(user.uses(value, since) for user, since in _since(before))


def notes_for(name: str, old: Any, new: Any) -> list[str]:
    notes: list[str] = []
    for user in list(_users):
        notes.extend(user.redefined(name, old, new))
    return notes
