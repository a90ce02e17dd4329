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
    ├── FlowFailed          a flow's operator raised, or met an item it cannot handle
    ├── ServiceStopped      a request was sent to a service that has stopped
    ├── NotReadyError       a name or Pending is still pending
    ├── TaskCancelled       the work was cancelled before it finished
    │   └── TaskTimeout     ... because it passed its ``timeout=``
    ├── SerializationError  a value could not be pickled or unpickled
    ├── NoMatchingServer    no server meets a task's constraint (tags, pin, resources)
    ├── WorkerDied          the process running the work died
    ├── EnvUnavailable      a server could not install the pip packages a task asked for
    ├── ServerLost          the connection to a server broke and could not be resumed
    ├── ServerUnavailable   no server answered at the address given
    ├── AuthenticationError the server refused the token
    └── ProtocolError       client and server do not speak the same protocol or Python

Messages say what happened, the likely cause, and what to do.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Iterable

__all__ = [
    "AuthenticationError",
    "CellError",
    "ClientGone",
    "CycleError",
    "EnvUnavailable",
    "FlowFailed",
    "NoMatchingServer",
    "NotReadyError",
    "ObjectLost",
    "ProtocolError",
    "RemoteError",
    "SerializationError",
    "ServerLost",
    "ServerUnavailable",
    "ServiceStopped",
    "SperseError",
    "StatementError",
    "TaskCancelled",
    "TaskTimeout",
    "UnknownObject",
    "UpstreamError",
    "UsageError",
    "WorkerDied",
]


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """`` Did you mean: 'slow'?`` for the candidate closest to ``word``, as Python 3.11+
    says for a misspelt name; "" when none is close."""
    found = difflib.get_close_matches(word, [c for c in candidates if c != word], n=1)
    return f" Did you mean: {found[0]!r}?" if found else ""


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

    ``RemoteError.of(...)`` makes the error a user catches: when the remote type is one this
    process already has (a builtin, or a class of a module imported here), it is an instance
    of that type too, so ``except ZeroDivisionError`` catches a remote ``1 / 0`` (as Ray's
    task errors do). Nothing is imported to find the type.
    """

    def __init__(
        self,
        message: str,
        *,
        type_name: str = "",
        remote_traceback: str = "",
        where: str = "",
    ) -> None:
        Exception.__init__(self, message)  # not the remote type's own __init__ (see ``of``)
        self.type_name = type_name
        self.remote_traceback = remote_traceback
        self.where = where

    @staticmethod
    def of(
        message: str, *, type_name: str = "", remote_traceback: str = "", where: str = ""
    ) -> RemoteError:
        """A ``RemoteError`` that is also an instance of the remote type, where this process
        has that type and it can be combined with ``RemoteError``."""
        kind = _remote_kind(_local_type(type_name))
        try:
            return kind(
                message, type_name=type_name, remote_traceback=remote_traceback, where=where
            )
        except Exception:  # an exception type whose __new__ wants more: plain RemoteError
            return RemoteError(
                message, type_name=type_name, remote_traceback=remote_traceback, where=where
            )

    def __reduce__(self) -> tuple[object, ...]:
        text = Exception.__str__(self)
        return _rebuild_remote_error, (text, self.type_name, self.remote_traceback, self.where)

    def __str__(self) -> str:
        text = super().__str__()
        if self.remote_traceback:
            origin = f" on {self.where}" if self.where else ""
            text += f"\n\nThis happened remotely{origin}:\n{self.remote_traceback.rstrip()}"
        return text


def _rebuild_remote_error(
    message: str, type_name: str, remote_traceback: str, where: str
) -> RemoteError:
    return RemoteError.of(
        message, type_name=type_name, remote_traceback=remote_traceback, where=where
    )


def _local_type(type_name: str) -> type[Exception] | None:
    """The exception type named ``type_name`` (``ValueError``, ``pkg.mod.Error``) if a module
    already imported here defines it; None otherwise."""
    module_name, _, qualname = type_name.rpartition(".")
    module_name = module_name or "builtins"
    while True:
        module = sys.modules.get(module_name)
        if module is not None:
            found: object = module
            for part in qualname.split("."):
                found = getattr(found, part, None)
            if isinstance(found, type) and issubclass(found, Exception):
                return found
            return None
        # `pkg.Outer.Error`: the module is a prefix of the name; try a shorter one.
        module_name, _, head = module_name.rpartition(".")
        if not module_name:
            return None
        qualname = f"{head}.{qualname}"


_REMOTE_KINDS: dict[type[Exception], type[RemoteError]] = {}


def _remote_kind(kind: type[Exception] | None) -> type[RemoteError]:
    """``RemoteError`` combined with ``kind`` (made once per type), or plain ``RemoteError``
    where the two cannot be combined (exceptions with their own C layout, such as
    ``OSError``) or ``kind`` is a Sperse error already."""
    if kind is None or issubclass(kind, SperseError):
        return RemoteError
    combined = _REMOTE_KINDS.get(kind)
    if combined is None:
        try:
            combined = type(
                f"RemoteError({kind.__name__})",
                (RemoteError, kind),
                {"__module__": __name__, "__doc__": RemoteError.__doc__},
            )
        except TypeError:
            combined = RemoteError
        _REMOTE_KINDS[kind] = combined
    return combined


class UpstreamError(SperseError):
    """A name has no value because a cell it depends on failed."""

    def __init__(self, message: str, *, upstream: str = "") -> None:
        super().__init__(message)
        self.upstream = upstream


class FlowFailed(SperseError):
    """A flow (``sperse.Flow``) stopped: an operator raised, or met an item it cannot handle
    (an unhashable key, an item that cannot be pickled), or a per-item loop did not end.

    ``flow`` and ``operator`` name where (the operator's ``name=``), ``item`` is a short
    repr of the item it was handling ("" when no single item is to blame), ``type_name`` the
    type of the original exception, and ``remote_traceback`` its formatted traceback.
    ``server`` names the server when the failure is one of a server (it died, or could not
    be reached).
    """

    def __init__(
        self,
        message: str,
        *,
        flow: str = "",
        operator: str = "",
        item: str = "",
        type_name: str = "",
        remote_traceback: str = "",
        server: str = "",
    ) -> None:
        super().__init__(message)
        self.flow = flow
        self.server = server
        self.operator = operator
        self.item = item
        self.type_name = type_name
        self.remote_traceback = remote_traceback

    def __reduce__(self) -> tuple[object, ...]:
        return _rebuild_flow_failed, (
            Exception.__str__(self),
            self.flow,
            self.operator,
            self.item,
            self.type_name,
            self.remote_traceback,
            self.server,
        )

    def __str__(self) -> str:
        text = super().__str__()
        if self.remote_traceback:
            text += f"\n\nThe operator's traceback:\n{self.remote_traceback.rstrip()}"
        return text


def _rebuild_flow_failed(
    message: str,
    flow: str,
    operator: str,
    item: str,
    type_name: str,
    remote_traceback: str,
    server: str = "",
) -> FlowFailed:
    return FlowFailed(
        message,
        flow=flow,
        operator=operator,
        item=item,
        type_name=type_name,
        remote_traceback=remote_traceback,
        server=server,
    )


class ServiceStopped(SperseError):
    """A request was sent to a service (``sperse.Service``) that has stopped, or stopped
    before answering it: serve the flow again to start it again."""


class NotReadyError(SperseError):
    """A name or Pending was read before its value arrived."""


class TaskCancelled(SperseError):
    """The work was cancelled (by the user, or because its inputs changed)."""


class TaskTimeout(TaskCancelled, TimeoutError):
    """The work did not finish within its ``timeout=`` and was cancelled."""


class SerializationError(SperseError):
    """A value could not be pickled to send, or unpickled on arrival."""


class NoMatchingServer(SperseError):
    """No server can run the task: none has the tags, name or resources it asks for."""


class WorkerDied(SperseError):
    """The worker process running the task died (killed, crashed, out of memory)."""


class EnvUnavailable(SperseError):
    """A server could not prepare the environment a task asked for (``env={"pip": [...]}``):
    pip failed, or took too long. The message quotes pip."""


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
