"""The forkserver that forks the pool's workers, and what it imports before it forks.

Light on purpose: ``sperse server`` imports this first thing and starts the forkserver, so
that the forkserver's imports run on the other core while the server imports the rest
(:mod:`sperse.server`). It imports nothing of sperse.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing import forkserver

__all__ = ["CONTEXT", "PRELOAD", "start_forkserver"]

# What a forked worker needs, imported once in the forkserver (a failed import is skipped
# there, and made again in the worker): the worker, the objects' runner, the flow's host,
# and the client a host reaches other hosts with (gRPC among it: ~40 ms of CPU that each
# host of a flow with a hash edge paid at its start, beside the others' work). Imported
# only: the forkserver makes no channel, so nothing of gRPC's runs before a fork.
PRELOAD = [
    "sperse._pool.worker",
    "sperse._server.actor_runner",
    "sperse._flow.host",
    "sperse._cluster.objects",
    "sperse._backends.multi",
    "sperse._backends.sperse",
    "runpy",
    "sperse._pool.frozen",  # last: gc.freeze() of all the above
]
CONTEXT = multiprocessing.get_context("forkserver")  # the pool starts forked workers with it
CONTEXT.set_forkserver_preload(PRELOAD)


def start_forkserver() -> None:
    """Start the forkserver (and its imports) now, not at the first forked worker: about
    0.1 s of CPU, once per process. Returns once it is started, before its imports end."""
    forkserver.ensure_running()
