"""Every error Sperse raises on purpose.

The names say who caused the failure: the user's input (``StatementError``,
``CycleError``), the user's code (``CellError``, ``RemoteError``), or the world
outside (``WorkerDied``)::

    SperseError
    ├── StatementError      a statement cannot be tracked (``from m import *``)
    ├── UsageError          a ``%`` command of the prompt was used wrongly
    ├── CycleError          a new definition would make names depend on themselves
    ├── CellError           a local cell raised; ``__cause__`` is the exception
    ├── RemoteError         remote code raised; carries the remote type and traceback
    ├── UpstreamError       a name could not be computed because an input failed
    ├── NotReadyError       a name or Pending is still pending
    ├── TaskCancelled       the work was cancelled before it finished
    ├── SerializationError  a value could not be pickled or unpickled
    ├── NoMatchingServer    no server meets a task's constraint (tags, pin, resources)
    ├── WorkerDied          the process running the work died
    ├── ServerLost          the connection to a server broke and could not be resumed
    ├── ServerUnavailable   no server answered at the address given
    ├── AuthenticationError the server refused the token
    └── ProtocolError       client and server do not speak the same protocol or Python

Messages say what happened, the likely cause, and what to do.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "CellError",
    "ClientGone",
    "CycleError",
    "NoMatchingServer",
    "NotReadyError",
    "ObjectLost",
    "ProtocolError",
    "RemoteError",
    "SerializationError",
    "ServerLost",
    "ServerUnavailable",
    "SperseError",
    "StatementError",
    "TaskCancelled",
    "UnknownObject",
    "UpstreamError",
    "UsageError",
    "WorkerDied",
]


class SperseError(Exception):
    """The root of every error Sperse raises on purpose."""


class StatementError(SperseError):
    """A statement that the workspace cannot track, such as ``from m import *``."""


class UsageError(SperseError):
    """A ``%`` command was used wrongly: unknown, or with wrong arguments."""


class CycleError(SperseError):
    """Entering a cell would make a name depend on itself through other cells."""


class CellError(SperseError):
    """A local cell raised; the original exception is ``__cause__``."""

    def __init__(self, message: str, *, cell_id: int | None = None, source: str = "") -> None:
        super().__init__(message)
        self.cell_id = cell_id
        self.source = source


class RemoteError(SperseError):
    """Remote code raised. The exception itself stays remote; this carries it as data.

    ``type_name`` is the qualified name of the remote exception's type and
    ``remote_traceback`` its formatted traceback as the remote side printed it.
    """

    def __init__(
        self,
        message: str,
        *,
        type_name: str = "",
        remote_traceback: str = "",
        where: str = "",
    ) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.remote_traceback = remote_traceback
        self.where = where

    def __str__(self) -> str:
        text = super().__str__()
        if self.remote_traceback:
            origin = f" on {self.where}" if self.where else ""
            text += f"\n\nThis happened remotely{origin}:\n{self.remote_traceback.rstrip()}"
        return text


class UpstreamError(SperseError):
    """A name has no value because a cell it depends on failed."""

    def __init__(self, message: str, *, upstream: str = "") -> None:
        super().__init__(message)
        self.upstream = upstream


class NotReadyError(SperseError):
    """A name or Pending was read before its value arrived."""


class TaskCancelled(SperseError):
    """The work was cancelled (by the user, or because its inputs changed)."""


class SerializationError(SperseError):
    """A value could not be pickled to send, or unpickled on arrival."""


class NoMatchingServer(SperseError):
    """No server can run the task: none has the tags, name or resources it asks for."""


class WorkerDied(SperseError):
    """The worker process running the task died (killed, crashed, out of memory)."""


class ObjectLost(SperseError):
    """A remote object is gone: closed, released, or its worker process died (and it was not
    created with ``restart=True``, or it was rebuilt and lost its state)."""


class UnknownObject(SperseError, LookupError):
    """No remote object has that name on the servers of the cluster."""


class ClientGone(SperseError):
    """Remote code called back a client (``sperse.callback``) that has left."""


class ServerLost(SperseError):
    """The connection to a server broke and could not be resumed; its work is lost."""


class ServerUnavailable(SperseError):
    """No server answered at the address given (not started, wrong port, firewall)."""


class AuthenticationError(SperseError):
    """The server refused the token: nothing was sent or run."""


class ProtocolError(SperseError):
    """Client and server disagree: protocol version, Python version, or a malformed message."""
