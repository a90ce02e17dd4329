"""The many-servers dispatcher: which member server each task goes to, and what becomes of
the tasks of a server that is lost. Pure: no threads, no I/O, no clock. ``ClusterBackend``
(:mod:`sperse._backends.multi`) is its shell: it holds the lock, calls the servers, and
carries out the ``Decision`` each method returns (emit ``failed``, then hand ``sends`` to
their servers).

Scheduling: a task is sent to a member only while the member has room, fewer than
``depth(workers)`` tasks of this client in flight there; the rest wait here, in order, and
are sent as tasks end. So a long map keeps every server fed, a server that joins mid-run
gets the tasks still waiting, and a lost server takes few tasks down with it. The exception:
a task pinned to a live server and asking no resources (a remote object's calls) goes
straight to it, which queues it.

Invariants (checked by ``tests/cluster/test_dispatcher.py``):

- a task submitted and not yet over is in exactly one place: waiting here, or in flight on
  one live member; a decision sends it, or fails it, never both;
- tasks of a lost member wait again (at the front, in the order they were sent), at most
  ``max_reroutes``
  times, unless they were pinned to it or use a value only it held: those fail with
  ``ServerLost``;
- a task whose placement no member satisfies (not merely: none has room) fails with
  ``NoMatchingServer``.

Members are known by a ``MemberId`` given at ``join``: a server that restarts under the same
name is a new member, and events of its old connection are stale. A coordinator's snapshot
tells a restarted server by its ``instance`` (an id the server picks when it starts), not by
its join time: after the *coordinator* restarts, every server joins again, and the same
instance is the same server, whose connection and tasks go on.

A member is lost when its own connection breaks (``lose``), or when a coordinator that is
not ``settling`` no longer lists it. A settling coordinator has only just started (it may
have restarted): the servers it does not list yet may re-join at their next heartbeat, so
its snapshots only add servers and replace restarted ones; the first settled snapshot
drops the members still missing.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NewType

from sperse._core import (
    CallTask,
    ErrorInfo,
    Failed,
    ObjectCall,
    ObjectCreate,
    ServerInfo,
    StatementTask,
    TaskSpec,
)
from sperse._core.routing import Busy, Router, check_placement, input_locations
from sperse.errors import NoMatchingServer

__all__ = ["Decision", "Dispatcher", "MemberId", "MembershipChange", "depth"]

MemberId = NewType("MemberId", int)


def depth(workers: int) -> int:
    """Tasks of this client in flight on a server: its workers busy, as many queued behind."""
    return 2 * max(1, workers) + 2


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do: emit ``failed`` (in order), then send each member its tasks.
    ``moved``: tasks of a lost member that wait for another."""

    sends: tuple[tuple[MemberId, tuple[TaskSpec, ...]], ...] = ()
    failed: tuple[Failed, ...] = ()
    moved: int = 0

    def __add__(self, other: Decision) -> Decision:
        return Decision(
            self.sends + other.sends, self.failed + other.failed, self.moved + other.moved
        )


NOTHING = Decision()


@dataclass(frozen=True, slots=True)
class MembershipChange:
    """After a coordinator's snapshot: the members to lose, and the servers to connect to
    (``(name, address, instance)``; each is "connecting" until ``connect_ended``)."""

    gone: tuple[MemberId, ...]
    connect: tuple[tuple[str, str, str], ...]


@dataclass(eq=False, slots=True)
class _Member:
    id: MemberId
    name: str
    instance: str  # the server's own id: another one under the same name is a restart
    # What the router sees, rebuilt only when `inflight` changes: a decision among 100
    # servers must not build 100 ServerInfo.
    info: ServerInfo
    depth: int  # tasks of this client it may have in flight
    alive: bool = True
    inflight: dict[str, None] = field(default_factory=dict)  # task ids, in the order sent

    def add(self, task_id: str) -> None:
        self.inflight[task_id] = None
        self.info = replace(self.info, busy=len(self.inflight))

    def discard(self, task_id: str) -> None:
        self.inflight.pop(task_id, None)
        self.info = replace(self.info, busy=len(self.inflight))


@dataclass(eq=False, slots=True)
class _Flight:
    spec: TaskSpec
    member: _Member | None = None  # None: waiting here
    reroutes: int = 0
    key: str = ""  # its placement, as text: tasks alike share a decision

    def __post_init__(self) -> None:
        self.key = str(self.spec.placement)


