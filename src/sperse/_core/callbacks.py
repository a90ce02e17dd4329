"""Callbacks as the backends see them: where a callback pickled now would call back to, the
callbacks of this process by id, and how a callback travels back over each kind of backend.

``sperse.callback`` (``sperse._cluster.callbacks``) builds on this; a backend only names the
destination while it pickles a task (``sending_to``) and hands what arrives to ``deliver``.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = [
    "SENDERS",
    "callback_destination",
    "callback_destination_reset",
    "deliver",
    "destination",
    "register",
    "sending_to",
]

Destination = tuple[str, str, str]  # (via, address, session id)
Run = Callable[[tuple[Any, ...], dict[str, Any]], None]

_destination: contextvars.ContextVar[Destination | None] = contextvars.ContextVar(
    "sperse_callback_destination", default=None
)
_registry: dict[str, Run] = {}  # kept for the life of this process, the newest _KEPT
_KEPT = 10_000
_lock = threading.Lock()

# How remote code calls a callback back, by the ``via`` of its destination, for backends
# whose workers run our code in-process (Ray registers its own when it is imported):
# fn(address, session_id, callback_id, args, kwargs, name).
SENDERS: dict[str, Callable[..., None]] = {}


def register(callback_id: str, run: Run) -> None:
    """Make ``run(args, kwargs)`` what a call back of ``callback_id`` does here (the newest
    ``_KEPT`` registrations stay)."""
    with _lock:
        _registry[callback_id] = run
        while len(_registry) > _KEPT:
            del _registry[next(iter(_registry))]


def deliver(callback_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Run the callback ``callback_id`` with these arguments (False: it is gone here)."""
    with _lock:
        found = _registry.get(callback_id)
    if found is None:
        return False
    found(args, kwargs)
    return True


def destination() -> Destination | None:
    """Where a callback pickled now calls back to (None: nowhere, e.g. in-process work)."""
    return _destination.get()


def callback_destination(address: str, session_id: str) -> contextvars.Token[Any]:
    """``sending_to`` without a context manager (on the path of every task sent): undo
    with ``callback_destination_reset``."""
    return _destination.set(("sperse", address, session_id))


def callback_destination_reset(token: contextvars.Token[Any]) -> None:
    _destination.reset(token)


@contextmanager
def sending_to(address: str, session_id: str, *, via: str = "sperse") -> Iterator[None]:
    """While a task for this server and session is pickled: callbacks name them. ``via``
    "ray": ``address`` and ``session_id`` are the namespace and name of the client's
    mailbox actor."""
    token = _destination.set((via, address, session_id))
    try:
        yield
    finally:
        _destination.reset(token)
