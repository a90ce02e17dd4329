"""State that remote code keeps on its server: ``sperse.state()`` and ``worker_cache()``
(``client``, the worker's side), ``shared()`` built on both (``shared``), the store's
semantics as one pure table (``table``), and the wire format between them (``wire``)."""

from sperse._state.client import PROVIDERS, State, _key, snapshot, state, worker_cache
from sperse._state.shared import shared

__all__ = ["PROVIDERS", "State", "_key", "shared", "snapshot", "state", "worker_cache"]
