"""A unit that kills its server, on real servers: only that unit fails (``server_lost``,
after its retries, each blamed loss one where it ran alone); the units that ran beside it
complete on the fresh servers the job starts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from job_helpers import embedded_cluster, outputs
from job_units import kill_server

import sperse
from sperse._backends.sperse import EmbeddedServer
from sperse.jobs import submit_job


def test_a_unit_that_kills_its_server_fails_alone(
    make_inputs: Callable[..., Path], tmp_path: Path
) -> None:
    started: list[EmbeddedServer] = []

    def start() -> sperse.Cluster:
        cluster, server = embedded_cluster(f"victim{len(started)}", workers=2)
        started.append(server)
        return cluster

    normal = {f"n{i:02d}": f"unit {i}".encode() for i in range(12)}
    inputs = {"killer": b"kill"} | normal
    out = tmp_path / "out"
    job = submit_job(
        python=kill_server, input=make_inputs(inputs), output=out, retries=2, cluster=start
    )
    try:
        summary = job.wait(timeout=120)
    finally:
        job.close()  # stops the servers it started, by pid
    assert (summary.succeeded, summary.failed) == (12, 1), summary.report()
    (failure,) = summary.failures
    assert failure.name == "killer"
    assert failure.error is not None and failure.error.kind == "server_lost"
    assert failure.attempts == 3  # retries=2: blamed for three losses, each alone
    assert outputs(out) == {name: data.upper() for name, data in normal.items()}
    assert not any(server.alive() for server in started)
