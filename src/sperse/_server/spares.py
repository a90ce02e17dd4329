"""Spare object workers: one-worker pools started before a remote object needs one.

Starting a remote object's worker (spawning it, and its imports) costs about 0.12 s of CPU
and 0.25 s of wall time on a busy 2-core machine, and a flow starts one per operator
replica. So a server keeps ``spare_object_workers`` (``--spare-object-workers``) such pools
started and idle; a create takes one instead of starting one
(:class:`~sperse._server.object_pools.ObjectPools`), which then serves under the object's
name and concurrency (:meth:`~sperse._pool.pool.WorkerPool.configure`), its events going
to the object (:class:`Binding`). A new spare starts only while nothing runs on the server
(no task, no call of an object, no create): it would take CPU from the work that took the
last one (a flow's operators, say). The owner asks (``refill``) when an object is gone and
when a batch of pool events leaves the server idle.

Invariants:

- A spare is taken only if it was started with what a worker started now would get: the
  server's ``env()`` and ``token()``, and this process's ``os.environ``, which its workers
  inherit (the state store lists itself there). Else it is closed, and the create starts a
  worker of its own.
- A spare whose worker exited is closed and never handed out; the next refill replaces it.
- Spares count toward ``max_objects``: live objects and spares are never more than it (a
  spare starts only while they are fewer: ``room()``).
- After ``close()`` no spare starts; every spare's pool is closed, and the tasks given to
  ``own`` end once their workers are gone.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from sperse._core import BackendEvent
from sperse._pool.events import Reported
from sperse._pool.pool import WorkerPool
from sperse._server.logs import log_event

__all__ = ["Binding", "Environment", "SpareWorkers"]

SPARE_LABEL = "spare"  # a spare's pool is named SERVER/object/spare until it is taken


@dataclass(frozen=True, slots=True)
class Environment:
    """What a worker started now gets: compared whole, so that any change shows."""

    env: tuple[tuple[str, str], ...]  # the server's, for its workers
    token: str
    inherited: tuple[tuple[str, str], ...]  # os.environ

    @classmethod
    def now(cls, env: Mapping[str, str], token: str) -> Environment:
        return cls(tuple(sorted(env.items())), token, tuple(sorted(os.environ.items())))


def _ignore(object_id: str, event: BackendEvent | Reported) -> None:
    """A spare runs no task: it has no events."""


@dataclass(slots=True, eq=False)
class Binding:
    """Where a one-worker pool's events go: to ``object_id``'s (``""``: a spare's), set
    anew when a spare is taken. The pool's callbacks are this binding's methods."""

    object_id: str
    on_exit: Callable[[str, int, str], None]
    on_event: Callable[[str, BackendEvent], None] = _ignore
    on_report: Callable[[str, Reported], None] = _ignore

    def event(self, event: BackendEvent) -> None:
        self.on_event(self.object_id, event)

    def report(self, report: Reported) -> None:
        self.on_report(self.object_id, report)

    def exit(self, pid: int, how: str) -> None:
        self.on_exit(self.object_id, pid, how)


@dataclass(slots=True, eq=False)
class _Spare:
    environment: Environment
    binding: Binding = field(init=False)
    pool: WorkerPool | None = None  # None while it starts
    dead: bool = False  # its worker exited


class SpareWorkers:
    """The spare pools of one server. ``make(binding, label, environment)``: a one-worker
    object pool labelled ``label`` (blocking: called in a thread); ``environment()``: the one of now;
    ``idle()``: nothing runs on the server now;
    ``room()``: how many more object processes the bound allows; ``close_pool(pool)``:
    close it without blocking the loop. Call from the loop only."""

    def __init__(
        self,
        count: int,
        loop: asyncio.AbstractEventLoop,
        *,
        make: Callable[[Binding, str, Environment], WorkerPool],
        environment: Callable[[], Environment],
        idle: Callable[[], bool],
        room: Callable[[], int],
        close_pool: Callable[[WorkerPool], None],
        own: Callable[[asyncio.Task[None]], None],
    ) -> None:
        self._count = count
        self._loop = loop
        self._make = make
        self._environment = environment
        self._idle = idle
        self._room = room
        self._close_pool = close_pool
        self._own = own
        self._ready: list[_Spare] = []  # started, oldest first
        self._starting = 0
        self._closed = False
        self.taken = 0  # spares handed out (for tests and the log)
        self.discarded = 0  # closed unused: started under another environment, or dead

    def pids(self) -> tuple[int, ...]:
        return tuple(pid for s in self._ready if s.pool for pid in s.pool.stats().workers)

    @property
    def short(self) -> bool:
        """Fewer spares than the count are ready or starting (cheap: asked per event batch)."""
        return len(self._ready) + self._starting < self._count and not self._closed

    def refill(self) -> None:
        """Start spares up to the count (in the background), within the bound, if nothing
        runs on the server (``idle()``): a spare's start (~0.1 s of CPU) must not slow the
        work that took the last one. The owner asks again once the server is idle."""
        if self._closed or not self._idle():
            return
        want = min(self._count, self._room()) - len(self._ready) - self._starting
        for _ in range(max(0, want)):
            self._starting += 1
            self._own(self._loop.create_task(self._start(self._environment())))

    async def _start(self, environment: Environment) -> None:
        spare = _Spare(environment)
        spare.binding = Binding("", lambda _object_id, pid, how: self._died(spare, pid, how))
        try:
            pool = await asyncio.to_thread(self._make, spare.binding, SPARE_LABEL, environment)
        except Exception as exc:
            log_event(logging.WARNING, "spare_object_worker_failed", error=exc)
            return
        finally:
            self._starting -= 1
        spare.pool = pool
        if self._closed or spare.dead:
            self._close_pool(pool)
        else:
            self._ready.append(spare)

    def _died(self, spare: _Spare, pid: int, how: str) -> None:
        """The spare's worker exited (its pool would start another: it is closed instead)."""
        spare.dead = True
        log_event(logging.WARNING, "spare_object_worker_exited", pid=pid, how=how)
        if spare in self._ready:
            self._ready.remove(spare)
            self._discard(spare)

    def _discard(self, spare: _Spare) -> None:
        self.discarded += 1
        if spare.pool is not None:
            self._close_pool(spare.pool)

    def take(
        self,
        object_id: str,
        name: str,
        concurrency: int,
        on_event: Callable[[str, BackendEvent], None],
        on_exit: Callable[[str, int, str], None],
        on_report: Callable[[str, Reported], None],
    ) -> WorkerPool | None:
        """A spare, now the pool of ``object_id`` (named ``name``, running
        ``concurrency`` calls at once, its events to ``on_event`` and ``on_exit``); None if
        there is none fit for it (those that are not are closed)."""
        now: Environment | None = None
        while self._ready:
            spare = self._ready.pop(0)
            now = now or self._environment()
            pool = spare.pool
            if pool is None or spare.environment != now or not pool.stats().workers:
                self._discard(spare)
                continue
            try:
                pool.configure(name, concurrency)
            except RuntimeError:  # pragma: no cover - closed: its exit is on its way
                self._discard(spare)
                continue
            spare.binding.object_id = object_id
            spare.binding.on_event = on_event
            spare.binding.on_exit = on_exit
            spare.binding.on_report = on_report
            self.taken += 1
            return pool
        return None

    def close(self) -> None:
        """No more spares; close those there are (their closing tasks are ``own``ed)."""
        self._closed = True
        ready, self._ready = self._ready, []
        for spare in ready:
            if spare.pool is not None:
                self._close_pool(spare.pool)
