"""Closing a cluster ends what is still pending, in an error: nothing stays pending."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

import sperse
from sperse._backends.multi import ClusterBackend
from sperse._backends.sperse import EmbeddedServer, SperseBackend

WAIT = 30.0  # a deadline, never a delay


def wait_forever(gate: float) -> None:
    time.sleep(gate)


def one_server() -> sperse.Cluster:
    server = EmbeddedServer(workers=1)
    return sperse.Cluster(SperseBackend(server.address, token=server.token, process=server))


def two_servers() -> sperse.Cluster:
    token = "close-test-token"
    servers = [EmbeddedServer(workers=1, name=n, token=token) for n in ("a", "b")]
    urls = [s.address for s in servers]
    return sperse.Cluster(ClusterBackend(urls, token=token, processes=servers))


@pytest.mark.parametrize("make", [one_server, two_servers])
def test_close_ends_running_and_waiting_work_in_server_lost(
    make: Callable[[], sperse.Cluster],
) -> None:
    with make() as cluster:
        running = [sperse.remote(wait_forever)(60) for _ in range(12)]  # more than fit
        assert cluster.run_until(lambda: any(p.where for p in running), WAIT)
    for p in running:
        with pytest.raises(sperse.ServerLost, match="closed"):
            p.result(WAIT)
