"""Issue 17: one value must not cost a server several times its size. A client on another
host (here: gRPC only, ``shm=False``) sends a big array as blob pieces; the server writes
them into a shared memory file as they arrive, and its worker maps that file: neither holds
the value twice."""

from __future__ import annotations

import numpy as np
import psutil

import sperse
from sperse._backends.sperse import EmbeddedServer, SperseBackend

MIB = 1 << 20
VALUE = 512 * MIB
WAIT = 120.0


def total(a: np.ndarray) -> float:
    return float(a.sum())


def peak_rss(pid: int) -> int:
    """The highest resident size the process has had (VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for process {pid}")


def test_a_big_argument_over_grpc_is_held_once() -> None:
    embedded = EmbeddedServer(workers=1)
    try:
        backend = SperseBackend(embedded.address, token=embedded.token, shm=False)
        with sperse.Cluster(backend):
            assert backend.transport == "grpc"
            server = psutil.Process(embedded.process.pid)
            assert sperse.remote(total)(np.ones(4)).result(timeout=WAIT) == 4.0  # warm
            children = server.children()  # the worker, and multiprocessing's helper
            server_before = peak_rss(server.pid)
            before = {child.pid: peak_rss(child.pid) for child in children}
            array = np.ones(VALUE // 8)
            assert sperse.remote(total)(array).result(timeout=WAIT) == VALUE // 8
            server_grew = peak_rss(server.pid) - server_before
            worker_grew = max(peak_rss(pid) - peak for pid, peak in before.items())
        # Before: the server joined the pieces (2x), the worker unpickled a copy (3x).
        assert server_grew < 0.3 * VALUE, f"the server's peak grew by {server_grew // MIB} MiB"
        assert worker_grew < 1.3 * VALUE, f"the worker's peak grew by {worker_grew // MIB} MiB"
    finally:
        embedded.stop()
