"""``sperse.put``: a value sent to a server once, then used by reference (issue 18 §3: a
100 MB argument reused by 10 calls costs one transfer).

Real embedded servers; what a worker maps is read from its own ``/proc/self/maps``, so the
tests see which shared memory file each call used.
"""

from __future__ import annotations

import gc
import os
import threading
from typing import Any

import numpy as np
import pytest
from shm_helpers import files, files_once_settled

import sperse
from sperse._backends.sperse import EmbeddedServer, SperseBackend
from sperse._serialize import shm
from sperse.errors import SerializationError, SperseError, UsageError

pytestmark = pytest.mark.skipif(not shm.available(), reason="no /dev/shm on this host")

WAIT = 60.0
N = 100_000_000 // 8  # a 100 MB float64 array


def first_and_files(a: Any, i: int) -> tuple[float, float, list[str]]:
    """``a[0]``, its sum plus ``i``, and the shared memory files this worker has mapped."""
    with open("/proc/self/maps") as maps:
        mapped = {line.split()[-1] for line in maps if "/dev/shm/sperse-" in line}
    return float(a[0]), float(a.sum()) + i, sorted(os.path.basename(m) for m in mapped)


def test_a_put_array_is_sent_once_and_ten_calls_use_it_in_place(shm_server: EmbeddedServer) -> None:
    backend = SperseBackend(shm_server.address, token=shm_server.token)
    with sperse.Cluster(backend):
        array = np.ones(N)
        kept = sperse.put(array)
        sperse.wait([kept], timeout=WAIT)
        assert kept.remote_value is not None
        (name,) = files_once_settled(shm_server, 1)  # the upload, now the held value's file
        assert "numpy.ndarray" in repr(kept.remote_value)
        array[0] = 7.0  # the copy was made by put: the server's is unchanged

        f = sperse.remote(first_and_files)
        results = [f(kept, i).result(WAIT) for i in range(10)]
        for i, (first, total, mapped) in enumerate(results):
            assert first == 1.0 and total == N + i
            assert mapped == [name], "each call maps the one file put wrote, and no other"
        assert files(shm_server) == {name}

        # Sent by value, each call writes a file of its own.
        by_value = f(array, 0).result(WAIT)
        assert by_value[0] == 7.0 and by_value[2] != [name]

        assert kept.result(WAIT)[0] == 1.0  # and it comes back here on demand
        del kept, results
        gc.collect()
        assert files_once_settled(shm_server, 0) == set(), "released: its file went"


def mappings() -> int:
    """How many mappings of shared memory files of Sperse this worker holds."""
    with open("/proc/self/maps") as maps:
        return sum(1 for line in maps if "/dev/shm/sperse-" in line)


def test_a_call_unmaps_the_held_value_it_used_once_it_has_answered() -> None:
    with sperse.connect(workers=1):  # one worker: the calls and the count run in it
        kept = sperse.put(np.ones(1 << 20))
        f = sperse.remote(first_and_files)
        assert [f(kept, i).result(WAIT)[0] for i in range(5)] == [1.0] * 5
        # Not left for the garbage collector: a worker once kept a mapping per call.
        assert sperse.remote(mappings)().result(WAIT) == 0


def test_put_over_grpc_keeps_the_value_on_the_server(shm_server: EmbeddedServer) -> None:
    backend = SperseBackend(shm_server.address, token=shm_server.token, shm=False)
    with sperse.Cluster(backend):
        assert not backend.shm
        array = np.arange(1 << 20, dtype=np.float64)  # 8 MiB, sent in pieces
        kept = sperse.put(array)
        sperse.wait([kept], timeout=WAIT)
        assert kept.remote_value is not None
        f = sperse.remote(first_and_files)
        assert [f(kept, i).result(WAIT)[1] for i in range(3)] == [
            float(array.sum()) + i for i in range(3)
        ]
        assert (kept.result(WAIT) == array).all()


def test_a_small_value_is_held_too_and_any_picklable_value_goes() -> None:
    with sperse.connect(workers=1):
        kept = sperse.put({"model": "weights", "n": 3})
        assert kept.result(WAIT) == {"model": "weights", "n": 3}
        assert kept.remote_value is not None, "put holds whatever its size"
        assert sperse.remote(lambda d: d["n"] * 2)(kept).result(WAIT) == 6


def test_what_put_refuses_says_what_to_do() -> None:
    with sperse.connect(workers=1):
        computed = sperse.remote(np.ones)(1 << 18)  # 2 MiB: held
        computed.result(WAIT)
        with pytest.raises(UsageError, match="pass it to remote code as it is"):
            sperse.put(computed)
        with pytest.raises(SerializationError, match="put them one by one"):
            sperse.put([computed.remote_value]).result(WAIT)
        with pytest.raises(SerializationError, match="lock"):
            sperse.put(threading.Lock()).result(WAIT)


def test_a_put_past_the_servers_held_bytes_fails_and_leaves_no_file() -> None:
    process = EmbeddedServer(workers=1, extra_args=["--max-held-bytes", "10MB"])
    try:
        backend = SperseBackend(process.address, token=process.token)
        with sperse.Cluster(backend):
            with pytest.raises(SperseError, match=r"the value put of 16\.0 MiB was not kept"):
                sperse.put(np.ones(2 << 20)).result(WAIT)  # 16 MiB
            assert files_once_settled(process, 0) == set()
            small = sperse.put(np.ones(1 << 20))  # 8 MiB fits
            assert sperse.remote(lambda a: float(a.sum()))(small).result(WAIT) == 1 << 20
    finally:
        process.stop()


@pytest.mark.parametrize("kind", ["memory", "local"])
def test_backends_that_hold_no_values_hand_it_back(kind: str) -> None:
    with sperse.connect(backend=kind, workers=1):
        array = np.arange(10.0)
        kept = sperse.put(array)
        array[0] = 99.0
        assert kept.result(WAIT)[0] == 0.0, "a copy, made when put was called"
        assert sperse.remote(lambda a: float(a.sum()))(kept).result(WAIT) == 45.0
