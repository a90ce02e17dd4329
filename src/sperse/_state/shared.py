"""``sperse.shared(key, factory)``: a value built once per server and kept per process.

Built through the server's store (``state().once``: one build per server, whichever
process asks first) and kept in each process's ``worker_cache`` after, so the operators of
a flow (or any remote code) read it at the cost of a dict lookup. A value the store cannot
take (unpicklable, too big) stays in the process that built it: once per process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypeVar

from sperse._state.client import _key, state, worker_cache
from sperse.errors import SperseError

__all__ = ["shared"]

T = TypeVar("T")

_SHARED = "sperse.shared"


def shared(
    key: str, factory: Callable[[], T], *, per: Literal["server", "process"] = "server"
) -> T:
    """A value built once and used by all the code on this server: ``factory()`` made once
    per server through the store (``state().once(key, factory)``) and kept in each process
    after its first call, so reads cost nothing. For operators of a flow, lookup tables,
    models, pools: treat it as read-only (each process has its own copy).

    A value that cannot be pickled (a connection pool, a loaded model on a device) cannot
    go through the store: it is kept in the process that built it, so each process builds
    its own (as ``worker_cache``); ``per="process"`` asks for that without trying the store.
    Outside remote code (a flow running in this process) there is no store: once per
    process.
    """
    _key(key)
    if per not in ("server", "process"):
        raise ValueError(f'shared: per is "server" or "process", not {per!r}')
    return worker_cache((_SHARED, key), lambda: _build_shared(key, factory, per))


def _build_shared(key: str, factory: Callable[[], T], per: str) -> T:
    if per == "process":
        return factory()
    try:
        store = state()
    except SperseError:  # not in remote code: this process is the only user
        return factory()
    made: list[T] = []

    def make() -> T:
        value = factory()
        made.append(value)
        return value

    try:
        return store.once(key, make)
    except SperseError:
        if made:  # built here, but it cannot be pickled (or is too big) for the store
            return made[0]
        raise
