"""What the shared memory tests share: a server's files in /dev/shm (the server is
``conftest.shm_server``)."""

from __future__ import annotations

import os
import threading
import time

from sperse._backends.sperse import EmbeddedServer
from sperse._serialize import shm

WAIT = 60.0


def files(server: EmbeddedServer) -> set[str]:
    """The server's files, but the standby files its workers and clients made ahead of their
    next big write (``shm.Standby``): those are swept when the server stops."""
    prefix = shm.server_prefix(server.process.pid)
    return {
        name
        for name in os.listdir(shm.SHM_DIR)
        if name.startswith(prefix) and not shm.is_standby(name)
    }


def all_files(server: EmbeddedServer) -> set[str]:
    """Every file of the server's, standby files too."""
    prefix = shm.server_prefix(server.process.pid)
    return {name for name in os.listdir(shm.SHM_DIR) if name.startswith(prefix)}


def files_once_settled(server: EmbeddedServer, count: int) -> set[str]:
    """The server's files once there are ``count`` of them, or what is there at the deadline:
    the server unlinks a file just after its reply is sent, so the client may look first."""
    deadline = time.monotonic() + WAIT
    while len(found := files(server)) != count and time.monotonic() < deadline:
        threading.Event().wait(0.01)  # a poll of /dev/shm with a deadline
    return found
