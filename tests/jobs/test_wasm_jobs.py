"""WebAssembly jobs end to end, on real servers: correct outputs across two servers, units
that fail alone, a server killed mid-job, resuming, and a module refused before anything runs."""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from job_helpers import SUMMER, embedded_cluster, leftovers, outputs, sums

import sperse
from sperse._backends.sperse import EmbeddedServer
from sperse.jobs import JobError, submit_job


def test_a_thousand_inputs_across_two_servers(
    two_servers: list[sperse.Cluster], make_inputs: Callable[..., Path], tmp_path: Path
) -> None:
    inputs = make_inputs(sums(1000))
    out = tmp_path / "out"
    job = submit_job(wasm=SUMMER, input=inputs, output=out, cluster=two_servers)
    seen = Counter(result.where for result in job.as_completed(timeout=60))
    summary = job.wait(timeout=60)
    assert summary.ok and summary.succeeded == 1000, summary.report()
    assert set(seen) == {"s1", "s2"} and sum(seen.values()) == 1000
    assert outputs(out) == {f"{i}.txt": f"{3 * i}\n".encode() for i in range(1000)}
    assert leftovers(out) == [] and not (out / "_failed.jsonl").exists()
    # The module travelled to each worker about once, not with every batch.
    assert summary.extra["module_sends"] <= 2 * 2  # workers x batches in flight per worker
    assert summary.extra["batches"] < 1000  # small units travel in batches


def test_failing_units_fail_alone(
    two_servers: list[sperse.Cluster],
    behave_wasm: bytes,
    make_inputs: Callable[..., Path],
    tmp_path: Path,
) -> None:
    good = {f"ok{i}": f"fine {i}".encode() for i in range(40)}
    bad = {"trap": b"t", "loop": b"l", "alloc": b"m", "exit": b"x"}
    out = tmp_path / "out"
    job = submit_job(
        wasm=behave_wasm,
        input=make_inputs(good | bad),
        output=out,
        timeout=0.5,
        max_memory_mb=8,
        cluster=two_servers,
    )
    summary = job.wait(timeout=60)
    assert (summary.succeeded, summary.failed, summary.exit_code) == (40, 4, 1)
    assert outputs(out) == good
    failures = {f.name: f.error for f in summary.failures}
    assert failures["trap"] is not None and failures["trap"].kind == "trap"
    assert "unreachable" in failures["trap"].message
    assert failures["loop"] is not None and failures["loop"].kind == "timeout"
    assert "time limit of 0.5 s" in failures["loop"].message
    assert failures["alloc"] is not None and failures["alloc"].kind == "memory"
    assert "memory limit of 8 MiB" in failures["alloc"].message
    assert failures["exit"] is not None and failures["exit"].kind == "exit"
    assert failures["exit"].message == "exited with code 3"
    assert failures["exit"].detail == "bad unit\n"  # its stderr
    listed = [json.loads(line) for line in (out / "_failed.jsonl").read_text().splitlines()]
    assert sorted(r["unit"] for r in listed) == sorted(bad)
    assert {r["unit"]: r["kind"] for r in listed}["loop"] == "timeout"
    assert "2 failed" not in summary.report() and "4 failed" in summary.report()


def test_an_invalid_module_is_refused_before_any_unit_runs(
    two_servers: list[sperse.Cluster], make_inputs: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    with pytest.raises(JobError, match="unknown binary version"):
        submit_job(
            wasm=b"\0asm\x02\0\0\0", input=make_inputs(sums(3)), output=out, cluster=two_servers
        )
    with pytest.raises(JobError, match="nor WAT text that wasmtime accepts"):
        submit_job(wasm=b"hello", input=make_inputs(sums(3)), output=out, cluster=two_servers)
    assert not out.exists()  # nothing ran, nothing was written


def test_a_second_run_after_an_interrupted_one_does_only_what_is_missing(
    two_servers: list[sperse.Cluster], make_inputs: Callable[..., Path], tmp_path: Path
) -> None:
    inputs = make_inputs(sums(300))
    out = tmp_path / "out"
    first = submit_job(wasm=SUMMER, input=inputs, output=out, cluster=two_servers)
    for count, _ in enumerate(first.as_completed(timeout=60), 1):
        if count == 50:
            first.cancel()
    interrupted = first.wait(timeout=60)
    assert interrupted.cancelled and not interrupted.ok and interrupted.not_run > 0
    done_before = set(outputs(out))
    assert 50 <= len(done_before) < 300
    assert leftovers(out) == []

    second = submit_job(wasm=SUMMER, input=inputs, output=out, cluster=two_servers)
    ran = {result.name for result in second.as_completed(timeout=60)}
    summary = second.wait(timeout=60)
    assert summary.ok and summary.skipped == len(done_before)
    assert ran == {f"{i}.txt" for i in range(300)} - done_before
    assert outputs(out) == {f"{i}.txt": f"{3 * i}\n".encode() for i in range(300)}


def _spin_inputs(count: int) -> dict[str, bytes]:
    return {f"u{i:03d}": f"s unit {i}".encode() for i in range(count)}


def test_a_server_killed_mid_job_loses_nothing(
    behave_wasm: bytes, make_inputs: Callable[..., Path], tmp_path: Path
) -> None:
    """SIGKILL one of two servers: its units go to the other; every output is written once."""
    clusters = []
    servers: list[EmbeddedServer] = []
    try:
        for name in ("k1", "k2"):
            cluster, server = embedded_cluster(name)
            clusters.append(cluster)
            servers.append(server)
        inputs = _spin_inputs(200)
        out = tmp_path / "out"
        job = submit_job(wasm=behave_wasm, input=make_inputs(inputs), output=out, cluster=clusters)
        names = []
        for result in job.as_completed(timeout=60):
            names.append(result.name)
            if len(names) == 30:
                os.kill(servers[0].process.pid, signal.SIGKILL)
        summary = job.wait(timeout=60)
        assert summary.ok and summary.succeeded == 200, summary.report()
        assert summary.extra["retried"] > 0  # units of the killed server ran again
        assert sorted(names) == sorted(inputs)  # each unit finished exactly once
        assert outputs(out) == inputs  # none missing, none truncated
        assert leftovers(out) == []
    finally:
        for cluster in clusters:
            cluster.close()


def test_a_lost_server_is_replaced_by_a_fresh_one(
    behave_wasm: bytes, make_inputs: Callable[..., Path], tmp_path: Path
) -> None:
    """With a way to start a cluster (as `sperse submit` has), losing the only server
    starts another, which finishes the job."""
    started: list[EmbeddedServer] = []

    def start() -> sperse.Cluster:
        cluster, server = embedded_cluster(f"fresh{len(started)}")
        started.append(server)
        return cluster

    inputs = _spin_inputs(120)
    out = tmp_path / "out"
    job = submit_job(wasm=behave_wasm, input=make_inputs(inputs), output=out, cluster=start)
    try:
        for count, _ in enumerate(job.as_completed(timeout=60), 1):
            if count == 20:
                os.kill(started[0].process.pid, signal.SIGKILL)
        summary = job.wait(timeout=60)
    finally:
        job.close()  # closes the clusters it started: their servers are stopped by pid
    assert summary.ok, summary.report()
    assert summary.extra["replaced_clusters"] == 1 and len(started) == 2
    assert outputs(out) == inputs
    assert not any(server.alive() for server in started)
