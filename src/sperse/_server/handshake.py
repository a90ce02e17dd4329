"""The first message of a ``Session`` stream: ``Hello`` checked, ``Welcome`` built.

Invariants:

- Nothing but the first message is looked at before it checks out. A first message that is
  not ``Hello``, or a missing or wrong token (compared with ``hmac.compare_digest``):
  ``Error("auth")``. Then the protocol and the Python major.minor must match, else
  ``Error("version")``: code and values are pickled, which needs the same major.minor.
  (After the token and before those, its strings must keep their bounds,
  :func:`~sperse._server.bounds.hello_violation`, else ``Error("protocol")``.)
- ``Welcome`` offers shared memory (and the same-host listener's address) only to a client
  whose ``Hello`` passed the same-host probe.
"""

from __future__ import annotations

import hmac
import platform

from sperse._server import core
from sperse._server.bounds import hello_violation
from sperse._server.config import ServerConfig
from sperse._version import __version__
from sperse._wire import PROTOCOL, Piece, pb

__all__ = ["check_hello", "welcome"]


def _version() -> str:
    return __version__


def _major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def check_hello(
    message: pb.ClientMessage | Piece, token: bytes, server_name: str
) -> tuple[str, str]:
    """("", "") when the Hello is good, else the error code and message."""
    kind = "blob" if isinstance(message, Piece) else message.WhichOneof("kind")
    if kind != "hello":
        return "auth", (
            f"the first message must be Hello with the server's token, not {kind or 'empty'}"
        )
    assert isinstance(message, pb.ClientMessage)
    hello = message.hello
    if not hello.token:
        return "auth", (
            "no token given: the server's token was printed when it started (or is in the "
            "file given to --token-file); pass it when connecting"
        )
    if not hmac.compare_digest(hello.token.encode(), token):
        return "auth", (
            "wrong token: use the token this server was started with (printed at its start, "
            "or in its --token-file)"
        )
    too_long = hello_violation(hello)  # before any of them is repeated in a message
    if too_long:
        return "protocol", f"Hello refused: {too_long}"
    name = server_name
    if hello.protocol != PROTOCOL:
        return "version", (
            f"the client speaks protocol {hello.protocol or '(none)'!r} and server {name!r} "
            f"speaks {PROTOCOL!r} (sperse {_version()}): install the same sperse version on "
            "both sides"
        )
    server_python = platform.python_version()
    if _major_minor(hello.python_version) != _major_minor(server_python):
        return "version", (
            f"the client runs Python {hello.python_version or '(unknown)'} and server "
            f"{name!r} runs Python {server_python}: code and values are pickled, which "
            f"needs the same major.minor version; run the server with Python "
            f"{_major_minor(hello.python_version) or 'of the client'} (or the client with "
            f"Python {_major_minor(server_python)})"
        )
    return "", ""


def welcome(
    config: ServerConfig,
    server_name: str,
    session: core.Session,
    resumed: bool,
    shm_on: bool,
    local_address: str,
) -> pb.ServerMessage:
    """The ``Welcome`` of an accepted stream."""
    return pb.ServerMessage(
        welcome=pb.Welcome(
            server_name=server_name,
            server_version=_version(),
            python_version=platform.python_version(),
            tags=sorted(config.tags),
            resources=dict(config.resources),
            workers=config.worker_count,
            session_id=session.session_id,
            resumed=resumed,
            shm=shm_on,
            shm_prefix=session.shm_prefix if shm_on else "",
            local_address=local_address if shm_on else "",
        )
    )
