"""examples/db as its README says to run it: `sperse up --config`, then `sperse run` and
`sperse status` against the coordinator (on a copy of the example, so that the database file
it creates stays out of the repository)."""

from __future__ import annotations

import json
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 60.0


def sperse(*args: str) -> list[str]:
    return [sys.executable, "-m", "sperse.cli", *args]


@pytest.fixture
def example(tmp_path: Path) -> Path:
    copy = tmp_path / "db"
    shutil.copytree(ROOT / "examples" / "db", copy, ignore=shutil.ignore_patterns("data"))
    return copy


@pytest.fixture
def cluster(example: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`sperse up` on the example's cluster.toml (any free port): its URL and token file."""
    token = tmp_path / "token"
    config = str(example / "cluster.toml")
    up = subprocess.Popen(
        sperse("up", "--config", config, "--port", "0", "--token-file", str(token)),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        yield _ready(up), token
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            assert up.wait(30) == 0
        finally:
            if up.poll() is None:
                up.kill()
                up.wait()
            assert up.stdout is not None
            up.stdout.close()


def _ready(up: subprocess.Popen[str]) -> str:
    assert up.stdout is not None
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        readable, _, _ = select.select([up.stdout], [], [], 0.5)
        if readable:
            line = up.stdout.readline()
            assert line, "sperse up ended before it was ready"
            if "sperse cluster ready at " in line:
                return line.split(" ready at ")[1].strip()
    raise AssertionError("sperse up was not ready in time")


def test_the_query_runs_beside_the_database_and_the_summary_here(
    example: Path, cluster: tuple[str, Path]
) -> None:
    url, token = cluster
    done = subprocess.run(
        sperse("run", "--connect", url, "--token-file", str(token), str(example / "session.py")),
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        cwd=example.parent,  # as from the repository's root: dbtools.py is under it, so sent
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "rows ready on db-1" in out
    assert "summary ready" in out and "sales by region: {'east': (" in out
    assert all(f"'{region}': (" in out for region in ("north", "south", "east", "west"))
    database = example / "data" / "sales.db"
    assert f"the database is {database}" in out
    assert database.is_file()

    status = subprocess.run(
        sperse("status", url, "--token-file", str(token), "--json"),
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert status.returncode == 0, status.stderr
    servers = {s["name"]: s for s in json.loads(status.stdout)}
    assert set(servers) == {"db-1", "compute-1"}
    assert servers["db-1"]["tags"] == ["db"]
