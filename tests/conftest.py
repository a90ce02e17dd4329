"""Shared fixtures: clusters on real backends, stopped by the test that started them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import sperse


def _local() -> sperse.Cluster:
    return sperse.Cluster(sperse.LocalBackend(2))


# Every backend the conformance tests run against. The server and Ray backends
# join this list as they land.
BACKENDS = {"local": _local}


@pytest.fixture(scope="module", params=sorted(BACKENDS))
def cluster(request: pytest.FixtureRequest) -> Iterator[sperse.Cluster]:
    with BACKENDS[request.param]() as c:
        yield c
