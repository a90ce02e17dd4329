"""The session of one client with one ``sperse server`` (all of it on the I/O thread, but
``send``): Hello and Welcome, the stream's receive loop, resuming a broken stream, and the
request/reply pairs (fetch, stats, objects, logs, callbacks).

A client on the server's host (the embedded server always; one on loopback usually) proves
it in ``Hello`` (a probe file in /dev/shm, see :mod:`sperse._wire`). Then the session moves
from gRPC to the server's same-host socket (``LocalStream``), where the I/O thread handles
each server message as it is read: no gRPC threads. A broken stream is resumed within
``reconnect_timeout`` (the same-host socket first, then gRPC); if it cannot be, every
unfinished task and request ends with ``ServerLost``. A refused token
(``AuthenticationError``) or a protocol error ends the session at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import time
from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio

from sperse._backends.sperse.embedded import EmbeddedServer
from sperse._backends.sperse.events import Decoder, TaskTable
from sperse._backends.sperse.transport import (
    LocalStream,
    Outbox,
    Outgoing,
    describe_grpc,
    error_from,
    local_streams,
    refused_at_once,
    translate,
)
from sperse._backends.sperse.uploads import received
from sperse._serialize import shm as _shm
from sperse._version import __version__
from sperse._wire import MAX_MESSAGE, PROTOCOL, BlobReceiver, Piece, pb
from sperse._wire.calls import session_call
from sperse._wire.errors import why_ended
from sperse.errors import (
    AuthenticationError,
    ProtocolError,
    ServerLost,
    ServerUnavailable,
    SperseError,
)

__all__ = ["Session"]

_GOODBYE_TIMEOUT = 1.0  # seconds for Goodbye to go out, as a session ends

log = logging.getLogger("sperse.client")


class Session:
    """One session with the server at ``address``; see the module docstring."""

    def __init__(
        self,
        address: str,
        *,
        loop: asyncio.AbstractEventLoop,
        tasks: TaskTable,
        decoder: Decoder,
        token: str,
        tls: bool,
        tls_ca: bytes | None,
        connect_timeout: float,
        reconnect_timeout: float,
        process: EmbeddedServer | None,
        client_name: str,
        python_version: str,
        shm: bool,
        compression: grpc.Compression | None = None,
    ) -> None:
        self.address = address
        self._loop = loop
        self._tasks = tasks
        self._decoder = decoder
        self._token = token
        self._tls = tls
        self._tls_ca = tls_ca
        self._connect_timeout = connect_timeout
        self._reconnect_timeout = reconnect_timeout
        self._process = process
        self._client_name = client_name
        self._python_version = python_version
        self._shm_wanted = shm
        self._compression = compression  # of what this client sends over gRPC (None: off)
        self.outbox = Outbox(loop)
        self._requests = itertools.count(1)
        self._replies: dict[int, asyncio.Future[Any]] = {}
        self.welcome: pb.Welcome | None = None
        self.session_id = ""
        self.shm_prefix = ""  # non-empty: this stream may name shared memory files
        # The server's same-host socket, once it offered one (an embedded server's: at once).
        self._local_address = process.local_address if process and shm and local_streams() else ""
        self._channel: grpc.aio.Channel | None = None
        self.stream: Any = None
        self.closed = False
        self._main: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.welcome.server_name if self.welcome is not None else self.address

    async def open(self) -> None:
        self.outbox.open()
        await self._connect(resume=False)
        self._main = asyncio.create_task(self._serve())

    def send(self, messages: Sequence[Outgoing], *, direct: bool = True) -> None:
        """Send messages to the server (any thread; see ``Outbox.send``)."""
        if not self.outbox.opened or self.closed:
            raise ServerLost(f"the connection to {self.address} is closed")
        self.outbox.send(messages, self.stream, direct=direct)

    # ---- connecting ------------------------------------------------------------------------

    async def _connect(self, *, resume: bool) -> None:
        """Open the session's stream (a new session, or ``resume`` this one): on the
        server's same-host socket when it offered one, else over gRPC."""
        if self._local_address:
            try:
                await self._connect_local(resume=resume)
                return
            except (OSError, TimeoutError) as exc:  # gone: gRPC says whether the server is
                log.info("same-host stream to %s failed (%s); using gRPC", self.address, exc)
                self._local_address = ""
        await self._connect_grpc(resume=resume)
        if self._local_address:
            try:  # the session moves to the same-host socket; the server ends the gRPC call
                await self._connect_local(resume=True)
            except (OSError, TimeoutError, SperseError) as exc:
                log.info("same-host stream to %s failed (%s); using gRPC", self.address, exc)
                self._local_address = ""
                return
            channel, self._channel = self._channel, None
            if channel is not None:
                await channel.close()

    async def _connect_grpc(self, *, resume: bool) -> None:
        options = [
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.max_receive_message_length", MAX_MESSAGE),
        ]
        if self._tls:
            creds = grpc.ssl_channel_credentials(root_certificates=self._tls_ca)
            channel = grpc.aio.secure_channel(
                self.address, creds, options=options, compression=self._compression
            )
        else:
            channel = grpc.aio.insecure_channel(
                self.address, options=options, compression=self._compression
            )
        self._channel = channel
        if not resume:
            await refused_at_once(self.address, self._connect_timeout)
        try:
            await asyncio.wait_for(channel.channel_ready(), self._connect_timeout)
        except TimeoutError:
            await channel.close()
            raise ServerUnavailable(
                f"no sperse server answered at {self.address} within {self._connect_timeout} s: "
                "is it running (sperse server --port PORT), and is the address right?"
            ) from None
        stream = session_call(channel)()
        try:
            await self._hello(stream, resume=resume)
        except grpc.aio.AioRpcError as exc:
            raise translate(await why_ended(stream, exc), self.address) from exc

    async def _connect_local(self, *, resume: bool) -> None:
        stream = await asyncio.wait_for(
            LocalStream.open(self._local_address), self._connect_timeout
        )
        try:
            await self._hello(stream, resume=resume)
        except BaseException:
            stream.close()
            raise

    async def _hello(self, stream: Any, *, resume: bool) -> None:
        """Hello on ``stream`` (with the same-host probe), Welcome back; the stream is the
        session's from then on."""
        hello = pb.Hello(
            token=self._token,
            protocol=PROTOCOL,
            client_version=__version__,
            python_version=self._python_version,
            session_id=self.session_id if resume else "",
            client_name=self._client_name,
        )
        probe = ""
        if self._shm_wanted and _shm.available():
            with contextlib.suppress(OSError):
                probe, nonce = _shm.make_probe()
                hello.shm_probe, hello.shm_nonce = probe, nonce
        try:
            await stream.write(pb.ClientMessage(hello=hello))
            reply = await asyncio.wait_for(stream.read(), self._connect_timeout)
        finally:
            if probe:
                _shm.unlink([probe])
        if reply is grpc.aio.EOF or reply is None:
            raise ServerLost(f"the server at {self.address} closed the session at once")
        kind = reply.WhichOneof("kind")
        if kind == "error":
            raise error_from(reply.error, self.address)
        if kind != "welcome":
            raise ProtocolError(f"the server at {self.address} answered {kind!r} to hello")
        welcome = reply.welcome
        if resume and not welcome.resumed:
            raise ServerLost(f"the server at {self.address} no longer has this session")
        self.welcome = welcome
        self.session_id = welcome.session_id
        shm_on = welcome.shm and bool(probe)
        self.shm_prefix = welcome.shm_prefix if shm_on else ""
        if shm_on and welcome.local_address and local_streams():
            self._local_address = welcome.local_address
        old, self.stream = self.stream, stream
        if isinstance(old, LocalStream) and old is not stream:
            old.close()

    # ---- running -----------------------------------------------------------------------------

    async def _serve(self) -> None:
        """Run the session; on a broken stream, resume it or end everything in ServerLost."""
        while not self.closed:
            receiver = BlobReceiver()
            sender = asyncio.create_task(self.outbox.send_loop(self.stream))
            try:
                await self._receive_loop(self.stream, receiver)
                error: BaseException | None = None
            except (grpc.aio.AioRpcError, OSError) as exc:
                error = exc
            except SperseError as exc:
                error = exc
            finally:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await sender
            if self.closed:
                return
            if isinstance(error, AuthenticationError | ProtocolError):
                self._fail_everything(error)
                return
            if not await self._resume():
                reason = "" if error is None else f" ({describe_grpc(error)})"
                self._fail_everything(
                    ServerLost(
                        f"lost the connection to server {self.name!r} at {self.address}{reason} "
                        f"and could not resume within {self._reconnect_timeout} s"
                    )
                )
                return

    async def _resume(self) -> bool:
        if self._process is not None and not self._process.alive():
            return False
        deadline = time.monotonic() + self._reconnect_timeout
        delay = 0.05
        while time.monotonic() < deadline and not self.closed:
            with contextlib.suppress(Exception):
                if self._channel is not None:
                    await self._channel.close()
            try:
                # Each attempt within what is left of the budget: a dying server must not
                # hold the client for a whole connect_timeout.
                budget = max(0.05, deadline - time.monotonic())
                await asyncio.wait_for(self._connect(resume=True), budget)
                log.info("resumed session %s with %s", self.session_id, self.address)
                self._ask_again()
                return True
            except (ServerUnavailable, ServerLost, grpc.aio.AioRpcError, OSError, TimeoutError):
                if self._process is not None and not self._process.alive():
                    return False
            except SperseError:
                return False
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay *= 2
        return False

    def _ask_again(self) -> None:
        """After a resume: an event written just before the break may be lost, so name every
        unfinished task again (with no work): the server re-sends the outcome of finished
        ones and ignores running ones."""
        ids = self._tasks.ids()
        if ids:
            self.send([(pb.Task(task_id=task_id), 64) for task_id in ids])

    async def _receive_loop(self, stream: Any, receiver: BlobReceiver) -> None:
        if isinstance(stream, LocalStream):  # messages are handled as they are read
            stream.handler = functools.partial(self._take, receiver)
        while True:
            message = await stream.read()
            if message is grpc.aio.EOF:
                return
            if not self._take(receiver, message):
                raise error_from(message.error, self.address)

    def _take(self, receiver: BlobReceiver, message: pb.ServerMessage | Piece) -> bool:
        """Handle one server message (on the I/O thread). False: it is an ``Error``."""
        if isinstance(message, Piece):
            receiver.add(message)
            return True
        kind = message.WhichOneof("kind")
        if kind == "blob":
            receiver.add(message.blob)
        elif kind == "events":
            for event in message.events.events:
                self._decoder.event(event, receiver)
        elif kind == "callback":
            self._decoder.callback(message.callback, receiver)
        elif kind in ("fetch_reply", "stats", "objects", "callback_reply", "logs"):
            reply = getattr(message, kind)
            future = self._replies.pop(reply.request_id, None)
            if future is not None and not future.done():
                if kind == "fetch_reply" and not reply.error:
                    try:  # files are mapped by the caller's thread, not this one
                        future.set_result(received(reply.value, receiver))
                    except KeyError as exc:
                        future.set_exception(
                            SperseError(f"cannot read the value fetched from {self.name}: {exc}")
                        )
                else:
                    future.set_result(reply)
        elif kind == "error":
            return False
        return True

    def _fail_everything(self, error: SperseError) -> None:
        """The session is over: every unfinished task and request ends with ``error``."""
        if isinstance(self.stream, LocalStream):
            self.stream.close()
        # With submit's check: a task is either failed here or refused.
        task_ids = self._tasks.lose(error)
        for future in self._replies.values():
            if not future.done():
                future.set_exception(error)
        self._replies.clear()
        self._decoder.lost(task_ids, error)

    async def shutdown(self) -> None:
        if self._main is not None:
            self._main.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._main
        # Each step bounded: the channel must be closed before the loop is (a call still
        # open on a closed loop makes gRPC's poller fail on every loop of the process).
        if self.stream is not None:
            with contextlib.suppress(Exception):  # the session is over: free it at once
                async with asyncio.timeout(_GOODBYE_TIMEOUT):
                    await self.stream.write(pb.ClientMessage(goodbye=pb.Goodbye()))
                    await self.stream.done_writing()
        if isinstance(self.stream, LocalStream):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_GOODBYE_TIMEOUT):
                    await self.stream.closed()
        if self._channel is not None:
            await self._channel.close()

    async def request(self, kind: str, **fields: Any) -> Any:
        if self._tasks.lost is not None:
            raise self._tasks.lost
        request_id = next(self._requests)
        future: asyncio.Future[Any] = self._loop.create_future()
        self._replies[request_id] = future
        if kind == "fetch":
            message = pb.ClientMessage(fetch=pb.Fetch(request_id=request_id, **fields))
        elif kind == "objects":
            message = pb.ClientMessage(objects=pb.ObjectsRequest(request_id=request_id, **fields))
        elif kind == "logs":
            message = pb.ClientMessage(logs=pb.LogsRequest(request_id=request_id, **fields))
        elif kind == "callback":
            call = fields["call"]
            call.request_id = request_id
            self.send([*fields["blobs"], pb.ClientMessage(callback=call)])
            return await future
        else:
            message = pb.ClientMessage(stats=pb.StatsRequest(request_id=request_id))
        self.send([message])
        reply = await future
        if kind == "fetch" and isinstance(reply, pb.FetchReply):
            raise SperseError(f"fetch of {fields.get('object_id')} failed: {reply.error}")
        return reply
