"""Environments of pip packages for the tasks that ask for them (``env={"pip": [...]}``).

An environment is the sorted list of its requirements; its digest names it. A server installs
an environment once, with ``pip install --target``, into ``root/<digest>`` (a folder made
under another name and renamed when pip succeeded, so a half-installed one is never used, and
one installed by an earlier run of the server is used again), and serves its tasks from a
worker pool of its own whose workers have that folder first on ``sys.path``: packages of one
environment never meet another's, nor the server's own pool. At most ``limit`` environments
have a pool at once; the one used least recently is closed when another needs one.

Invariants: one installation at a time per digest, whoever asks; every task that asked gets
its pool or the installation's error (``EnvUnavailable``), never silence; the error names the
requirements, the server and pip's own last lines.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import sys
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sperse._pool.pool import WorkerPool

__all__ = ["EnvUnavailable", "PipEnvs", "env_digest"]

log = logging.getLogger("sperse.server")

_COMPLETE = ".sperse-complete"
_PIP_TAIL = 1500  # characters of pip's output quoted in an error


class EnvUnavailable(Exception):
    """An environment could not be installed (or its workers could not start)."""


def env_digest(requirements: Sequence[str]) -> str:
    """The name of the environment of ``requirements`` (order and repeats do not matter)."""
    text = "\n".join(sorted(set(requirements)))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclass(slots=True)
class _Env:
    requirements: tuple[str, ...]
    pool: WorkerPool | None = None
    ready: asyncio.Future[WorkerPool] | None = None  # set while installing or starting
    waiting: dict[str, bytes] = field(default_factory=dict)  # pool id -> payload


class PipEnvs:
    """The environments of one server (see the module docstring). Runs on the server's loop."""

    def __init__(
        self,
        root: str,
        server: str,
        make_pool: Callable[[str, str], WorkerPool],
        *,
        limit: int = 4,
        timeout: float = 600.0,
    ) -> None:
        """``make_pool(name, folder)``: a worker pool whose workers have ``folder`` on
        ``sys.path`` (called in a thread: starting workers takes a while)."""
        self.root = root
        self._server = server
        self._make_pool = make_pool
        self._limit = limit
        self._timeout = timeout
        self._envs: OrderedDict[str, _Env] = OrderedDict()
        self._closing = False

    def pool_of(self, requirements: Sequence[str]) -> WorkerPool | None:
        env = self._envs.get(env_digest(requirements))
        return env.pool if env is not None else None

    def submit(
        self,
        requirements: Sequence[str],
        pool_id: str,
        payload: bytes,
        fail: Callable[[str, str], None],
    ) -> None:
        """Run ``payload`` in the environment of ``requirements``: now if its pool is up,
        else once it is (``fail(pool_id, message)`` if it cannot be had)."""
        digest = env_digest(requirements)
        env = self._envs.get(digest)
        if env is None:
            env = self._envs[digest] = _Env(tuple(sorted(set(requirements))))
        self._envs.move_to_end(digest)
        if env.pool is not None:
            env.pool.submit(pool_id, payload)
            return
        env.waiting[pool_id] = payload
        if env.ready is None:
            loop = asyncio.get_running_loop()
            env.ready = loop.create_future()
            task = loop.create_task(self._prepare(digest, env, fail))
            task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    def cancel(self, requirements: Sequence[str], pool_id: str) -> bool:
        """Drop a task still waiting for its environment (True), else cancel it in the pool."""
        env = self._envs.get(env_digest(requirements))
        if env is None:
            return False
        if env.waiting.pop(pool_id, None) is not None:
            return True
        if env.pool is not None:
            env.pool.cancel(pool_id)
        return False

    async def close(self) -> None:
        self._closing = True
        pools = [env.pool for env in self._envs.values() if env.pool is not None]
        self._envs.clear()
        for pool in pools:
            await asyncio.to_thread(pool.close)

    # ---- installing ------------------------------------------------------------------

    async def _prepare(self, digest: str, env: _Env, fail: Callable[[str, str], None]) -> None:
        folder = os.path.join(self.root, digest)
        try:
            if not os.path.exists(os.path.join(folder, _COMPLETE)):
                await self._install(env.requirements, folder)
            await self._evict_for_one_more()
            pool = await asyncio.to_thread(self._make_pool, digest[:8], folder)
        except EnvUnavailable as exc:
            self._envs.pop(digest, None)  # the next task asks again: pip may succeed then
            for pool_id in env.waiting:
                fail(pool_id, str(exc))
            env.waiting.clear()
            return
        if self._closing or self._envs.get(digest) is not env:
            await asyncio.to_thread(pool.close)
            for pool_id in env.waiting:
                fail(pool_id, f"the server {self._server!r} is stopping")
            return
        env.pool = pool
        waiting, env.waiting = env.waiting, {}
        for pool_id, payload in waiting.items():
            pool.submit(pool_id, payload)

    async def _install(self, requirements: tuple[str, ...], folder: str) -> None:
        what = ", ".join(requirements)
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        scratch = f"{folder}.installing-{os.getpid()}"
        shutil.rmtree(scratch, ignore_errors=True)
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-input"]
        command += ["--disable-pip-version-check", "--target", scratch, *requirements]
        log.info("installing the environment %s into %s", what, folder)
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            async with asyncio.timeout(self._timeout):
                output, _ = await process.communicate()
        except TimeoutError:
            process.kill()
            await process.wait()
            shutil.rmtree(scratch, ignore_errors=True)
            raise EnvUnavailable(
                f"installing {what} on server {self._server!r} took more than "
                f"{self._timeout:g} s; it was stopped (sperse server --env-timeout)"
            ) from None
        if process.returncode != 0:
            shutil.rmtree(scratch, ignore_errors=True)
            tail = output.decode(errors="replace").strip()[-_PIP_TAIL:]
            raise EnvUnavailable(
                f"server {self._server!r} cannot install {what}: pip exited with status "
                f"{process.returncode}:\n{tail}\nCheck the names and versions, and that the "
                "server reaches its package index."
            )
        with open(os.path.join(scratch, _COMPLETE), "w") as marker:
            marker.write("\n".join(requirements) + "\n")
        try:
            os.rename(scratch, folder)
        except OSError:  # installed meanwhile by another run of this server: use that one
            shutil.rmtree(scratch, ignore_errors=True)

    async def _evict_for_one_more(self) -> None:
        """Close the pools of idle environments used least recently, past ``limit`` (an
        environment with work in its pool keeps it: the limit is then exceeded for a while)."""
        idle = [
            digest
            for digest, env in self._envs.items()
            if env.pool is not None and not _busy(env.pool)
        ]
        with_pools = sum(1 for env in self._envs.values() if env.pool is not None)
        while with_pools >= self._limit and idle:
            env = self._envs.pop(idle.pop(0))
            pool, env.pool = env.pool, None
            with_pools -= 1
            if pool is not None:
                await asyncio.to_thread(pool.close)


def _busy(pool: WorkerPool) -> bool:
    stats = pool.stats()
    return stats.busy > 0 or stats.queued > 0
