"""Callbacks: a function of the client that remote code calls (a progress report, say).

``sperse.callback(fn)`` wraps ``fn``. Passed to remote code (an argument of a remote
function, method or statement), it arrives as a stand-in: calling it there sends the
arguments back through the server to this client, where ``fn`` runs on the user's thread
(like a ``then`` callback: inside ``result()``, ``sperse.wait``, the REPL's prompt). The
remote call returns ``None`` once the client has the arguments, without waiting for ``fn``;
it raises ``ClientGone`` if the client has left (its session ended).

Functions passed to remote code are otherwise shipped by value and run remotely; only a
``sperse.callback`` comes back. Callbacks need sperse servers or Ray (not the in-process
``LocalBackend``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from sperse._cluster.cluster import Cluster
from sperse._cluster.connect import current, worker_cluster
from sperse._core.backend import CallsBack
from sperse._core.callbacks import SENDERS, destination, register
from sperse.errors import SerializationError

__all__ = ["Callback", "callback"]

_ids = itertools.count(1)


class Callback:
    """A function of this client that remote code may call (the newest ``_KEPT`` callbacks
    made by this process stay callable)."""

    __slots__ = ("__weakref__", "_cluster", "fn", "id", "name")

    def __init__(self, fn: Callable[..., Any], cluster: Cluster | None = None) -> None:
        if not callable(fn):
            raise TypeError(f"sperse.callback takes a function, not {fn!r}")
        self.fn = fn
        self.name = getattr(fn, "__qualname__", repr(fn))
        self.id = f"cb{next(_ids)}"
        self._cluster = cluster
        register(self.id, self._run)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        where = destination()
        if where is None:
            raise SerializationError(
                f"callback {self.name}: only remote work on sperse servers or Ray can call "
                "back (not the in-process LocalBackend)"
            )
        return (_RemoteCallback, (*where, self.id, self.name))

    def _run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        cluster = self._cluster or current()
        cluster.post(lambda: self.fn(*args, **kwargs))

    def __repr__(self) -> str:
        return f"<sperse.callback {self.name}>"


def callback(fn: Callable[..., Any]) -> Callback:
    """Wrap a function of this client so that remote code can call it back (see the module
    documentation): ``train(data, progress=sperse.callback(print))``."""
    try:
        cluster: Cluster | None = current()
    except Exception:  # no cluster yet: the one current when it is called back
        cluster = None
    return Callback(fn, cluster)


class _RemoteCallback:
    """A callback as remote code sees it: calling it hands the arguments to the client."""

    __slots__ = ("_address", "_callback_id", "_name", "_session_id", "_via")

    def __init__(
        self, via: str, address: str, session_id: str, callback_id: str, name: str
    ) -> None:
        self._via = via
        self._address = address
        self._session_id = session_id
        self._callback_id = callback_id
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        send = SENDERS.get(self._via)
        if send is not None:
            send(self._address, self._session_id, self._callback_id, args, kwargs, self._name)
            return
        cluster = worker_cluster(self._address)
        if cluster is None:
            raise SerializationError(
                f"callback {self._name} can be called only from remote code on a sperse server"
            )
        if not isinstance(cluster.backend, CallsBack):
            raise SerializationError(
                f"callback {self._name}: this worker's backend cannot call back"
            )
        cluster.backend.call_back(
            self._session_id, self._callback_id, args, kwargs, what=self._name
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _RemoteCallback,
            (self._via, self._address, self._session_id, self._callback_id, self._name),
        )

    def __repr__(self) -> str:
        return f"<callback {self._name} of a client>"
