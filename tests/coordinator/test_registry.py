"""The membership state machine, on a clock the tests move: no network, no waiting."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from coordinator_helpers import member

from sperse._coordinator.registry import NameTaken, Registry


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def registry(timeout: float = 5.0) -> tuple[Registry, Clock]:
    clock = Clock()
    return Registry(timeout, clock=clock, wall=clock), clock


@dataclass(frozen=True)
class JoinCase:
    name: str
    first_address: str
    second_address: str
    silent: float  # seconds between the two joins, without heartbeats
    taken: bool  # the second join is refused
    kind: str  # else: the change it makes


JOIN_CASES = [
    JoinCase("same address replaces", "h:1", "h:1", 0.0, False, "rejoined"),
    JoinCase("other address, live holder", "h:1", "h:2", 4.9, True, ""),
    JoinCase("other address, stale holder", "h:1", "h:2", 5.1, False, "rejoined"),
]


@pytest.mark.parametrize("case", JOIN_CASES, ids=lambda c: c.name)
def test_a_second_join_with_the_same_name(case: JoinCase) -> None:
    reg, clock = registry()
    assert reg.join(member("a", case.first_address)).kind == "joined"
    clock.now += case.silent
    if case.taken:
        with pytest.raises(NameTaken) as caught:
            reg.join(member("a", case.second_address))
        assert caught.value.address == case.first_address
        assert [m.address for m in reg.snapshot().members] == [case.first_address]
    else:
        assert reg.join(member("a", case.second_address)).kind == case.kind
        assert [m.address for m in reg.snapshot().members] == [case.second_address]


def test_heartbeat_updates_the_load_and_keeps_the_member_alive() -> None:
    reg, clock = registry(timeout=5.0)
    reg.join(member("a", workers=4, tags=["gpu"]))
    for _ in range(3):
        clock.now += 4.0
        assert reg.heartbeat(member("a", busy=2, queued=7, objects=3, object_bytes=10))
        assert reg.sweep() == []
    (kept,) = reg.snapshot().members
    assert (kept.busy, kept.queued, kept.objects, kept.object_bytes) == (2, 7, 3, 10)
    assert (kept.workers, list(kept.tags)) == (4, ["gpu"])  # a heartbeat changes only load
    assert kept.last_heartbeat == clock.now
    assert kept.joined == 1000.0


@pytest.mark.parametrize(
    ("name", "address", "known"),
    [("a", "127.0.0.1:1001", True), ("b", "127.0.0.1:1001", False), ("a", "other:1", False)],
)
def test_heartbeat_is_known_only_for_the_name_at_its_address(
    name: str, address: str, known: bool
) -> None:
    reg, _ = registry()
    reg.join(member("a"))
    assert reg.heartbeat(member(name, address)) is known


def test_sweep_removes_only_silent_members_with_the_reason() -> None:
    reg, clock = registry(timeout=5.0)
    reg.join(member("old", "h:1"))
    clock.now += 3.0
    reg.join(member("new", "h:2"))
    version = reg.members_version
    clock.now += 2.5
    (change,) = reg.sweep()
    assert (change.kind, change.name, change.address) == ("removed", "old", "h:1")
    assert "no heartbeat for 5.5 s" in change.reason
    assert [m.name for m in reg.snapshot().members] == ["new"]
    assert reg.members_version == version + 1
    assert reg.sweep() == []


def test_versions_tell_membership_changes_from_load_changes() -> None:
    reg, _ = registry()
    reg.join(member("a"))
    members, load = reg.members_version, reg.load_version
    reg.heartbeat(member("a", busy=1))
    assert (reg.members_version, reg.load_version) == (members, load + 1)
    assert reg.leave("a") is not None
    assert reg.members_version == members + 1
    assert reg.leave("a") is None  # a second Leave changes nothing
    assert reg.members_version == members + 1


def test_snapshot_is_sorted_by_name_and_a_copy() -> None:
    reg, _ = registry()
    for name in ("c", "a", "b"):
        reg.join(member(name, f"h:{ord(name)}"))
    snapshot = reg.snapshot()
    assert [m.name for m in snapshot.members] == ["a", "b", "c"]
    snapshot.members[0].busy = 99
    assert reg.snapshot().members[0].busy == 0


def test_a_new_registry_settles_for_one_timeout_then_says_so_once() -> None:
    """A restarted coordinator's registry: a server it does not list yet may re-join at its
    next heartbeat, so its snapshots say ``settling`` for the first ``timeout`` seconds."""
    reg, clock = registry(timeout=5.0)
    assert reg.snapshot().settling
    clock.now += 1.0
    reg.join(member("a"))
    clock.now += 3.9
    version = reg.members_version
    assert reg.sweep() == []
    assert reg.snapshot().settling and reg.members_version == version
    clock.now += 0.2
    assert reg.sweep() == []
    assert not reg.snapshot().settling
    assert reg.members_version == version + 1  # watchers send the settled snapshot
    clock.now += 1.0
    assert [c.name for c in reg.sweep()] == ["a"]  # removals go on as before
    assert reg.members_version == version + 2
    assert reg.sweep() == [] and reg.members_version == version + 2
