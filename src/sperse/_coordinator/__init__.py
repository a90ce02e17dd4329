"""The cluster registry, ``sperse coordinator``: servers join, heartbeat and leave; clients
watch the membership.

Layers: :mod:`~sperse._coordinator.registry` (the membership, a pure state machine),
:mod:`~sperse._coordinator.service` (``CoordinatorServer``: gRPC, token, sweep, watch
streams), :mod:`~sperse._coordinator.cli` (the command). Servers join through
:mod:`sperse._server.join`; clients watch the membership with
:mod:`sperse._backends.membership` (``MembershipWatch`` and ``members``), on the client side.

Names are imported on first use (PEP 562), so that importing one layer does not load gRPC.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sperse._coordinator.service import (
        CoordinatorConfig,
        CoordinatorConfigError,
        CoordinatorServer,
    )

__all__ = [
    "CoordinatorConfig",
    "CoordinatorConfigError",
    "CoordinatorServer",
]

_LAZY = {
    "CoordinatorConfig": "sperse._coordinator.service",
    "CoordinatorConfigError": "sperse._coordinator.service",
    "CoordinatorServer": "sperse._coordinator.service",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
