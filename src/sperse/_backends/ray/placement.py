"""The cluster's nodes as servers, and Sperse's placement as Ray's (docs/ray.md, "Servers
are nodes", "The mapping", "No node can do it").

A node is a server: named by its ``sperse/name`` label (else the first 8 hex digits of its
id), tagged by its custom resources. A placement becomes a task's Ray options: tags in a
conjunction are custom resources (``TAG_SHARE`` of each), other tag expressions (``!``,
``|``) and pins are node affinity. A placement that no node can meet is ``NoMatchingServer``
when the task is submitted, checked against a snapshot of the nodes at most ``NODES_TTL``
old (refreshed whenever nothing matches).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Final

from sperse._backends.ray.protocol import NAME_LABEL
from sperse._core import ServerInfo
from sperse._core.routing import eligible, no_match_message
from sperse._lang.placement import And, Placement, Resources, Tag, TagExpr
from sperse.errors import NoMatchingServer, ServerLost

__all__ = ["NODES_TTL", "TAG_SHARE", "Node", "NodeView", "RayOptions", "nodes_of"]

TAG_SHARE: Final = 0.0001  # what a task takes of a tag's resource: Ray's smallest unit
NODES_TTL: Final = 2.0  # how long a snapshot of the cluster's nodes is used

_NOT_TAGS: Final = frozenset({"CPU", "memory", "object_store_memory"})
_NOT_RESOURCES: Final = frozenset({"memory", "object_store_memory"})

# What a placement asks of Ray: (num_cpus, num_gpus, sorted resources, node id). A tuple,
# hashable: the driver keeps one Ray function per distinct one.
RayOptions = tuple[Any, ...]
_ANYWHERE: Final[RayOptions] = (None, None, (), "")


@dataclass(frozen=True, slots=True)
class Node:
    node_id: str
    info: ServerInfo  # busy is filled in when asked


class NodeView:
    """The alive nodes of the Ray cluster, as a snapshot refreshed when stale, and the Ray
    options of a placement on them. Any thread."""

    def __init__(self, ray: Any, closed: Callable[[], bool]) -> None:
        self._ray = ray
        self._closed = closed  # (closed: Ray calls would start a new Ray)
        self._nodes: dict[str, Node] = {}  # node id -> node
        self._nodes_at = -NODES_TTL
        self._lock = threading.Lock()
        self._strategies: dict[str, Any] = {}
        self._round_robin = itertools.count()

    def current(self, *, refresh: bool = False) -> dict[str, Node]:
        with self._lock:
            stale = refresh or time.monotonic() - self._nodes_at > NODES_TTL
            if stale and not self._closed():
                self.refresh()
            return self._nodes

    def refresh(self) -> None:
        try:
            listed = [n for n in self._ray.nodes() if n.get("Alive")]
        except Exception as exc:
            if self._nodes:
                return  # keep the last snapshot: the head may be busy
            raise ServerLost(f"cannot list the nodes of the Ray cluster: {exc}") from exc
        self._nodes = nodes_of(listed)
        self._nodes_at = time.monotonic()

    def where(self, node_id: str) -> str:
        node = self._nodes.get(node_id)
        if node is None:
            node = self.current(refresh=True).get(node_id)
        return node.info.name if node is not None else node_id[:8]

    def options(self, placement: Placement, what: str) -> RayOptions:
        """``(num_cpus, num_gpus, resources, node id)`` for Ray, or ``NoMatchingServer``.

        Tags are custom resources: a conjunction of tags asks for ``TAG_SHARE`` of each (Ray
        then places the task); other tag expressions (``!``, ``|``) pin to a node that
        matches. A pin is node affinity. Checked against the nodes up front: a task that no
        node can run is an error now, not a task that Ray keeps waiting.
        """
        if placement.pin is None and placement.tags is None and not placement.resources:
            return _ANYWHERE
        nodes = self.current()
        servers = [n.info for n in nodes.values()]
        needs = dict(placement.resources)
        runnable = replace(placement, resources=Resources({"CPU": 1.0, **needs}))
        fits = eligible(runnable, servers)
        if not fits:
            nodes = self.current(refresh=True)
            servers = [n.info for n in nodes.values()]
            fits = eligible(runnable, servers)
        if not fits:
            if eligible(placement, servers):
                raise NoMatchingServer(
                    f"{what}: every Ray node matching [{placement}] has no CPU for tasks"
                )
            raise NoMatchingServer(no_match_message(placement, servers, what))
        num_cpus = needs.pop("CPU", None)
        num_gpus = needs.pop("GPU", None)
        node_id = ""
        if placement.pin is not None:
            node_id = next(n.node_id for n in nodes.values() if n.info.name == placement.pin)
        elif placement.tags is not None:
            tags = _conjunction(placement.tags)
            if tags is None:
                if len(fits) < len(servers):
                    chosen = fits[next(self._round_robin) % len(fits)]
                    node_id = next(n.node_id for n in nodes.values() if n.info is chosen)
            else:
                for tag in tags:
                    if tag == "GPU":
                        num_gpus = max(num_gpus or 0.0, TAG_SHARE)
                    else:
                        needs[tag] = max(needs.get(tag, 0.0), TAG_SHARE)
        return (num_cpus, num_gpus, tuple(sorted(needs.items())), node_id)

    def ray_options(self, options: RayOptions) -> dict[str, Any]:
        """Ray's options of a task or an actor for what ``options`` returned."""
        num_cpus, num_gpus, resources, node_id = options
        kwargs: dict[str, Any] = {}
        if num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
        if num_gpus is not None:
            kwargs["num_gpus"] = num_gpus
        if resources:
            kwargs["resources"] = dict(resources)
        if node_id:
            kwargs["scheduling_strategy"] = self._affinity(node_id)
        return kwargs

    def _affinity(self, node_id: str) -> Any:
        strategy = self._strategies.get(node_id)
        if strategy is None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            strategy = NodeAffinitySchedulingStrategy(node_id, soft=False)
            self._strategies[node_id] = strategy
        return strategy


