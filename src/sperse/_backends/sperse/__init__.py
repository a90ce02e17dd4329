"""The client of ``sperse server``: ``SperseBackend`` and ``EmbeddedServer``.

Modules, each importing only those above it:

- :mod:`~sperse._backends.sperse.uploads`: big buffers through shared memory files;
- :mod:`~sperse._backends.sperse.embedded`: ``EmbeddedServer``, a server child process;
- :mod:`~sperse._backends.sperse.transport`: the same-host stream, the outbox that writes to
  either stream, and the one place where grpc's errors become Sperse's;
- :mod:`~sperse._backends.sperse.events`: the tasks in flight, and server events decoded
  into backend events;
- :mod:`~sperse._backends.sperse.session`: Hello/Welcome, the receive loop, resuming, and
  requests;
- :mod:`~sperse._backends.sperse.backend`: ``SperseBackend``, the ``Backend`` adapter.
"""

from __future__ import annotations

from sperse._backends.sperse.backend import DEFAULT_INLINE_LIMIT, SperseBackend, TaskOutputLog
from sperse._backends.sperse.embedded import EmbeddedServer
from sperse._backends.sperse.transport import Compression, NotAServer

__all__ = [
    "DEFAULT_INLINE_LIMIT",
    "Compression",
    "EmbeddedServer",
    "NotAServer",
    "SperseBackend",
    "TaskOutputLog",
]
