"""The ``Sperse`` servicer: ``Session`` streams from clients, ``Pull`` from other servers.

Protocol rules are in :mod:`sperse._wire`; the parts of a stream are
:mod:`~sperse._server.handshake` (``Hello`` checked, ``Welcome``),
:mod:`~sperse._server.stream` (the reader and writer of one call),
:mod:`~sperse._server.stream_in` (client messages into calls on the core),
:mod:`~sperse._server.stream_out` (replies and events into server messages) and
:mod:`~sperse._server.blobs`. What this module adds:

- Before ``Hello`` checks out, nothing but that first message is read: no blob is kept, no
  task looked at. No ``Hello`` within ``hello_timeout``: ``Error("auth")`` and the stream
  ends; so does a ``Hello`` that :func:`~sperse._server.handshake.check_hello` refuses.
- A stream that breaks leaves its session for the grace period (a resume may come); one
  that fails for a bug of ours is logged as an error.
- ``ObjectsRequest`` is answered with an ``ObjectsReply`` listing this server's live remote
  objects (of every session), or the one of the name asked for. A ``Task`` with ``object``
  set creates, calls or closes a remote object (see :mod:`sperse._server.core`); a
  ``Release`` naming a remote object its session created destroys it.
- ``Pull`` (server to server): its proof first (:mod:`~sperse._server.pull_auth`: made
  with the token, for an address of this server; else ``UNAUTHENTICATED``, nothing else is
  read), then the object of any session of this server, as a ``PullHeader`` and chunks of
  at most ``PULL_CHUNK`` bytes, or one ``PullChunk(error)`` when it is unknown. The object
  is pinned while it is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Generator
from typing import Any

import grpc
import grpc.aio

from sperse._serialize import shm
from sperse._server import core
from sperse._server.blobs import OpenFile
from sperse._server.config import ServerConfig
from sperse._server.envelope import Buffer, PickledBytes, ShmBuffer
from sperse._server.handshake import check_hello, welcome
from sperse._server.logs import log_event
from sperse._server.peers import PULL_CHUNK, PeerClient
from sperse._server.pull_auth import OwnAddresses, pull_proof
from sperse._server.stream import SUBMIT_CHUNK, Stream
from sperse._server.stream_out import BATCH_BYTES, BATCH_EVENTS
from sperse._wire import pb, pull_data_message

__all__ = ["BATCH_BYTES", "BATCH_EVENTS", "SUBMIT_CHUNK", "SessionService"]


def _is_broken_call(exc: BaseException) -> bool:
    """Whether ``exc`` (or all of a group) says the call is over, rather than a bug."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_broken_call(e) for e in exc.exceptions)
    return isinstance(exc, asyncio.InvalidStateError | ConnectionError) or type(
        exc
    ).__module__.startswith("grpc")


def _buffer_size(buffer: Buffer) -> int:
    return buffer.size if isinstance(buffer, ShmBuffer) else len(buffer)


def _pull_pieces(value: PickledBytes) -> Generator[bytes | memoryview, None, None]:
    """The pickle stream, then each buffer, in pieces of at most ``PULL_CHUNK`` bytes; a
    shared memory file is read a piece at a time (``pread``: a file that shrank is an
    ``OSError``, never a crash)."""
    for part in (value.data, *value.buffers):
        if isinstance(part, bytes):
            view = memoryview(part)
            for start in range(0, len(part), PULL_CHUNK):
                yield view[start : start + PULL_CHUNK]
            continue
        opened = OpenFile.open(part)
        try:
            for start in range(0, part.size, PULL_CHUNK):
                yield opened.read(start, min(PULL_CHUNK, part.size - start))
        finally:
            opened.close()


