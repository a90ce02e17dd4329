"""Fixtures of the flow tests on real processes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import sperse
from sperse._up import LocalCluster


@pytest.fixture
def three() -> Iterator[tuple[LocalCluster, sperse.Cluster]]:
    """A coordinator and 3 servers (a server killed is dropped after 2 s), and a client."""
    with LocalCluster(3, heartbeat_timeout=2.0) as lc:
        cluster = sperse.connect(lc.url, token=lc.token)
        try:
            yield lc, cluster
        finally:
            cluster.close()
