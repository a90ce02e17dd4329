"""What the server executor's driver (:mod:`sperse._flow.servers`) does when a host fails:
it could not be created in time, its ``watch`` or a delivery to it failed (its server or
worker died), or it stayed silent too long.

Each failure becomes a ``FlowError`` report to the run's controller naming the host's
operators and its server, which ends the run (a batch flow's ``restart`` then runs it
again, see the ``servers`` module docstring). The kinds in :data:`LOST` are losses of a
host, that running again can help; an item that cannot be pickled is the operator's.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from sperse._core import ErrorInfo
from sperse._flow.host import lost_info, unpicklable
from sperse._flow.messages import FlowError, ReplicaEvent, Report, Settle
from sperse.errors import SerializationError

if TYPE_CHECKING:
    from sperse._flow.servers import _Driver, _Host

__all__ = ["LOST", "check_time", "delivery_failed", "fail_host"]

LOST = frozenset({"server_lost", "object_lost", "worker_died"})


def delivery_failed(
    d: _Driver, host: _Host, events: list[ReplicaEvent], error: BaseException
) -> list[Settle]:
    """A delivery of the driver's to ``host`` failed."""
    if isinstance(error, SerializationError):
        stage = d._plan.stages[host.key[0]]
        failure = unpicklable(d._plan, stage.nodes[0], events, error)
        return d._control(d._controller.handle(Report(failure)))
    return fail_host(d, host, f"could not be reached: {error}", lost_info(error))


def fail_host(d: _Driver, host: _Host, what: str, info: ErrorInfo | None = None) -> list[Settle]:
    """Report the failure of ``host`` (``what`` happened to it) to the controller."""
    if info is None:
        info = ErrorInfo("server_lost", "ServerLost", what)
    text = f"(replica {host.key[1]} on server {host.server!r}) {what}"
    failure = FlowError(d._names[host.key[0]], "", info, text, host.server)
    return d._control(d._controller.handle(Report(failure)))


def check_time(d: _Driver, started: bool, deadline: float) -> list[Settle]:
    """Fail the run on a host not created in time, or silent for too long."""
    now = time.monotonic()
    for host in d._hosts.values():
        if not started and not host.ready and now > deadline:
            return fail_host(d, host, "was not created in time")
        if started and now - host.heard > d._config.silence:
            silence = d._config.silence
            return fail_host(d, host, f"did not answer for {silence:g} s")
    return []
