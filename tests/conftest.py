"""Shared fixtures: clusters on real backends, stopped by the test that started them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import sperse


def _local() -> sperse.Cluster:
    return sperse.Cluster(sperse.LocalBackend(2))


def _server() -> sperse.Cluster:
    """A real ``sperse server`` child process on loopback, as ``sperse.connect()`` starts."""
    from sperse._backends.remote import EmbeddedServer, SperseBackend

    server = EmbeddedServer(workers=2)
    return sperse.Cluster(SperseBackend(server.address, token=server.token, process=server))


# Every backend the conformance tests run against (the Ray backend joins when it lands).
BACKENDS = {"local": _local, "server": _server}


@pytest.fixture(scope="module", params=sorted(BACKENDS))
def cluster(request: pytest.FixtureRequest) -> Iterator[sperse.Cluster]:
    with BACKENDS[request.param]() as c:
        yield c
