"""The coordinator's membership as a pure state machine: no gRPC, no tasks, no clock of its own.

Invariants:

- A name is held by at most one member. A member is *live* while its last heartbeat is at
  most ``timeout`` seconds old (by the monotonic clock passed in); a member that is not live
  is as good as gone: ``join`` may take its name from another address, and ``sweep`` removes
  it.
- ``join`` with a name held by a live member at another address raises ``NameTaken``; at the
  same address it replaces the member (a restarted server, or one that was dropped).
- ``heartbeat`` only updates a member whose name *and* address match (a server that was
  dropped and replaced by another one under the same name must not feed that one's load).
- ``members_version`` grows on every join, leave and removal; ``load_version`` on every
  heartbeat. Watchers compare them with what they last sent.
- ``joined`` and ``last_heartbeat`` in the snapshot are wall-clock seconds since the epoch;
  staleness is judged on the monotonic clock only, so a wall-clock jump removes no one.
- A new registry is *settling* for its first ``timeout`` seconds (its snapshots say so): it
  may be a restarted coordinator's, and live servers re-join only at their next heartbeat,
  so a server it does not list yet has not left. The first ``sweep`` after that ends it, and
  grows ``members_version`` (watchers send a snapshot that is no longer settling).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from sperse._wire import pb

__all__ = ["Change", "NameTaken", "Registry"]

_LOAD_FIELDS = (
    "busy",
    "queued",
    "objects",
    "object_bytes",
    "sessions",
    "rss",
    "workers_rss",
    "store_keys",
    "store_bytes",
    "remote_objects",
)


class NameTaken(Exception):
    """A live member at another address already holds this name."""

    def __init__(self, name: str, address: str) -> None:
        super().__init__(name, address)
        self.name = name
        self.address = address


@dataclass(frozen=True, slots=True)
class Change:
    """What a call did to the membership, for the log: ``kind`` is ``joined``, ``rejoined``,
    ``left`` or ``removed``; ``reason`` says why in words."""

    kind: str
    name: str
    address: str
    reason: str


class Registry:
    """Members by name; every method takes the current time from the clocks given."""

    def __init__(
        self,
        timeout: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.timeout = timeout
        self._clock = clock
        self._wall = wall
        self._members: dict[str, pb.Member] = {}
        self._seen: dict[str, float] = {}  # name -> monotonic time of its last heartbeat
        self.members_version = 0
        self.load_version = 0
        self._started = clock()
        self.settling = True

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, name: object) -> bool:
        return name in self._members

    def _live(self, name: str, now: float) -> bool:
        return now - self._seen[name] <= self.timeout

    def join(self, member: pb.Member) -> Change:
        """Register ``member`` (a copy is kept); raise ``NameTaken``."""
        now, wall = self._clock(), self._wall()
        old = self._members.get(member.name)
        silent = now - self._seen[member.name] if old is not None else 0.0
        if old is not None and old.address != member.address and silent <= self.timeout:
            raise NameTaken(member.name, old.address)
        kept = pb.Member()
        kept.CopyFrom(member)
        kept.joined = wall
        kept.last_heartbeat = wall
        self._members[member.name] = kept
        self._seen[member.name] = now
        self.members_version += 1
        if old is None:
            return Change("joined", member.name, member.address, "join")
        if old.address == member.address:
            return Change("rejoined", member.name, member.address, "joined again")
        return Change(
            "rejoined",
            member.name,
            member.address,
            f"took the name over from {old.address}, silent for {silent:.1f} s",
        )

    def heartbeat(self, member: pb.Member) -> bool:
        """Update the load of the member ``member`` names; False if this registry does not
        hold it (at that address, when ``member.address`` is given)."""
        kept = self._members.get(member.name)
        if kept is None or (member.address and member.address != kept.address):
            return False
        for name in _LOAD_FIELDS:
            setattr(kept, name, getattr(member, name))
        del kept.named_objects[:]
        kept.named_objects.extend(member.named_objects)
        kept.last_heartbeat = self._wall()
        self._seen[member.name] = self._clock()
        self.load_version += 1
        return True

    def leave(self, name: str) -> Change | None:
        member = self._members.pop(name, None)
        if member is None:
            return None
        del self._seen[name]
        self.members_version += 1
        return Change("left", name, member.address, "left")

    def sweep(self) -> list[Change]:
        """Remove every member whose last heartbeat is older than ``timeout``; end the
        settling time once it is over."""
        now = self._clock()
        changes = []
        for name in [n for n in self._members if not self._live(n, now)]:
            member = self._members.pop(name)
            silent = now - self._seen.pop(name)
            changes.append(
                Change(
                    "removed",
                    name,
                    member.address,
                    f"no heartbeat for {silent:.1f} s (timeout {self.timeout:g} s)",
                )
            )
        if self.settling and now - self._started >= self.timeout:
            self.settling = False
            self.members_version += 1
        elif changes:
            self.members_version += 1
        return changes

    def snapshot(self) -> pb.Membership:
        """Every member, by name; ``settling`` while the registry is (see above)."""
        members = [self._members[n] for n in sorted(self._members)]
        return pb.Membership(members=members, settling=self.settling)
