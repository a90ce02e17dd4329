"""``python -m sperse.server`` / ``sperse server``: run a sperse server.

The implementation is in :mod:`sperse._server.cli`. This module imports nothing else at its
top: worker processes are spawned, and a spawned process imports its parent's ``__main__``
(this module, under ``python -m``), so whatever this imports, every worker would pay for.
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run a server until SIGTERM/SIGINT (or stdin EOF with --token-stdin); the exit status."""
    import contextlib

    from sperse._pool.forking import start_forkserver

    # First: the forkserver's imports (of the workers it forks: tasks', remote objects',
    # flows') run on the other core while this process imports the server. A failure is met
    # again, and logged, once the server runs; its task workers are then spawned.
    with contextlib.suppress(OSError):
        start_forkserver()
    from sperse._server.cli import main as run

    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
