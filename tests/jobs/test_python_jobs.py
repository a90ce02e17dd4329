"""Python-function jobs on every backend (in-process workers and a real server): units
that fail alone, a worker killed by a unit, resuming, and functions named by text."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from job_helpers import leftovers, outputs
from job_units import behave, stuck

import sperse
from sperse.jobs import JobError, submit_job

HERE = Path(__file__).resolve().parent


def test_failing_units_fail_alone(
    cluster: sperse.Cluster, make_inputs: Callable[..., Path], tmp_path: Path
) -> None:
    good = {f"ok{i}": f"fine {i}".encode() for i in range(30)}
    bad = {"raise": b"raise now", "loop": b"loop", "int": b"int", "die": b"die"}
    out = tmp_path / "out"
    job = submit_job(
        python=behave,
        input=make_inputs(good | bad),
        output=out,
        timeout=0.5,
        retries=1,
        cluster=cluster,
    )
    summary = job.wait(timeout=60)
    assert (summary.succeeded, summary.failed) == (30, 4), summary.report()
    assert outputs(out) == {name: data.upper() for name, data in good.items()}
    errors = {f.name: f.error for f in summary.failures}
    raised = errors["raise"]
    assert raised is not None and raised.kind == "raised"
    assert raised.message == "ValueError: bad unit raise now"
    assert "about to fail" in raised.detail and "raise ValueError" in raised.detail
    assert errors["loop"] is not None and errors["loop"].kind == "timeout"
    assert errors["int"] is not None and "returned int" in errors["int"].message
    died = errors["die"]
    assert died is not None and died.kind == "worker_died"
    assert "tried 2 times" in died.message  # retries=1: two workers died for it
    failed = [json.loads(line) for line in (out / "_failed.jsonl").read_text().splitlines()]
    assert sorted(r["unit"] for r in failed) == sorted(bad)
    assert leftovers(out) == []


def test_a_second_run_after_an_interrupted_one_does_only_what_is_missing(
    cluster: sperse.Cluster, make_inputs: Callable[..., Path], tmp_path: Path
) -> None:
    inputs = {f"d{i // 50}/u{i}": f"unit {i}".encode() for i in range(200)}  # in subdirectories
    source = make_inputs(inputs)
    out = tmp_path / "out"
    first = submit_job(python=behave, input=source, output=out, cluster=cluster)
    for count, _ in enumerate(first.as_completed(timeout=60), 1):
        if count == 20:
            assert first.cancel()
    assert first.wait(timeout=60).cancelled
    before = set(outputs(out))
    assert 20 <= len(before) < 200 and leftovers(out) == []

    second = submit_job(python=behave, input=source, output=out, cluster=cluster)
    ran = {r.name for r in second.as_completed(timeout=60)}
    summary = second.wait(timeout=60)
    assert summary.ok and summary.skipped == len(before) and summary.succeeded == 200 - len(before)
    assert ran == set(inputs) - before
    assert outputs(out) == {name: data.upper() for name, data in inputs.items()}

    third = submit_job(python=behave, input=source, output=out, cluster=cluster).wait(timeout=60)
    assert (third.ok, third.skipped, third.succeeded) == (True, 200, 0)


def test_units_from_lines_of_a_stream(cluster: sperse.Cluster, tmp_path: Path) -> None:
    stream = io.BytesIO(b"one\ntwo\r\n\nthree")
    summary = submit_job(python=behave, input=stream, output=tmp_path, cluster=cluster).wait(60)
    assert summary.ok and summary.total == 3
    assert outputs(tmp_path) == {"00000001": b"ONE", "00000002": b"TWO", "00000004": b"THREE"}


def test_functions_named_by_text(
    cluster: sperse.Cluster, make_inputs: Callable[..., Path], tmp_path: Path
) -> None:
    inputs = make_inputs({"a": b"text a"})
    by_file = submit_job(
        python=f"{HERE / 'job_units.py'}:behave",
        input=inputs,
        output=tmp_path / "1",
        cluster=cluster,
    )
    by_module = submit_job(
        python="job_units:behave", input=inputs, output=tmp_path / "2", cluster=cluster
    )
    for job in (by_file, by_module):
        assert job.wait(timeout=60).ok
    assert (tmp_path / "1" / "a").read_bytes() == (tmp_path / "2" / "a").read_bytes() == b"TEXT A"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module_here:f", "cannot import 'no_such_module_here'"),
        ("job_units:nothing", "has no function 'nothing'"),
        ("job_units", "MODULE:FUNCTION"),
        ("/no/such/file.py:f", "no such Python file"),
    ],
)
def test_a_function_that_cannot_be_found_is_refused(
    cluster: sperse.Cluster,
    make_inputs: Callable[..., Path],
    tmp_path: Path,
    spec: str,
    message: str,
) -> None:
    with pytest.raises(JobError, match=message):
        submit_job(
            python=spec, input=make_inputs({"a": b""}), output=tmp_path / "o", cluster=cluster
        )
    assert not (tmp_path / "o").exists()


def test_bad_arguments_are_refused(cluster: sperse.Cluster, tmp_path: Path) -> None:
    with pytest.raises(JobError, match="one program"):
        submit_job(input=tmp_path, output=tmp_path / "o", cluster=cluster)
    with pytest.raises(JobError, match="is not there"):
        submit_job(python=behave, input=tmp_path / "none", output=tmp_path / "o", cluster=cluster)
    with pytest.raises(JobError, match="must not be the input"):
        submit_job(python=behave, input=tmp_path, output=tmp_path, cluster=cluster)
    with pytest.raises(sperse.NoMatchingServer, match="gpu"):
        submit_job(python=behave, input=tmp_path, output=tmp_path / "o", on="gpu", cluster=cluster)


def test_a_unit_that_cannot_be_interrupted_is_stopped_by_the_backstop(tmp_path: Path) -> None:
    """The worker's own limit cannot stop this unit: the job cancels its batch a while past
    the limit, the others of the batch run again alone, and the stuck one fails alone."""
    lines = [b"a", b"b", b"stuck", b"c"]
    with sperse.Cluster(sperse.LocalBackend(1)) as cluster:
        job = submit_job(
            python=stuck, input=iter(lines), output=tmp_path, timeout=0.2, cluster=cluster
        )
        summary = job.wait(timeout=60)
    assert (summary.succeeded, summary.failed) == (3, 1), summary.report()
    (failure,) = summary.failures
    assert failure.error is not None and failure.error.kind == "timeout"
    assert "could not be interrupted" in failure.error.message
