"""Big arrays between a client and a server on one host: through shared memory files.

The embedded server is always on this host; a client that does not use shared memory
(``shm=False``, as one on another host) still gets every value, over gRPC. No test leaves a
file of the server's in /dev/shm once its values are released and the server has stopped.
"""

from __future__ import annotations

import gc
from typing import Any

import numpy as np
import pytest
from shm_helpers import files_once_settled

import sperse
from sperse._backends.sperse import EmbeddedServer, SperseBackend
from sperse._serialize import shm

pytestmark = pytest.mark.skipif(not shm.available(), reason="no /dev/shm on this host")

WAIT = 60.0
N = 100_000_000 // 8  # a 100 MB float64 array


def add_one_and_sum(a: Any) -> float:
    a += 1  # the input arrives writable
    return float(a.sum())


def ones(n: int) -> Any:
    import numpy

    return numpy.ones(n)


def total(a: Any) -> float:
    return float(a.sum())


def test_a_100_mb_array_up_down_and_by_reference(shm_server: EmbeddedServer) -> None:
    backend = SperseBackend(shm_server.address, token=shm_server.token)
    with sperse.Cluster(backend) as cluster:
        assert backend.shm
        array = np.ones(N)
        # Up: written once into a file the server owns, mapped by the worker.
        assert sperse.remote(add_one_and_sum)(array).result(WAIT) == 2.0 * N
        assert (array == 1.0).all(), "the client's array is untouched"
        assert files_once_settled(shm_server, 0) == set(), "the upload went when its task ended"

        # Down: kept in a file on the server, mapped here copy-on-write.
        p = sperse.remote(ones)(N)
        sperse.wait([p], timeout=WAIT)
        assert len(files_once_settled(shm_server, 1)) == 1
        value = p.result(WAIT)
        assert value.shape == (N,) and value.flags.writeable
        assert (value == 1.0).all()
        value[:10] = 5.0  # copy-on-write: the file (and the server's object) stay as they were

        # By reference: the next task maps the same file, nothing crosses the client.
        assert sperse.remote(total)(p).result(WAIT) == float(N)
        assert float(value[:10].sum()) == 50.0

        del p, value
        gc.collect()
        assert cluster.stats()["objects"] == 0
        assert files_once_settled(shm_server, 0) == set()


def test_a_client_without_shared_memory_gets_everything_over_grpc(
    shm_server: EmbeddedServer,
) -> None:
    backend = SperseBackend(shm_server.address, token=shm_server.token, shm=False)
    with sperse.Cluster(backend):
        assert not backend.shm
        array = np.ones(N // 10)
        assert sperse.remote(add_one_and_sum)(array).result(WAIT) == 2.0 * (N // 10)
        value = sperse.remote(ones)(N // 10).result(WAIT)
        assert value.flags.writeable and float(value.sum()) == float(N // 10)
        value += 1
