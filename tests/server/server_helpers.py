"""Test helpers: a real server on a background event loop, and a raw protocol client.

``ServerThread`` runs a ``SperseServer`` on its own loop thread (so a test may block, or run
its own loop with ``asyncio.run``). ``RawSession`` is one ``Session`` stream made from the
generated stub, driven message by message; every wait has a deadline, nothing sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import platform
import threading
from collections.abc import Callable, Coroutine, Mapping
from types import TracebackType
from typing import Any, TypeVar

import grpc
import grpc.aio

from sperse._core import CallTask, StatementTask
from sperse._serialize import dumps_oob, loads_oob, shm
from sperse._server import ServerConfig, ServerStats, SperseServer
from sperse._wire import MAX_MESSAGE, PROTOCOL, BlobReceiver, BlobSender, pb
from sperse._wire.sperse_pb2_grpc import SperseStub

DEADLINE = 20.0
TOKEN = "test-token-0123456789"
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run a test scenario on a fresh loop, with an overall deadline."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


def shm_files(pid: int | None = None) -> set[str]:
    """The shared memory files of the server with process id ``pid`` (default: this one,
    which runs the test servers)."""
    prefix = shm.server_prefix(pid)
    return {name for name in os.listdir(shm.SHM_DIR) if name.startswith(prefix)}


async def unlinked(names: set[str] | None = None, timeout: float = 60.0) -> None:
    """Wait until the server's thread that unlinks files (``sperse._server.files``) has
    unlinked ``names`` (default: every file of this process's servers); fail at the
    deadline."""
    deadline = asyncio.get_running_loop().time() + timeout
    while set(names) & shm_files() if names is not None else shm_files():
        if asyncio.get_running_loop().time() > deadline:
            left = set(names) & shm_files() if names is not None else shm_files()
            raise AssertionError(f"files not unlinked within {timeout} s: {sorted(left)}")
        await asyncio.sleep(0.005)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class ServerThread:
    """A ``SperseServer`` on a loop of its own thread; ``close()`` stops it and checks that its
    workers are gone."""

    def __init__(self, config: ServerConfig) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-server")
        self._thread.start()
        self.server = SperseServer(config)
        try:
            self.call(self.server.start())
        except BaseException:
            self._stop_loop()
            raise
        self.worker_pids: set[int] = set()

    @property
    def address(self) -> str:
        return self.server.address

    @property
    def name(self) -> str:
        return self.server.name

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = DEADLINE) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stats(self) -> ServerStats:
        async def snapshot() -> ServerStats:
            return self.server.stats()

        stats = self.call(snapshot())
        self.worker_pids.update(
            stats.worker_pids + stats.object_worker_pids + stats.spare_object_pids
        )
        return stats

    async def wait_stats(
        self, predicate: Callable[[ServerStats], bool], timeout: float = DEADLINE
    ) -> ServerStats:
        """Poll the server's stats (from a test's own loop) until ``predicate`` holds."""
        async with asyncio.timeout(timeout):
            while True:
                stats = await asyncio.to_thread(self.stats)
                if predicate(stats):
                    return stats
                await asyncio.sleep(0.02)

    def close(self) -> None:
        """Stop the server (idempotent) and check that its workers are gone."""
        if self.loop.is_closed():
            return
        self.stats()
        try:
            self.call(self.server.stop(0.5), timeout=30)
        finally:
            self._stop_loop()
        alive = [pid for pid in self.worker_pids if pid_alive(pid)]
        assert not alive, f"worker processes {alive} outlived their server"

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def call_work(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> CallTask:
    return CallTask(fn, args, kwargs)


def statement(
    source: str,
    inputs: Mapping[str, Any] | None = None,
    defs: tuple[str, ...] = (),
    *,
    expression: bool = False,
) -> StatementTask:
    return StatementTask(source, "<test cell>", 1, dict(inputs or {}), defs, expression)


class RawSession:
    """One ``Session`` stream, message by message. Use ``async with``."""

    def __init__(
        self,
        address: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        options: tuple[tuple[str, Any], ...] = (),
    ) -> None:
        self.address = address
        self._credentials = credentials
        self._options = list(
            {
                "grpc.max_send_message_length": MAX_MESSAGE,
                "grpc.max_receive_message_length": MAX_MESSAGE,
                **dict(options),
            }.items()
        )
        self.sender = BlobSender()
        self.receiver = BlobReceiver()
        self.events: list[pb.Event] = []
        self.batch_sizes: list[int] = []  # events per Events message
        self.replies: dict[int, pb.FetchReply | pb.StatsReply] = {}
        self.error: pb.Error | None = None
        self.welcome: pb.Welcome | None = None
        self.ended = False
        self._request_ids = itertools.count(1)
        self.channel: grpc.aio.Channel | None = None
        self.call: Any = None

    async def __aenter__(self) -> RawSession:
        if self._credentials is not None:
            self.channel = grpc.aio.secure_channel(
                self.address, self._credentials, options=self._options
            )
        else:
            self.channel = grpc.aio.insecure_channel(self.address, options=self._options)
        self.call = SperseStub(self.channel).Session()  # type: ignore[no-untyped-call]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.drop()

    async def drop(self) -> None:
        """Close the channel without Goodbye: the server sees a broken stream."""
        if self.channel is not None:
            await self.channel.close()
            self.channel = None

    # ---- sending -------------------------------------------------------------------------

    async def send(self, *messages: pb.ClientMessage) -> None:
        for message in messages:
            await self.call.write(message)

    async def hello(
        self,
        token: str = TOKEN,
        *,
        protocol: str = PROTOCOL,
        python_version: str | None = None,
        session_id: str = "",
        expect: str = "welcome",
        shm_probe: bool = False,
        nonce: bytes | None = None,
    ) -> pb.ServerMessage:
        """``shm_probe``: make a probe file, so that the server turns shared memory on (with
        ``nonce``, the probe names a file holding something else)."""
        hello = pb.Hello(
            token=token,
            protocol=protocol,
            client_version="test",
            python_version=platform.python_version() if python_version is None else python_version,
            session_id=session_id,
            client_name="raw-test-client",
        )
        probe = ""
        if shm_probe:
            probe, real = shm.make_probe()
            hello.shm_probe, hello.shm_nonce = probe, real if nonce is None else nonce
        try:
            await self.send(pb.ClientMessage(hello=hello))
            reply = await self.read()
        finally:
            shm.unlink([probe])
        assert reply is not None, "the server ended the stream instead of answering Hello"
        assert reply.WhichOneof("kind") == expect, reply
        if expect == "welcome":
            self.welcome = reply.welcome
        return reply

    def task(
        self,
        task_id: str,
        work: Any,
        *,
        retries: int = 0,
        inline_limit: int = 1 << 20,
        label: str = "",
        uploads: list[str] | None = None,
    ) -> tuple[pb.Task, list[pb.Blob]]:
        """``uploads``: big buffers go in shared memory files (named here), as a same-host
        client sends them."""
        data, buffers, refs = dumps_oob(work)
        blobs: list[pb.Blob] = []
        pickled = self.sender.pickled(data, [b.raw() for b in buffers], blobs)
        if uploads is not None:
            assert self.welcome is not None and self.welcome.shm, "no shared memory"
            unsent: set[int] = set()  # the blobs of buffers that go as files instead
            for field, buffer in zip(pickled.buffers, buffers, strict=True):
                raw = buffer.raw()
                if raw.nbytes >= shm.SHM_MIN:
                    name = shm.write(self.welcome.shm_prefix, raw)
                    uploads.append(name)
                    if field.WhichOneof("kind") == "blob_id":
                        unsent.add(field.blob_id)
                    field.Clear()
                    field.shm = name
            blobs = [b for b in blobs if b.blob_id not in unsent]
        task = pb.Task(
            task_id=task_id,
            work=pickled,
            refs=[r.object_id for r in refs],
            retries=retries,
            inline_limit=inline_limit,
            label=label,
        )
        return task, blobs

    async def submit(self, *tasks: tuple[pb.Task, list[pb.Blob]]) -> None:
        blobs = [pb.ClientMessage(blob=b) for _, task_blobs in tasks for b in task_blobs]
        submit = pb.ClientMessage(submit=pb.Submit(tasks=[t for t, _ in tasks]))
        await self.send(*blobs, submit)

    async def send_raw_task(self, task_id: str) -> None:
        """A Task with an id and nothing else (no work)."""
        await self.send(pb.ClientMessage(submit=pb.Submit(tasks=[pb.Task(task_id=task_id)])))

    async def cancel(self, *task_ids: str) -> None:
        await self.send(pb.ClientMessage(cancel=pb.Cancel(task_ids=task_ids)))

    async def release(self, *object_ids: str) -> None:
        await self.send(pb.ClientMessage(release=pb.Release(object_ids=object_ids)))

    async def goodbye(self) -> None:
        await self.send(pb.ClientMessage(goodbye=pb.Goodbye()))

    # ---- receiving -----------------------------------------------------------------------

    async def read(self, timeout: float = DEADLINE) -> pb.ServerMessage | None:
        """The next message that is not a blob; None at the end of the stream."""
        async with asyncio.timeout(timeout):
            while True:
                message: pb.ServerMessage = await self.call.read()
                if message is grpc.aio.EOF:
                    self.ended = True
                    return None
                kind = message.WhichOneof("kind")
                if kind == "blob":
                    self.receiver.add(message.blob)
                    continue
                if kind == "events":
                    self.events.extend(message.events.events)
                    self.batch_sizes.append(len(message.events.events))
                elif kind in ("fetch_reply", "stats"):
                    reply = getattr(message, kind)
                    self.replies[reply.request_id] = reply
                elif kind == "error":
                    self.error = message.error
                return message

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = DEADLINE) -> None:
        """Read until ``predicate()`` holds; fail at the end of the stream or the deadline."""
        async with asyncio.timeout(timeout):
            while not predicate():
                if await self.read(timeout) is None:
                    raise AssertionError(f"the stream ended; error={self.error}")

    async def read_to_end(self, timeout: float = DEADLINE) -> None:
        async with asyncio.timeout(timeout):
            while await self.read(timeout) is not None:
                pass

    def of(self, task_id: str, kind: str | None = None) -> list[pb.Event]:
        return [
            e
            for e in self.events
            if e.task_id == task_id and (kind is None or e.WhichOneof("kind") == kind)
        ]

    def terminal(self, task_id: str) -> pb.Event | None:
        ends = [e for e in self.of(task_id) if e.WhichOneof("kind") in ("done", "failed")]
        assert len(ends) <= 1, f"task {task_id} ended {len(ends)} times: {ends}"
        return ends[0] if ends else None

    async def wait_terminal(self, *task_ids: str, timeout: float = DEADLINE) -> list[pb.Event]:
        await self.wait_for(lambda: all(self.terminal(t) is not None for t in task_ids), timeout)
        return [e for e in (self.terminal(t) for t in task_ids) if e is not None]

    async def done(self, task_id: str, timeout: float = DEADLINE) -> pb.Done:
        (event,) = await self.wait_terminal(task_id, timeout=timeout)
        assert event.WhichOneof("kind") == "done", event.failed
        return event.done

    async def failed(self, task_id: str, timeout: float = DEADLINE) -> pb.Failure:
        (event,) = await self.wait_terminal(task_id, timeout=timeout)
        assert event.WhichOneof("kind") == "failed", event.done
        return event.failed

    def value(self, value: pb.Value) -> Any:
        assert value.WhichOneof("kind") == "inline", value
        data, buffers = self.receiver.pickled(value.inline)
        return loads_oob(data, buffers)

    def pickled(self, value: pb.Pickled) -> tuple[bytes, list[Any]]:
        """A received value's stream and buffers (shared memory files mapped)."""
        data = self.receiver.bytes(value.data)
        buffers: list[Any] = []
        for b in value.buffers:
            if b.WhichOneof("kind") == "shm":
                buffers.append(shm.map_copy(b.shm))
            else:
                buffers.append(bytearray(self.receiver.bytes(b)))
        return data, buffers

    async def fetch(self, object_id: str) -> tuple[pb.FetchReply, Any]:
        request_id = next(self._request_ids)
        await self.send(
            pb.ClientMessage(fetch=pb.Fetch(request_id=request_id, object_id=object_id))
        )
        await self.wait_for(lambda: request_id in self.replies)
        reply = self.replies.pop(request_id)
        assert isinstance(reply, pb.FetchReply)
        if reply.error:
            return reply, None
        data, buffers = self.pickled(reply.value)
        return reply, loads_oob(data, buffers)

    async def stats(self) -> pb.StatsReply:
        request_id = next(self._request_ids)
        await self.send(pb.ClientMessage(stats=pb.StatsRequest(request_id=request_id)))
        await self.wait_for(lambda: request_id in self.replies)
        reply = self.replies.pop(request_id)
        assert isinstance(reply, pb.StatsReply)
        return reply


async def expect_error(session: RawSession, code: str) -> pb.Error:
    """The next message is ``Error(code)`` and the stream ends after it."""
    message = await session.read()
    assert message is not None and message.WhichOneof("kind") == "error", message
    assert message.error.code == code, message.error
    with contextlib.suppress(grpc.aio.AioRpcError):
        assert await session.read() is None
    return message.error
