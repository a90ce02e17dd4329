"""The holes of issue 17 (reliability and security), each kept closed by a test.

The servers are the shared ``cluster`` fixture's (tests/conftest.py), picked per test with
``@pytest.mark.parametrize("cluster", [...], indirect=True)``: "server" is one real
``sperse server`` process, "many" two behind one client. ``second_client`` is another
client (a session of its own) of the same server as ``cluster``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import sperse
from sperse._backends.sperse import SperseBackend


@pytest.fixture
def second_client(cluster: sperse.Cluster) -> Iterator[sperse.Cluster]:
    """Another client of the ``cluster`` fixture's one server, closed when the test ends.
    Not made current: pass it (``create_on``) or enter it."""
    backend = cluster.backend
    assert isinstance(backend, SperseBackend), "second_client needs the 'server' cluster"
    other = sperse.Cluster(SperseBackend(backend.address, token=backend._token))
    try:
        yield other
    finally:
        other.close()
