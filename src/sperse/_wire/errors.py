"""The one map of gRPC's errors: what a failed call's status code means to Sperse.

Four callers speak gRPC: a client to its server (``_backends.sperse.transport``), a client
to a coordinator (``_backends.membership``, ``_backends.multi``), a server to its coordinator
(``_server.join``) and a server to another server it pulls from (``_server.peers``). Each
classifies a failed call here, and only here, then words the message for its own peer: what
happened, the likely cause, what to do. So no module outside ``_wire`` compares
``grpc.StatusCode`` values (the services that *set* a status on their replies do not
translate anything).

The kinds, a closed set:

=================  ==================================  ======================================
kind               status codes                        what it means
=================  ==================================  ======================================
``UNREACHABLE``    ``UNAVAILABLE``,                    nothing answered in time: not running,
                   ``DEADLINE_EXCEEDED``               a wrong address, the network
``REFUSED_TOKEN``  ``UNAUTHENTICATED``                 the peer answered, and refused the token
``WRONG_SERVICE``  ``UNIMPLEMENTED``                   something answered that does not serve
                                                       the method: another kind of peer, or
                                                       another version
``TOO_LARGE``      ``RESOURCE_EXHAUSTED``              a message was over the peer's limit
``EXISTS``         ``ALREADY_EXISTS``                  what was to be created is there already
                                                       (a coordinator: the name is taken)
``OTHER``          every other code                    said as the code and its details
=================  ==================================  ======================================
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import grpc
import grpc.aio

__all__ = ["GrpcErrorKind", "GrpcFailure", "classify", "why_ended"]

_STATUS_TIMEOUT = 5.0  # seconds for the status of a call that a write found ended


class GrpcErrorKind(enum.Enum):
    """What went wrong with a gRPC call, as far as any caller needs to tell apart."""

    UNREACHABLE = "unreachable"
    REFUSED_TOKEN = "refused_token"
    WRONG_SERVICE = "wrong_service"
    TOO_LARGE = "too_large"
    EXISTS = "exists"
    OTHER = "other"


_KINDS: Mapping[grpc.StatusCode, GrpcErrorKind] = MappingProxyType(
    {
        grpc.StatusCode.UNAVAILABLE: GrpcErrorKind.UNREACHABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED: GrpcErrorKind.UNREACHABLE,
        grpc.StatusCode.UNAUTHENTICATED: GrpcErrorKind.REFUSED_TOKEN,
        grpc.StatusCode.UNIMPLEMENTED: GrpcErrorKind.WRONG_SERVICE,
        grpc.StatusCode.RESOURCE_EXHAUSTED: GrpcErrorKind.TOO_LARGE,
        grpc.StatusCode.ALREADY_EXISTS: GrpcErrorKind.EXISTS,
    }
)


@dataclass(frozen=True, slots=True)
class GrpcFailure:
    """A failed gRPC call, classified. ``code`` is the status code's name (``"UNAVAILABLE"``),
    for messages; ``details`` what the peer (or gRPC) said, ``""`` when nothing."""

    kind: GrpcErrorKind
    code: str
    details: str

    def __str__(self) -> str:
        """``CODE: details``, the way every message quotes a gRPC error."""
        return f"{self.code}: {self.details}"


def classify(exc: grpc.RpcError) -> GrpcFailure:
    """The kind of a failed call's error: a ``grpc.aio.AioRpcError``, or the ``grpc.RpcError``
    of a sync call (which is also a ``grpc.Call``: it has ``code()`` and ``details()``)."""
    code = exc.code()
    return GrpcFailure(_KINDS.get(code, GrpcErrorKind.OTHER), code.name, exc.details() or "")


async def why_ended(call: Any, error: grpc.aio.AioRpcError) -> grpc.aio.AioRpcError:
    """The status a stream call ended with. A write to a call the peer has already ended
    fails as INTERNAL ("Failed execute_batch"); the call's own status says why it ended
    (UNIMPLEMENTED: not the service asked for, UNAUTHENTICATED...)."""
    if error.code() is not grpc.StatusCode.INTERNAL:
        return error
    try:
        code = await asyncio.wait_for(call.code(), _STATUS_TIMEOUT)
        details = await call.details()
    except Exception:  # nothing better to say than the write's error
        return error
    if code in (grpc.StatusCode.OK, grpc.StatusCode.INTERNAL):
        return error
    empty = grpc.aio.Metadata()
    return grpc.aio.AioRpcError(code, empty, empty, details)