class SessionService:
    """The servicer of ``Sperse``: one :class:`~sperse._server.stream.Stream` per authenticated call."""

    def __init__(
        self, config: ServerConfig, token: str, server_core: core.ServerCore, port: int
    ) -> None:
        self.config = config
        self.core = server_core
        self._token = token.encode()
        self._secret = token
        self.own_addresses = OwnAddresses(config.host, port, config.advertise)  # listened on
        self.stopping = False
        self.local_address = ""  # of the same-host listener, offered with shared memory
        self._streams: set[Stream] = set()
        self.flushes: list[Stream] = []  # same-host streams with events to write
        server_core.after_pool_events = self.flush
        # Closed by the core when it closes (the server stops).
        server_core.peers = PeerClient(config, token, server_core.name)

    def flush(self) -> None:
        """Write the events queued for same-host streams: after a batch of events from the
        workers (at once), or on the loop's next turn (any other event)."""
        streams, self.flushes = self.flushes, []
        for stream in streams:
            stream.flush_now()

    def stop(self) -> None:
        """Streams send what is queued and end."""
        self.stopping = True
        for stream in list(self._streams):
            stream.wake()

    async def Session(self, request_iterator: Any, context: Any) -> None:
        peer = str(context.peer())
        try:
            async with asyncio.timeout(self.config.hello_timeout):
                first = await context.read()
        except TimeoutError:
            await self._refuse(
                context,
                peer,
                "auth",
                f"no Hello within {self.config.hello_timeout:g}s: send Hello with the token first",
            )
            return
        if first is grpc.aio.EOF:
            return
        code, message = check_hello(first, self._token, self.core.name)
        if code:
            await self._refuse(context, peer, code, message)
            return
        hello = first.hello
        session, resumed = self.core.open_session(hello.session_id, hello.client_name, peer)
        shm_on = (
            self.config.shm
            and bool(hello.shm_probe)
            and shm.check_probe(hello.shm_probe, hello.shm_nonce)
        )
        stream = Stream(self, session, context, peer, shm_on)
        self._streams.add(stream)
        self.core.attach(session, stream)
        try:
            await stream.run(
                welcome(self.config, self.core.name, session, resumed, shm_on, self.local_address)
            )
        except Exception as exc:  # the session lives on, for a resume
            broken = _is_broken_call(exc)  # else a bug of ours: say so loudly
            log_event(
                logging.DEBUG if broken else logging.ERROR,
                "stream_broken" if broken else "stream_error",
                exc_info=not broken,
                session=session.session_id,
                peer=peer,
                error=f"{type(exc).__name__}: {exc}",
            )
        finally:
            self._streams.discard(stream)
            self.core.detach(session, stream)

    async def Pull(
        self, request: pb.PullRequest, context: Any
    ) -> AsyncIterator[pb.PullChunk | bytes]:
        """Another server of the cluster pulls an object of any session of this one, for a
        task of its own. The proof is checked first; the object is pinned while it is sent,
        so that a release meanwhile waits for the end."""
        peer = str(context.peer())
        name = self.core.name
        refusal = await self._refusal(request)
        if refusal:
            log_event(
                logging.WARNING,
                "auth_failed",
                peer=peer,
                code="pull",
                server=request.server,
                holder=request.holder,
            )
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"server {name!r} refused the pull of server {request.server or peer!r}: "
                + refusal,
            )
            return
        held = self.core.find(request.object_id)
        if held is None:
            yield pb.PullChunk(
                error=f"server {name!r} holds no object {request.object_id!r}: it was "
                "released, or the session that held it ended"
            )
            return
        value = held.value
        self.core.pin(held)
        try:
            yield pb.PullChunk(
                header=pb.PullHeader(
                    type_name=held.type_name,
                    repr=held.repr,
                    data_size=len(value.data),
                    buffer_sizes=[_buffer_size(b) for b in value.buffers],
                )
            )
            with contextlib.closing(_pull_pieces(value)) as pieces:
                for piece in pieces:
                    yield pull_data_message(piece)
        except OSError as exc:  # a file of the object cannot be read
            yield pb.PullChunk(error=f"server {name!r} cannot read the object: {exc}")
            return
        finally:
            self.core.unpin(held)
        self.core.objects_served += 1
        self.core.bytes_served += value.size
        log_event(
            logging.INFO,
            "object_served",
            object=request.object_id,
            to=request.server or peer,
            bytes=value.size,
        )

    async def _refusal(self, request: pb.PullRequest) -> str:
        """Why a pull is refused ('' when it is not): see :mod:`sperse._server.pull_auth`."""
        proof = pull_proof(self._secret, request.holder, request.object_id, request.server)
        if not hmac.compare_digest(request.proof, proof):
            return "servers of one cluster must share a token"
        if not await self.own_addresses.include(request.holder):
            return (
                f"it was sent to {request.holder!r}, which is not an address of this server; "
                "give clients the address the server was registered or reached with"
            )
        return ""

    async def _refuse(self, context: Any, peer: str, code: str, message: str) -> None:
        log_event(
            logging.WARNING,
            "auth_failed" if code == "auth" else "hello_refused",
            peer=peer,
            code=code,
            reason=message,
        )
        with contextlib.suppress(Exception):  # the peer may be gone already
            await context.write(pb.ServerMessage(error=pb.Error(code=code, message=message)))
