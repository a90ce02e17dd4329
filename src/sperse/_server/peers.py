"""``PeerClient``: how a server pulls the objects other servers of its cluster hold.

A task lists in ``Task.peer_refs`` the refs that another server holds; this server pulls each
from its holder with ``Sperse.Pull`` (the value moves server to server, never through the
client) and keeps the copy as a replica (see :mod:`sperse._server.core`).

Invariants:

- One gRPC channel per peer address, opened on first use on the server's loop, kept for
  later pulls, closed when the server stops.
- A request proves that this server holds the cluster's token (the servers of one cluster
  share one) without carrying it: a proof bound to the address dialled
  (:mod:`sperse._server.pull_auth`), since that address comes from a client. A server
  with TLS reaches its peers over TLS, trusting its own ``--tls-cert`` as the root (one
  cluster, one certificate); one without TLS reaches them without.
- Nothing pulled is unpickled here. The bytes are kept as they arrive: a buffer of at least
  ``shm.SHM_MIN`` bytes goes into a new shared memory file (when the server uses them), the
  rest into memory. A pull that fails or is cancelled leaves no file behind.
- The sizes the holder announces are checked against ``--max-value-size`` before a byte is
  kept; a holder that sends more or fewer bytes than it announced fails the pull.
- The errors of grpc (classified by :mod:`sperse._wire.errors`) become ``PullFailed`` here,
  and only here: a reason and what to do.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio

from sperse._serialize import shm
from sperse._server.config import ServerConfig
from sperse._server.core import PeerRef, Pulled, PullFailed
from sperse._server.envelope import Buffer, PickledBytes, ShmBuffer
from sperse._server.pull_auth import pull_proof
from sperse._wire import MAX_MESSAGE, pb
from sperse._wire.calls import pull_call
from sperse._wire.errors import GrpcErrorKind, classify

__all__ = ["PULL_CHUNK", "PeerClient"]

PULL_CHUNK = 1 << 20  # bytes of one PullChunk's data, at most
FIRST_ANSWER_TIMEOUT = 10.0  # seconds for the holder's header (an address that drops packets)
STALL_TIMEOUT = 60.0  # seconds between two chunks


class _Part:
    """One byte string of a pulled object (its pickle stream or a buffer), as it arrives:
    in memory, or written into a new shared memory file (one made ahead of its size, when
    one fits: ``shm.Standby``)."""

    __slots__ = ("capacity", "chunks", "fd", "name", "prefix", "received", "size")

    def __init__(self, size: int, shm_prefix: str) -> None:
        self.size = size
        self.received = 0
        self.chunks: list[bytes] = []
        self.name = ""
        self.prefix = shm_prefix
        self.capacity = 0
        self.fd = -1
        if shm_prefix and size >= shm.SHM_MIN:
            self.name, self.fd, self.capacity = shm.open_to_write(shm_prefix, size)

    @property
    def full(self) -> bool:
        return self.received == self.size

    def add(self, data: memoryview) -> None:
        if self.fd >= 0:
            written = 0
            while written < len(data):
                written += os.write(self.fd, data[written:])
        else:
            self.chunks.append(data.tobytes())
        self.received += len(data)

    def value(self) -> Buffer:
        if self.fd >= 0:
            shm.close_written(self.prefix, self.fd, self.capacity, self.size)
            self.fd = -1
            return ShmBuffer(self.name, self.size)
        data = b"".join(self.chunks)
        self.chunks = []
        return data

    def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.name:
            shm.unlink([self.name])
        self.chunks = []


class _Receiving:
    """The parts of one pulled object, filled in order."""

    def __init__(self, sizes: Sequence[int], shm_prefix: str) -> None:
        self.parts: list[_Part] = []
        try:
            for size in sizes:
                self.parts.append(_Part(size, shm_prefix))
        except OSError:
            self.discard()
            raise
        self._index = 0
        self._skip_full()

    @property
    def complete(self) -> bool:
        return self._index == len(self.parts)

    def add(self, data: bytes | memoryview) -> None:
        """Raises ``ValueError`` for bytes beyond the announced sizes."""
        view = memoryview(data)
        while view:
            if self.complete:
                raise ValueError(f"{len(view)} bytes more than it announced")
            part = self.parts[self._index]
            n = min(len(view), part.size - part.received)
            part.add(view[:n])
            view = view[n:]
            self._skip_full()

    def _skip_full(self) -> None:
        while self._index < len(self.parts) and self.parts[self._index].full:
            self._index += 1

    def value(self) -> PickledBytes:
        data = self.parts[0].value()
        assert isinstance(data, bytes)  # the pickle stream is never a file
        return PickledBytes(data, tuple(part.value() for part in self.parts[1:]))

    def discard(self) -> None:
        for part in self.parts:
            part.discard()


def _failure(exc: grpc.aio.AioRpcError, ref: PeerRef) -> PullFailed:
    """A grpc error of a pull, as its reason and what to do."""
    failure = classify(exc)
    details = failure.details or failure.code
    holder = f"server {ref.server!r}"
    if failure.kind is GrpcErrorKind.REFUSED_TOKEN:
        return PullFailed(
            f"{holder} refused this server's pull ({details})",
            "servers of one cluster must share a token: start every server with the same "
            "--token (or --token-file), and reach each at an address it knows as its own",
        )
    if failure.kind is GrpcErrorKind.UNREACHABLE:
        return PullFailed(
            f"{holder} cannot be reached ({details})",
            f"check that {holder} is running and that this server can reach {ref.address}; "
            "or compute the value again",
        )
    if failure.kind is GrpcErrorKind.WRONG_SERVICE:
        return PullFailed(
            f"{holder} does not serve pulls ({details})",
            "install the same sperse version on every server of the cluster",
        )
    return PullFailed(
        f"{holder} answered {failure.code} ({details})",
        f"look at the log of {holder}; or compute the value again",
    )


class PeerClient:
    """The other servers of the cluster, as this one pulls objects from them (a
    :class:`sperse._server.core.Peers`). Use on the server's event loop only."""

    def __init__(self, config: ServerConfig, token: str, name: str) -> None:
        self._config = config
        self._token = token
        self._name = name
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._root_certificates: bytes | None = None
        self._closed = False

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is not None:
            return channel
        options = [
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.max_receive_message_length", MAX_MESSAGE),
        ]
        if self._config.tls:
            credentials = grpc.ssl_channel_credentials(root_certificates=self._certificate())
            channel = grpc.aio.secure_channel(address, credentials, options=options)
        else:
            channel = grpc.aio.insecure_channel(address, options=options)
        self._channels[address] = channel
        return channel

    def _certificate(self) -> bytes:
        if self._root_certificates is None:
            path = self._config.tls_cert or ""
            try:
                with open(path, "rb") as file:
                    self._root_certificates = file.read()
            except OSError as exc:
                raise PullFailed(
                    f"this server cannot read its own TLS certificate {path!r} "
                    f"({exc.strerror}), which it trusts its peers with",
                    "make the file readable again (or restart the server)",
                ) from exc
        return self._root_certificates

    async def pull(self, ref: PeerRef, shm_prefix: str) -> Pulled:
        if self._closed:
            raise PullFailed("this server is stopping", "submit the task again elsewhere")
        if not ref.address:
            raise PullFailed(
                "the client gave no address for it", "connect the client to the whole cluster"
            )
        proof = pull_proof(self._token, ref.address, ref.object_id, self._name)
        request = pb.PullRequest(
            object_id=ref.object_id, server=self._name, holder=ref.address, proof=proof
        )
        call = pull_call(self._channel(ref.address))(request)
        receiving: _Receiving | None = None
        try:
            header = await self._header(call, ref)
            receiving = self._receiving(header, ref, shm_prefix)
            while True:
                chunk = await self._read(call, ref, STALL_TIMEOUT)
                if chunk is None:
                    break
                if not isinstance(chunk, memoryview):  # (data comes as a view of its bytes)
                    if chunk.WhichOneof("kind") == "error":
                        raise PullFailed(chunk.error, "compute the value again")
                    chunk = memoryview(chunk.data)
                try:
                    receiving.add(chunk)
                except ValueError as exc:
                    raise PullFailed(
                        f"server {ref.server!r} sent {exc}", "install the same sperse version"
                    ) from None
                except OSError as exc:
                    raise PullFailed(
                        f"it cannot be written into shared memory here ({exc.strerror})",
                        f"free memory on this server ({shm.SHM_DIR}), or run the task on "
                        f"server {ref.server!r}, where the value is",
                    ) from None
            if not receiving.complete:
                raise PullFailed(
                    f"server {ref.server!r} ended the pull before all the bytes it announced",
                    "look at that server's log; or compute the value again",
                )
            value = receiving.value()
        except grpc.aio.AioRpcError as exc:
            if receiving is not None:
                receiving.discard()
            raise _failure(exc, ref) from None
        except BaseException:
            call.cancel()
            if receiving is not None:
                receiving.discard()
            raise
        return Pulled(value, header.type_name, header.repr)

    async def _read(
        self, call: Any, ref: PeerRef, timeout: float
    ) -> pb.PullChunk | memoryview | None:
        """The next chunk, or None at the end."""
        try:
            async with asyncio.timeout(timeout):
                chunk = await call.read()
        except TimeoutError:
            raise PullFailed(
                f"server {ref.server!r} at {ref.address} sent nothing for {timeout:g} s",
                "check that it is running and reachable from this server",
            ) from None
        if chunk is grpc.aio.EOF:
            return None
        assert isinstance(chunk, pb.PullChunk | memoryview)
        return chunk

    async def _header(self, call: Any, ref: PeerRef) -> pb.PullHeader:
        chunk = await self._read(call, ref, FIRST_ANSWER_TIMEOUT)
        if isinstance(chunk, pb.PullChunk):
            kind = chunk.WhichOneof("kind")
            if kind == "error":
                raise PullFailed(
                    chunk.error,
                    f"the value is gone from server {ref.server!r}: compute it again",
                )
            if kind == "header":
                return chunk.header
        else:
            kind = "data" if chunk is not None else None
        raise PullFailed(
            f"server {ref.server!r} answered without a header ({kind or 'nothing'})",
            "install the same sperse version on every server of the cluster",
        )

    def _receiving(self, header: pb.PullHeader, ref: PeerRef, shm_prefix: str) -> _Receiving:
        sizes = [header.data_size, *header.buffer_sizes]
        total = sum(sizes)
        limit = self._config.max_value_size
        if total > limit:
            raise PullFailed(
                f"it is {total} bytes, more than this server accepts (its --max-value-size, "
                f"{limit} bytes)",
                f"run the task on server {ref.server!r}, where the value is (or raise "
                "--max-value-size)",
            )
        if header.data_size == 0:
            raise PullFailed(
                f"server {ref.server!r} announced an empty pickle",
                "install the same sperse version on every server of the cluster",
            )
        try:
            return _Receiving(sizes, shm_prefix)
        except OSError as exc:
            raise PullFailed(
                f"it cannot be written into shared memory here ({exc.strerror})",
                f"free memory on this server ({shm.SHM_DIR}), or run the task on server "
                f"{ref.server!r}, where the value is",
            ) from None

    async def close(self) -> None:
        self._closed = True
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()
