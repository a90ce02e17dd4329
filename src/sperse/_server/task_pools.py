"""The worker pools that run tasks: the server's own, and those of pip environments. The I/O
side of the machine's ``Submit`` and ``Cancel`` actions.

The server's pool starts in the background (its workers take a while); what is submitted
meanwhile waits here, in order. A pool that cannot start fails what waits and what comes
later (``PoolError``); one that is closed (the server stops) fails what comes
(``ServerStopping``); an attempt cancelled while it waits here is failed
(``TaskCancelled``). Failures go back to the machine through ``fail``.

While the server's pool delivers a batch of its events, the tasks those events let start
(a finished task makes room for the next of its session) are kept, in order, and handed to
the pool in one call when the batch ends: one assignment and one write per worker for the
batch, not one per task. A cancel, or the tasks of a client's message, hand them over
first, so the pool sees every request in the order the machine made it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from sperse._core import BackendEvent, ErrorInfo
from sperse._pool.pool import PoolStats, WorkerPool
from sperse._pool.procs import StartMethod
from sperse._server.actions import Cancel, Submit
from sperse._server.config import ServerConfig
from sperse._server.envs import PipEnvs
from sperse._server.logs import log_event
from sperse._server.model import RUNNER

__all__ = ["TaskPools"]


class TaskPools:
    """``on_event``/``on_delivered``: the pools' events; ``fail(pool_id, error)``: an
    attempt that cannot run; ``env()``: the workers' environment; ``token()``: the
    cluster token, handed to each worker apart from it."""

    def __init__(
        self,
        config: ServerConfig,
        name: str,
        loop: asyncio.AbstractEventLoop,
        *,
        on_event: Callable[[BackendEvent], None],
        on_delivered: Callable[[], None],
        fail: Callable[[str, ErrorInfo], None],
        env: Callable[[], Mapping[str, str]],
        token: Callable[[], str],
    ) -> None:
        self._config = config
        self._name = name
        self._loop = loop
        self._on_event = on_event
        self._on_delivered = on_delivered
        self._fail = fail
        self._env = env
        self._token = token
        self.pool: WorkerPool | None = None
        self.envs = PipEnvs(
            config.env_root, name, self._env_pool, timeout=config.env_timeout
        )  # the pools of pip environments that tasks ask for
        self._error = ""
        self._started: asyncio.Task[None] | None = None
        self.early: dict[str, bytes] = {}  # pool id -> payload, submitted before the pool
        self._closing = False
        self._in_batch = False  # the server's pool is delivering its events
        self._deferred: list[Submit] = []  # submitted meanwhile, for the pool at its end

    def start(self, then: Callable[[], None] | None = None) -> None:
        """Start the workers in the background; ``then``: called once they are started (or
        failed to), so that what else the server starts does not slow its first tasks."""
        self._started = self._loop.create_task(self._start())
        if then is not None:
            self._started.add_done_callback(lambda _: then())

    async def _start(self) -> None:
        try:
            pool = await self._new_pool()
        except Exception as exc:
            self._error = f"the worker processes of server {self._name!r} cannot start: {exc}"
            log_event(logging.ERROR, "pool_failed", error=exc)
            early, self.early = self.early, {}
            for pool_id in early:
                self._fail(pool_id, ErrorInfo("internal", "PoolError", self._error))
            return
        if self._closing:
            await asyncio.to_thread(pool.close)
            return
        self.pool = pool
        early, self.early = self.early, {}
        for pool_id, payload in early.items():
            pool.submit(pool_id, payload)

    async def _new_pool(self) -> WorkerPool:
        """The server's pool, its workers forked by the tasks' forkserver (milliseconds each,
        once it has imported them; docs/decisions.md, "Processes"), or spawned if it cannot
        fork them.
        A pip environment's workers are always spawned (``_env_pool``): a fork would keep the
        server's gRPC and protobuf, which the environment may pin at other versions."""
        try:
            return await self._pool_of("forkserver-tasks")
        except Exception as exc:
            log_event(logging.WARNING, "forkserver_failed", error=exc)
        return await self._pool_of("spawn")

    async def _pool_of(self, start_method: StartMethod) -> WorkerPool:
        return await asyncio.to_thread(
            WorkerPool,
            self._config.worker_count,
            RUNNER,
            self._batch_event,
            name=self._name,
            loop=self._loop,
            on_events_delivered=self._batch_delivered,
            env=dict(self._env()),
            token=self._token(),
            start_method=start_method,
        )

    async def close(self) -> None:
        """Stop every worker (and wait for them to exit)."""
        self._closing = True
        if self._started is not None:
            await self._started
        if self.pool is not None:
            await asyncio.to_thread(self.pool.close)
        await self.envs.close()

    def _env_pool(self, label: str, folder: str) -> WorkerPool:
        """The worker pool of a pip environment: its folder first on the workers' path."""
        return WorkerPool(
            self._config.worker_count,
            RUNNER,
            self._on_event,
            name=f"{self._name}/env/{label}",
            loop=self._loop,
            on_events_delivered=self._on_delivered,
            env={**self._env(), "PYTHONPATH": folder},
            token=self._token(),
        )

    def _env_failed(self, pool_id: str, message: str) -> None:
        self._fail(pool_id, ErrorInfo("environment", "EnvUnavailable", message))

    def _batch_event(self, event: BackendEvent) -> None:
        self._in_batch = True
        self._on_event(event)

    def _batch_delivered(self) -> None:
        self._in_batch = False
        self._hand_over()
        self._on_delivered()

    def _hand_over(self) -> None:
        """Give the pool the tasks kept while it delivered its events."""
        if self._deferred:
            deferred, self._deferred = self._deferred, []
            self.submit_many(deferred)

    def submit(self, action: Submit) -> None:
        if self._in_batch and not action.pip and self.pool is not None:
            self._deferred.append(action)  # handed over when the batch ends
            return
        pool_id, payload = action.pool_id, action.payload
        if action.pip:
            self.envs.submit(action.pip, pool_id, payload, self._env_failed)
        elif self.pool is not None:
            try:
                self.pool.submit(pool_id, payload)
            except RuntimeError:  # closed: the server is stopping
                self._fail(
                    pool_id, ErrorInfo("internal", "ServerStopping", "the server is stopping")
                )
        elif self._error:
            self._fail(pool_id, ErrorInfo("internal", "PoolError", self._error))
        else:
            self.early[pool_id] = payload

    def submit_many(self, actions: list[Submit]) -> None:
        """``submit`` each, in order: to the server's pool in one call when it runs (the
        tasks of one message from a client)."""
        self._hand_over()
        if self.pool is None or any([a.pip for a in actions]):
            for action in actions:
                self.submit(action)
            return
        try:
            self.pool.submit_many([(a.pool_id, a.payload) for a in actions])
        except RuntimeError:  # closed: the server is stopping
            for action in actions:
                self._fail(
                    action.pool_id,
                    ErrorInfo("internal", "ServerStopping", "the server is stopping"),
                )

    def cancel(self, action: Cancel) -> None:
        self._hand_over()
        pool_id = action.pool_id
        if action.pip:
            queued = self.envs.cancel(action.pip, pool_id)  # still waiting for pip
        else:
            queued = self.early.pop(pool_id, None) is not None
            if not queued and self.pool is not None:
                self.pool.cancel(pool_id)  # False: its terminal event is on its way
        if queued:
            self._fail(pool_id, ErrorInfo("cancelled", "TaskCancelled", "cancelled while queued"))

    def stats(self) -> PoolStats | None:
        return self.pool.stats() if self.pool is not None else None