class Dispatcher:
    """Where the tasks of a many-servers client go; see the module docstring."""

    def __init__(self, *, max_reroutes: int = 3) -> None:
        self._max_reroutes = max_reroutes
        self._members: dict[str, _Member] = {}  # the latest member of each name
        self._by_id: dict[MemberId, _Member] = {}
        self._next_id = 0
        self._connecting: set[str] = set()  # names being connected (coordinator mode)
        self._flights: dict[str, _Flight] = {}
        self._waiting: collections.deque[str] = collections.deque()  # task ids, in order
        self._router = Router()

    # ---- views ---------------------------------------------------------------------------

    def live(self) -> list[MemberId]:
        return [m.id for m in self._members.values() if m.alive]

    def infos(self) -> list[ServerInfo]:
        """The live members as the router sees them (``busy``: this client's tasks)."""
        return [m.info for m in self._members.values() if m.alive]

    def member(self, name: str, *, alive: bool = False) -> MemberId | None:
        """The latest member called ``name`` (only a live one, if ``alive``)."""
        member = self._members.get(name)
        if member is None or (alive and not member.alive):
            return None
        return member.id

    def name_of(self, member: MemberId) -> str:
        return self._by_id[member].name

    def locate(self, name: str) -> str | None:
        """The address of the live server ``name`` (where its values are)."""
        member = self._members.get(name)
        return member.info.address if member is not None and member.alive else None

    def waiting(self) -> list[str]:
        """The tasks waiting for room, in order."""
        return [t for t in self._waiting if t in self._flights]

    def inflight(self, member: MemberId) -> set[str]:
        return set(self._by_id[member].inflight)

    def owner(self, task_id: str) -> MemberId | None:
        """The member running ``task_id`` (None: waiting, or over)."""
        flight = self._flights.get(task_id)
        return flight.member.id if flight is not None and flight.member is not None else None

    # ---- membership ----------------------------------------------------------------------

    def join(self, name: str, info: ServerInfo, instance: str = "") -> MemberId | None:
        """A server connected (``info``: as its Welcome describes it, with its address;
        ``instance``: as the coordinator listed it). None: a live member has this name
        already (two urls for one server): not used."""
        old = self._members.get(name)
        if old is not None and old.alive:
            return None
        member_id = MemberId(self._next_id)
        self._next_id += 1
        info = replace(info, busy=0)
        member = _Member(member_id, name, instance, info, depth(info.workers))
        self._members[name] = self._by_id[member_id] = member
        return member_id

    def membership(
        self, listed: Sequence[tuple[str, str, str]], *, settling: bool = False
    ) -> MembershipChange:
        """A coordinator's snapshot ``(name, address, instance)``: members it lists with
        another instance (restarted) are gone, and so are those it no longer lists, unless
        it is ``settling``; servers it lists that are not live members nor being connected
        are to connect."""
        instances = {name: instance for name, _, instance in listed}
        gone = tuple(
            m.id
            for name, m in self._members.items()
            if m.alive and (instances[name] != m.instance if name in instances else not settling)
        )
        connect = tuple(
            (name, address, instance)
            for name, address, instance in listed
            if name not in self._connecting
            and (
                name not in self._members
                or not self._members[name].alive
                or self._members[name].instance != instance
            )
        )
        self._connecting.update(name for name, _, _ in connect)
        return MembershipChange(gone, connect)

    def connect_ended(self, name: str) -> None:
        """The connection attempt to ``name`` (from ``membership``) is over, either way."""
        self._connecting.discard(name)

    def lose(self, member_id: MemberId, why: str) -> Decision | None:
        """The member is gone: its tasks wait for another, or fail. None: it was lost already."""
        member = self._by_id[member_id]
        if not member.alive:
            return None
        member.alive = False
        self._router.forget(member.name)
        flights = [self._flights[t] for t in member.inflight if t in self._flights]
        member.inflight.clear()
        member.info = replace(member.info, busy=0)
        failed: list[Failed] = []
        again: list[str] = []
        for flight in flights:
            flight.member = None
            reason = self._cannot_reroute(flight, member.name)
            if reason:
                del self._flights[flight.spec.task_id]
                failed.append(_lost(flight.spec.task_id, member.name, f"{why}; {reason}"))
            else:
                flight.reroutes += 1
                again.append(flight.spec.task_id)
        self._waiting.extendleft(reversed(again))
        moved = Decision(failed=tuple(failed), moved=len(again))
        return moved + self.pump()

    def _cannot_reroute(self, flight: _Flight, server: str) -> str:
        """Why a task of a lost server cannot run elsewhere ("" if it can)."""
        spec = flight.spec
        if spec.placement.pin == server:
            return f"it was pinned to {server}"
        if flight.reroutes >= self._max_reroutes:
            return f"it was moved {flight.reroutes} times already"
        if server in input_locations(inputs(spec)):
            return f"it uses a value that only {server} held"
        return ""

    # ---- tasks ---------------------------------------------------------------------------

    def submit(self, specs: Sequence[TaskSpec]) -> Decision:
        """New tasks. Raises ``NoMatchingServer`` (and takes none of them) when there is no
        live member, or one task's placement fits none."""
        members = [m for m in self._members.values() if m.alive]
        if not members:
            raise NoMatchingServer(
                "no server in the cluster: start one (sperse server --join COORDINATOR, "
                "or sperse up)"
            )
        infos = [m.info for m in members]
        for spec in specs:
            check_placement(spec.placement, infos, spec.label or spec.task_id)
        direct: dict[MemberId, list[TaskSpec]] = {}
        by_name = {m.name: m for m in members}
        for spec in specs:
            flight = self._flights[spec.task_id] = _Flight(spec)
            pinned = by_name.get(spec.placement.pin or "")
            if pinned is not None and not spec.placement.resources:
                # Nothing to choose (a remote object's calls): straight to its server,
                # which queues it. Held back here, it would only wait longer.
                self._assign(flight, pinned, direct)
            else:
                self._waiting.append(spec.task_id)
        sent = Decision(sends=tuple((m, tuple(s)) for m, s in direct.items()))
        return sent + self.pump()

    def is_current(self, task_id: str, member: MemberId) -> bool:
        """Whether an event of ``member`` about ``task_id`` counts: False when the task moved
        elsewhere, was cancelled while waiting, or ended already."""
        flight = self._flights.get(task_id)
        return flight is not None and flight.member is not None and flight.member.id == member

    def finish(self, task_ids: Iterable[str], member: MemberId) -> Decision:
        """Tasks of ``member`` are over (ended, or never sent): their room goes to others."""
        owner = self._by_id[member]
        for task_id in task_ids:
            flight = self._flights.pop(task_id, None)
            if flight is not None:
                owner.discard(task_id)
                self._router.release(owner.name, flight.spec.placement.resources)
        return self.pump()

    def cancel(self, task_id: str) -> MemberId | None:
        """Cancel a task: forgotten here if it was waiting (None), else the member to ask
        (the task is over when its server says so)."""
        flight = self._flights.get(task_id)
        if flight is None:
            return None
        if flight.member is None:  # still waiting here: it never started
            del self._flights[task_id]
            with contextlib.suppress(ValueError):
                self._waiting.remove(task_id)
            return None
        return flight.member.id

    def pump(self) -> Decision:
        """Assign waiting tasks to members with room.

        Tasks whose placement found no room are kept in order; later tasks with the same
        placement are not tried again in this pass (one failed decision per placement)."""
        if not self._waiting:
            return NOTHING
        members = [m for m in self._members.values() if m.alive]
        room = {m.name: m.depth - len(m.inflight) for m in members}
        by_name = {m.name: m for m in members}
        sends: dict[MemberId, list[TaskSpec]] = {}
        kept: collections.deque[str] = collections.deque()
        failed: list[Failed] = []
        blocked: set[str] = set()  # placements that found no room in this pass
        while self._waiting:
            task_id = self._waiting.popleft()
            flight = self._flights.get(task_id)
            if flight is None:
                continue
            if not any(r > 0 for r in room.values()):
                kept.append(task_id)
                kept.extend(self._waiting)
                self._waiting.clear()
                break
            if flight.key in blocked:
                kept.append(task_id)
                continue
            spec = flight.spec
            servers = [by_name[n].info for n, r in room.items() if r > 0]
            what = spec.label or spec.task_id
            try:
                chosen = self._router.pick_server(
                    spec.placement, servers, input_locations(inputs(spec)), what=what
                )
            except NoMatchingServer:
                try:  # none with room, or none at all?
                    check_placement(spec.placement, [m.info for m in members], what)
                except NoMatchingServer as exc:
                    del self._flights[task_id]
                    failed.append(
                        Failed(task_id, "", ErrorInfo("no_server", "NoMatchingServer", str(exc)))
                    )
                    continue
                blocked.add(flight.key)
                kept.append(task_id)
                continue
            if isinstance(chosen, Busy):
                blocked.add(flight.key)
                kept.append(task_id)
                continue
            member = by_name[chosen.name]
            room[member.name] -= 1
            self._assign(flight, member, sends)
        self._waiting = kept
        return Decision(tuple((m, tuple(s)) for m, s in sends.items()), tuple(failed))

    def _assign(
        self, flight: _Flight, member: _Member, sends: dict[MemberId, list[TaskSpec]]
    ) -> None:
        spec = flight.spec
        self._router.reserve(member.name, spec.placement.resources)
        flight.member = member
        member.add(spec.task_id)
        sends.setdefault(member.id, []).append(spec)


def _lost(task_id: str, server: str, why: str) -> Failed:
    return Failed(
        task_id, server, ErrorInfo("server_lost", "ServerLost", f"lost with server {server}: {why}")
    )


def inputs(spec: TaskSpec) -> list[Any]:
    """The arguments of a task's work (where they are held decides where it runs best)."""
    work = spec.work
    if isinstance(work, CallTask | ObjectCall | ObjectCreate):
        return [*work.args, *work.kwargs.values()]
    if isinstance(work, StatementTask):
        return list(work.inputs.values())
    return []
