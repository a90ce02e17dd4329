"""Pulls of objects from other servers, on the driver's side: the I/O of the machine's
``StartPull`` and ``CancelPull`` actions (:mod:`sperse._server.pulls` decides).

Each pull is an asyncio task owned here; its outcome goes back to the machine
(``ServerState.pulled`` or ``pull_failed``). A cancelled pull reports nothing, and
``Peers.pull`` leaves no file behind.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from sperse._server.actions import Action, StartPull
from sperse._server.logs import log_event
from sperse._server.model import Peers, PullFailed
from sperse._server.state import ServerState

__all__ = ["PullRunner"]


class PullRunner:
    """``perform``: takes the actions the machine returns for a pull's outcome."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        clock: Callable[[], float],
        state: ServerState,
        perform: Callable[[list[Action]], None],
    ) -> None:
        self._loop = loop
        self._clock = clock
        self._state = state
        self._perform = perform
        self._in_flight: dict[int, asyncio.Task[None]] = {}  # by pull id
        self._tasks: set[asyncio.Task[None]] = set()  # running, cancelled ones too

    def start(self, action: StartPull, peers: Peers) -> None:
        pull = self._loop.create_task(self._pull(action, peers))
        self._in_flight[action.pull_id] = pull
        self._tasks.add(pull)
        pull.add_done_callback(self._tasks.discard)

    def cancel(self, pull_id: int) -> None:
        pull = self._in_flight.pop(pull_id, None)
        if pull is not None:
            pull.cancel()

    async def close(self) -> None:
        """Cancel every pull (no task waits for them any more) and wait for them to end."""
        pulls = list(self._tasks)
        for pull in pulls:
            pull.cancel()
        await asyncio.gather(*pulls, return_exceptions=True)

    async def _pull(self, action: StartPull, peers: Peers) -> None:
        ref = action.ref
        log_event(logging.DEBUG, "pull_started", object=ref.object_id, holder=ref.server)
        started = self._clock()
        state = self._state
        try:
            pulled = await peers.pull(ref, action.shm_prefix)
        except PullFailed as exc:
            actions = state.pull_failed(action.pull_id, exc.reason, exc.advice)
        except Exception as exc:  # a bug of ours: the tasks fail rather than wait forever
            log_event(logging.ERROR, "pull_error", exc_info=True, object=ref.object_id)
            reason = f"{type(exc).__name__}: {exc}"
            actions = state.pull_failed(action.pull_id, reason, "report this as a bug")
        else:
            actions = state.pulled(action.pull_id, pulled, self._clock() - started)
        self._in_flight.pop(action.pull_id, None)
        self._perform(actions)
