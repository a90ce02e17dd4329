"""``python -m sperse.server`` / ``sperse server``: run a sperse server.

The implementation is in :mod:`sperse._server.cli`. This module imports nothing else at its
top: worker processes are spawned, and a spawned process imports its parent's ``__main__``
(this module, under ``python -m``), so whatever this imports, every worker would pay for.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run a server until SIGTERM/SIGINT (or stdin EOF with --token-stdin); the exit status."""
    import contextlib
    import threading

    from sperse._pool.forking import start_forkserver, start_objects_forkserver

    # First: the forkservers' imports (of the workers they fork: tasks', then remote
    # objects' and flows') run on the other core while this process imports the server.
    # The objects' is forked by the tasks' once that one is ready: a thread waits for it. A
    # failure is met again, and logged, once the server runs (its task workers are then
    # spawned).
    with contextlib.suppress(OSError):
        start_forkserver()
        threading.Thread(
            target=_quietly,
            args=(start_objects_forkserver,),
            name="objects-forkserver",
            daemon=True,
        ).start()
    from sperse._server.cli import main as run

    return run(argv)


def _quietly(start: Callable[[], None]) -> None:
    try:
        start()
    except Exception:  # tried again once the task workers are up, and logged then
        return


if __name__ == "__main__":
    sys.exit(main())
