"""How a replica spreads the items it sends on over the replicas of one output edge, by
the edge's partitioning (pure; :mod:`sperse._flow.replica` owns one :class:`Spread` per
output).

- One receiving replica: all to it. ``FORWARD``: to the replica of the same index.
  ``BROADCAST``: a copy to each.
- ``ROUND_ROBIN``: item ``i`` of the output's stream (counted over all its batches) to
  replica ``i % replicas``, so the receivers get even shares whatever the batch sizes.
- ``HASH``: by ``stable_hash(key) % replicas`` (the same in every process), the owner of
  each key met lately remembered (up to ``OWNERS`` keys, then it starts afresh) so that a
  key is hashed once. A key that cannot be hashed is the item's error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sperse._flow.ops import ItemError, stable_hash
from sperse._flow.plan import OutEdge, Partition

__all__ = ["OWNERS", "Spread"]

OWNERS = 1 << 16  # keys whose replica an output remembers (then it starts afresh)


class Spread:
    """The partitioning of ``edge`` as replica ``index`` sends on it; ``key``: the key of an
    item (for a hash edge)."""

    __slots__ = ("_edge", "_index", "_key", "_owners", "_turn")

    def __init__(self, edge: OutEdge, index: int, key: Callable[[Any], Any]) -> None:
        self._edge = edge
        self._index = index
        self._key = key
        self._turn = 0  # round-robin position
        self._owners: dict[Any, int] = {}

    def __call__(self, items: list[Any]) -> list[tuple[int, list[Any]]]:
        """``items`` as (receiving replica, its part) pairs, parts not empty."""
        edge = self._edge
        count = edge.replicas
        if count == 1:
            return [(0, items)]
        if edge.partition is Partition.FORWARD:
            return [(self._index, items)]
        if edge.partition is Partition.BROADCAST:
            return [(r, list(items)) for r in range(count)]
        parts: list[list[Any]] = [[] for _ in range(count)]
        if edge.partition is Partition.ROUND_ROBIN:
            start = self._turn
            for r in range(count):
                parts[r] = items[(r - start) % count :: count]
            self._turn = (start + len(items)) % count
        else:
            self._by_key(items, parts)
        return [(r, part) for r, part in enumerate(parts) if part]

    def _by_key(self, items: list[Any], parts: list[list[Any]]) -> None:
        owners, key = self._owners, self._key
        if len(owners) > OWNERS:
            owners.clear()
        item = None
        try:
            for item in items:
                k = key(item)
                owner = owners.get(k)
                if owner is None:
                    owner = owners[k] = stable_hash(k) % len(parts)
                parts[owner].append(item)
        except Exception as exc:
            raise ItemError(item, exc, f"its key cannot be hashed: {exc}") from exc
