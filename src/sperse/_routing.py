"""Which servers may run a task: constraints (tags, pin, resources) against servers.

Pure functions over ``ServerInfo``; the router that picks among the eligible
servers (locality, load) builds on this.
"""

from __future__ import annotations

from collections.abc import Sequence

from sperse._backends.base import ServerInfo
from sperse._lang.placement import Placement
from sperse.errors import NoMatchingServer

__all__ = ["check_placement", "eligible"]


def eligible(placement: Placement, servers: Sequence[ServerInfo]) -> list[ServerInfo]:
    """The servers that meet every constraint of ``placement``."""
    out = []
    for server in servers:
        if placement.pin is not None and server.name != placement.pin:
            continue
        if placement.tags is not None and not placement.tags.matches(server.tags):
            continue
        if any(server.resources.get(k, 0) < need for k, need in placement.resources.items()):
            continue
        out.append(server)
    return out


def check_placement(placement: Placement, servers: Sequence[ServerInfo], what: str) -> None:
    """Raise ``NoMatchingServer`` (naming the constraint and what exists) if none fits."""
    if not str(placement) or eligible(placement, servers):
        return
    listing = "; ".join(_describe(s) for s in servers) or "none"
    raise NoMatchingServer(
        f"{what}: no server matches [{placement}]. Servers: {listing}. "
        "Start a server with the tag (sperse server --tag ...), or change the constraint."
    )


def _describe(server: ServerInfo) -> str:
    tags = ", ".join(sorted(server.tags)) or "no tags"
    resources = ", ".join(f"{k}={v:g}" for k, v in sorted(server.resources.items()))
    return f"{server.name} ({tags}{'; ' + resources if resources else ''})"