def _conjunction(expr: TagExpr) -> list[str] | None:
    """The tags of ``a & b & ...``; None for an expression with ``!`` or ``|``."""
    if isinstance(expr, Tag):
        return [expr.name]
    if isinstance(expr, And):
        left, right = _conjunction(expr.left), _conjunction(expr.right)
        if left is not None and right is not None:
            return left + right
    return None


def nodes_of(listed: list[dict[str, Any]]) -> dict[str, Node]:
    """Ray's node records as servers: named by their ``sperse/name`` label, else by the first
    8 hex digits of their node id; tags are their custom resources."""
    named: list[tuple[str, dict[str, Any]]] = []
    for record in listed:
        node_id = str(record["NodeID"])
        labels = record.get("Labels") or {}
        named.append((str(labels.get(NAME_LABEL) or node_id[:8]), record))
    counts: dict[str, int] = {}
    for name, _ in named:
        counts[name] = counts.get(name, 0) + 1
    nodes: dict[str, Node] = {}
    for name, record in named:
        node_id = str(record["NodeID"])
        if counts[name] > 1:
            name = f"{name}-{node_id[:8]}"  # two nodes labelled alike: both stay reachable
        total: dict[str, float] = {
            k: float(v) for k, v in (record.get("Resources") or {}).items() if ":" not in k
        }
        tags = frozenset(k for k, v in total.items() if k not in _NOT_TAGS and v > 0)
        resources = {k: v for k, v in total.items() if k not in _NOT_RESOURCES}
        address = str(record.get("NodeManagerAddress", ""))
        info = ServerInfo(
            name,
            tags,
            resources,
            workers=int(total.get("CPU", 0)),
            address=f"ray node {node_id[:8]} at {address}",
        )
        nodes[node_id] = Node(node_id, info)
    return nodes
