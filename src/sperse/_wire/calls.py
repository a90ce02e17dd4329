"""The ``Sperse`` service's calls with the serializers they use (the generated stub and
``add_SperseServicer_to_server`` serialize every message with protobuf).

``Session``'s messages go through :func:`sperse._wire.serialize` both ways, so that a
``Blob`` piece, written as bytes by :func:`sperse._wire.piece_message`, is sent as it is; and
the client reads a piece from the server as a ``Piece`` (:func:`read_server_message`), its
data a view of the bytes received. The rest is as generated.
"""

from __future__ import annotations

from typing import Any

import grpc

from sperse._wire import Piece, pb, read_piece, serialize

__all__ = ["SERVICE", "add_service", "read_server_message", "session_call"]

SERVICE = "sperse.v1.Sperse"


def session_call(channel: grpc.aio.Channel) -> Any:
    """The ``Session`` stream's multi-callable on ``channel``: call it to open a stream."""
    return channel.stream_stream(
        f"/{SERVICE}/Session",
        request_serializer=serialize,
        response_deserializer=read_server_message,
        _registered_method=True,
    )


def read_server_message(raw: bytes) -> pb.ServerMessage | Piece:
    """A ``ServerMessage`` from its wire bytes; a ``Blob`` piece as a ``Piece``, whose data
    is not copied (:func:`sperse._wire.read_piece`)."""
    return read_piece(pb.ServerMessage, raw) or pb.ServerMessage.FromString(raw)


def add_service(servicer: Any, server: grpc.aio.Server) -> None:
    """Serve ``servicer``'s ``Session`` and ``Pull`` on ``server``."""
    handlers = {
        "Session": grpc.stream_stream_rpc_method_handler(
            servicer.Session,
            request_deserializer=pb.ClientMessage.FromString,
            response_serializer=serialize,
        ),
        "Pull": grpc.unary_stream_rpc_method_handler(
            servicer.Pull,
            request_deserializer=pb.PullRequest.FromString,
            response_serializer=pb.PullChunk.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)
