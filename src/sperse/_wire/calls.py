"""The ``Sperse`` service's calls with the serializers they use (the generated stub and
``add_SperseServicer_to_server`` serialize every message with protobuf).

``Session``'s messages go through :func:`sperse._wire.serialize` both ways, so that a
``Blob`` piece, written as bytes by :func:`sperse._wire.piece_message`, is sent as it is; and
each side reads a piece as a ``Piece`` (:func:`sperse._wire.read_piece`), its data a view of
the bytes received. ``Pull``'s chunks of data go likewise. The rest is as generated.
"""

from __future__ import annotations

from typing import Any

import grpc

from sperse._wire import (
    pb,
    read_client_message,
    read_pull_chunk,
    read_server_message,
    serialize,
)

__all__ = ["SERVICE", "add_service", "pull_call", "session_call"]

SERVICE = "sperse.v1.Sperse"


def session_call(channel: grpc.aio.Channel) -> Any:
    """The ``Session`` stream's multi-callable on ``channel``: call it to open a stream."""
    return channel.stream_stream(
        f"/{SERVICE}/Session",
        request_serializer=serialize,
        response_deserializer=read_server_message,
        _registered_method=True,
    )


def pull_call(channel: grpc.aio.Channel) -> Any:
    """The ``Pull`` call's multi-callable on ``channel``; a chunk of data is read as a view of
    the bytes received (:func:`sperse._wire.read_pull_chunk`)."""
    return channel.unary_stream(
        f"/{SERVICE}/Pull",
        request_serializer=pb.PullRequest.SerializeToString,
        response_deserializer=read_pull_chunk,
        _registered_method=True,
    )


def add_service(servicer: Any, server: grpc.aio.Server) -> None:
    """Serve ``servicer``'s ``Session`` and ``Pull`` on ``server``."""
    handlers = {
        "Session": grpc.stream_stream_rpc_method_handler(
            servicer.Session,
            request_deserializer=read_client_message,
            response_serializer=serialize,
        ),
        "Pull": grpc.unary_stream_rpc_method_handler(
            servicer.Pull,
            request_deserializer=pb.PullRequest.FromString,
            response_serializer=serialize,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)
