"""The sperse server: sessions over gRPC, an object store, and a pool of worker processes.

Layers: :mod:`~sperse._server.config` (what to run), :mod:`~sperse._server.core` (sessions,
tasks, objects; no gRPC: the driver of :mod:`~sperse._server.state`, a pure state machine,
events in, actions out), :mod:`~sperse._server.service` (the servicer: ``Session`` streams,
whose parts are :mod:`~sperse._server.stream` and its neighbours, and ``Pull``),
:mod:`~sperse._server.server` (``SperseServer``, the async context manager),
:mod:`~sperse._server.runner` and :mod:`~sperse._server.envelope` (what runs in the workers).

Names are imported on first use (PEP 562): a worker process imports
``sperse._server.runner``, and must not pay for gRPC.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sperse._server.config import ServerConfig, ServerConfigError
    from sperse._server.core import ServerStats
    from sperse._server.server import SperseServer

__all__ = ["ServerConfig", "ServerConfigError", "ServerStats", "SperseServer"]

_LAZY = {
    "ServerConfig": "sperse._server.config",
    "ServerConfigError": "sperse._server.config",
    "ServerStats": "sperse._server.core",
    "SperseServer": "sperse._server.server",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
