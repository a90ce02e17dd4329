"""Routing: which server runs a task (DESIGN.md §4).

Pure code over ``ServerInfo`` snapshots: no I/O, no clock, no threads. The caller (the
cluster, later the many-servers backend) owns the I/O and asks ``Router.pick_server`` one
decision at a time.

Rules, in order:

1. **Constraints filter.** A server is *eligible* when its name is the pin (``@name``), its
   tags satisfy the tag expression, and its resource *capacity* covers every need. No
   eligible server: ``NoMatchingServer``, naming the constraint and listing every server with
   its tags and resources.
2. **Reservations.** A resource need is held while its task runs: ``reserve`` when the task is
   sent, ``release`` when it ends. Among the eligible, only servers whose *free* resources
   (capacity minus reservations) cover the need can take the task now. An eligible server
   exists but none is free: ``pick_server`` returns ``Busy`` (not an error), and the caller
   queues the task and asks again after a ``release``.
3. **Locality.** Prefer the server already holding the most bytes of the task's inputs.
4. **Load.** Then the least loaded: idle servers (a free worker, ``busy < workers``) first,
   then the smallest share of busy workers.
5. **Round robin.** Among servers still tied, the one picked least recently (state kept in
   the ``Router``): with equal servers, successive picks visit every one in turn.

Tasks without resource needs are never ``Busy``: a server with every worker busy queues them
itself. A ``ServerInfo`` with ``workers == 0`` (unknown) counts as idle only when nothing
runs on it.

Invariants: a chosen server always meets the constraint and has the free resources; with a
pin, the choice is that server, or ``NoMatchingServer`` / ``Busy``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from sperse._core import ServerInfo
from sperse._lang.placement import Placement, TagExpr
from sperse._serialize import RemoteValue
from sperse.errors import NoMatchingServer

__all__ = ["Busy", "Router", "check_placement", "eligible", "input_locations"]

# Reservations are sums of floats (0.1 + 0.2 ...): compare with a little slack.
_EPSILON: Final = 1e-9
_TAG_CACHE_LIMIT: Final = 4096


@dataclass(frozen=True, slots=True)
class Busy:
    """Servers meet the constraint, but their resources are all reserved by running tasks.

    Not an error: keep the task queued and ask ``Router.pick_server`` again after a
    ``Router.release``. ``servers`` names the servers that could take it once freed.
    """

    placement: Placement
    servers: tuple[str, ...]

    def __str__(self) -> str:
        names = ", ".join(self.servers)
        return f"every server matching [{self.placement}] has its resources in use ({names})"


class Router:
    """Picks a server for each task; keeps resource reservations and round-robin state.

    Not thread-safe: one owner calls it (the cluster's scheduling thread).
    """

    __slots__ = ("_last", "_reserved", "_tag_cache", "_tick")

    def __init__(self) -> None:
        self._reserved: dict[str, dict[str, float]] = {}
        self._last: dict[str, int] = {}  # server name -> tick of its last pick
        self._tick = 0
        # tag expression -> (server tags -> matches); servers' tag sets repeat across decisions.
        self._tag_cache: dict[TagExpr, dict[frozenset[str], bool]] = {}

    # ---- reservations --------------------------------------------------------

    def reserve(self, server: str, resources: Mapping[str, float]) -> None:
        """Hold ``resources`` on ``server`` while a task runs there."""
        if not resources:
            return
        held = self._reserved.setdefault(server, {})
        for name, amount in resources.items():
            held[name] = held.get(name, 0.0) + amount

    def release(self, server: str, resources: Mapping[str, float]) -> None:
        """Give back what ``reserve`` held. Releasing more than is held is a caller's bug."""
        if not resources:
            return
        held = self._reserved.get(server, {})
        for name, amount in resources.items():
            left = held.get(name, 0.0) - amount
            if left < -_EPSILON:
                raise ValueError(
                    f"release of {name}={amount:g} on {server!r}, which holds only "
                    f"{held.get(name, 0.0):g}: every release must match a reserve"
                )
            if left > _EPSILON:
                held[name] = left
            else:
                held.pop(name, None)
        if not held:
            self._reserved.pop(server, None)

    def reserved(self, server: str) -> dict[str, float]:
        """What running tasks hold on ``server`` now (a copy)."""
        return dict(self._reserved.get(server, {}))

    def forget(self, server: str) -> None:
        """``server`` left: drop its reservations and round-robin state."""
        self._reserved.pop(server, None)
        self._last.pop(server, None)

    # ---- the decision --------------------------------------------------------

    def pick_server(
        self,
        placement: Placement,
        servers: Sequence[ServerInfo],
        input_locations: Mapping[str, int] | None = None,
        *,
        what: str = "the task",
    ) -> ServerInfo | Busy:
        """The server to run a task with ``placement`` on, or ``Busy``.

        ``input_locations`` maps a server's name to the bytes of the task's inputs it
        already holds (see ``input_locations()``). Raises ``NoMatchingServer`` (its message
        starts with ``what``) when no server meets the constraint at all. Picking does not
        reserve: call ``reserve(server.name, placement.resources)`` when the task is sent.
        """
        tags = placement.tags
        pin = placement.pin
        needs = tuple(placement.resources.items())
        reserved = self._reserved
        cache: dict[frozenset[str], bool] | None = None
        if tags is not None:
            cache = self._tag_cache.get(tags)
            if cache is None:
                if len(self._tag_cache) >= _TAG_CACHE_LIMIT:
                    self._tag_cache.clear()
                cache = self._tag_cache[tags] = {}

        free: list[ServerInfo] = []
        fitting: list[str] = []  # eligible by capacity, whether free or not
        for server in servers:
            if pin is not None and server.name != pin:
                continue
            if cache is not None:
                ok = cache.get(server.tags)
                if ok is None:
                    assert tags is not None
                    ok = cache[server.tags] = tags.matches(server.tags)
                if not ok:
                    continue
            if needs:
                # Plain loops, not any(generator): this runs for every server, every decision.
                capacity = server.resources
                fits = True
                for name, need in needs:
                    if capacity.get(name, 0) < need:
                        fits = False
                        break
                if not fits:
                    continue
                fitting.append(server.name)
                held = reserved.get(server.name)
                if held:
                    for name, need in needs:
                        if capacity.get(name, 0) - held.get(name, 0.0) < need - _EPSILON:
                            fits = False
                            break
                    if not fits:
                        continue
            free.append(server)

        if not free:
            if fitting:
                return Busy(placement, tuple(fitting))
            raise NoMatchingServer(no_match_message(placement, servers, what))
        chosen = free[0] if len(free) == 1 else self._best(free, input_locations)
        self._tick += 1
        self._last[chosen.name] = self._tick
        return chosen

    def _best(
        self, candidates: list[ServerInfo], locations: Mapping[str, int] | None
    ) -> ServerInfo:
        """Most input bytes, then idle, then least busy share, then least recently picked.

        The sort key ``(-bytes, not idle, busy share, last pick)`` is computed inline: this
        loop is most of a decision's cost.
        """
        last = self._last
        best = candidates[0]
        best_key = (1, True, 0.0, 0)
        first = True
        for server in candidates:
            name = server.name
            workers = server.workers
            busy = server.busy
            if workers > 0:
                key = (
                    -locations.get(name, 0) if locations else 0,
                    busy >= workers,
                    busy / workers,
                    last.get(name, 0),
                )
            else:
                key = (
                    -locations.get(name, 0) if locations else 0,
                    busy > 0,
                    float(busy),
                    last.get(name, 0),
                )
            if first or key < best_key:
                best, best_key, first = server, key, False
        return best


def input_locations(values: Iterable[object]) -> dict[str, int]:
    """Bytes held per server among ``values`` (``RemoteValue``s count; the rest is local)."""
    out: dict[str, int] = {}
    for value in values:
        if isinstance(value, RemoteValue):
            ref = value.ref
            out[ref.server] = out.get(ref.server, 0) + ref.size
    return out


# ---- constraints only (no reservations, no preference) -------------------------------------


def eligible(placement: Placement, servers: Sequence[ServerInfo]) -> list[ServerInfo]:
    """The servers that meet every constraint of ``placement`` (by capacity)."""
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
    if not str(placement):
        return
    pin = placement.pin
    if pin is not None and placement.tags is None and not placement.resources:
        for server in servers:  # a pin alone (a remote object's calls): the common case
            if server.name == pin:
                return
    elif eligible(placement, servers):
        return
    raise NoMatchingServer(no_match_message(placement, servers, what))


def no_match_message(placement: Placement, servers: Sequence[ServerInfo], what: str) -> str:
    """One line: what was asked, why nothing fits, what exists, what to do."""
    listing = "; ".join(_describe(s) for s in servers) or "none"
    reasons: list[str] = []
    fixes: list[str] = []
    if placement.pin is not None and all(s.name != placement.pin for s in servers):
        reasons.append(f"no server is named {placement.pin!r}")
        fixes.append("pin one of the servers listed")
    if placement.tags is not None:
        known = frozenset().union(*(s.tags for s in servers))
        missing = sorted(placement.tags.tag_names() - known)
        if missing:
            reasons.append(f"no server has the tag {', '.join(missing)}")
        fixes.append("start a server with the tag (sperse server --tag ...)")
    short = False
    for name, need in placement.resources.items():
        most = max((s.resources.get(name, 0) for s in servers), default=0)
        if most < need:
            reasons.append(f"no server has {name}={need:g} (the most is {most:g})")
            short = True
    if short:
        fixes.append("start a server with the resource (sperse server --resource ...)")
    fixes.append("change the constraint")
    why = f" ({'; '.join(reasons)})" if reasons else ""
    fix = ", or ".join(fixes)
    fix = fix[0].upper() + fix[1:]
    return f"{what}: no server matches [{placement}]{why}. Servers: {listing}. {fix}."


def _describe(server: ServerInfo) -> str:
    tags = ", ".join(sorted(server.tags)) or "no tags"
    resources = ", ".join(f"{k}={v:g}" for k, v in sorted(server.resources.items()))
    return f"{server.name} ({tags}{'; ' + resources if resources else ''})"
