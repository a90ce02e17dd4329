"""The record of the running ``sperse up`` (``$XDG_RUNTIME_DIR/sperse/cluster.json``): written
once its cluster is ready, used by ``sperse status`` and ``sperse run --up``, removed when it
stops; a missing or stale record refused with a message that says so.

Every test points ``XDG_RUNTIME_DIR`` at its own directory (child processes inherit it), so
that no test reads or replaces the record of a ``sperse up`` the developer is running.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from coordinator_helpers import DEADLINE, Child, children_of, pid_alive

from sperse import _status, _up, cli
from sperse._up import record as up_record

StartChild = Callable[..., Child]

CLUSTER_READY = re.compile(r"^sperse cluster ready at (sperse://127\.0\.0\.1:\d+)$")
WHERE_SCRIPT = """\
def parent():
    import multiprocessing
    return multiprocessing.parent_process().pid
p = remote parent()
print("ran under", p)
"""


@pytest.fixture
def record_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The directory ``sperse up`` records in, for this test and the processes it starts."""
    runtime = tmp_path / "run"
    runtime.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.delenv("SPERSE_COORDINATOR", raising=False)
    for name in ("SPERSE_TOKEN", "SPERSE_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    return runtime / "sperse"


def sperse(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sperse.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(DEADLINE)
    return process.pid


# ---- a real `sperse up` ------------------------------------------------------------------


def test_sperse_up_records_its_cluster_for_status_and_run(
    record_dir: Path, start_child: StartChild, tmp_path: Path
) -> None:
    up = start_child("sperse.cli", ["up", "--servers", "2"])
    lines = up.read_lines(7)
    match = CLUSTER_READY.match(lines[0])
    assert match, lines
    url = match.group(1)
    server_pids = {int(line.rsplit("pid: ", 1)[1].split()[0]) for line in lines[1:3]}

    record = record_dir / "cluster.json"
    token_file = record_dir / f"token-{up.pid}"
    assert sorted(p.name for p in record_dir.iterdir()) == ["cluster.json", token_file.name]
    assert stat.S_IMODE(record_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    written = record.read_text()
    assert json.loads(written) == {"url": url, "token_file": str(token_file), "pid": up.pid}
    token = token_file.read_text().strip()
    assert len(token) >= 32
    assert token not in written and token not in "\n".join(lines)  # only in its 0600 file
    assert lines[3] == f'connect: sperse.connect("{url}", token_file="{token_file}")'
    assert lines[4].split() == ["status:", "sperse", "status"]
    assert lines[5].split()[:5] == ["run:", "sperse", "run", "--up", "script.py"]

    status = sperse("status", "--json")
    assert status.returncode == 0, status.stderr
    assert sorted(m["name"] for m in json.loads(status.stdout)) == ["server-1", "server-2"]

    script = tmp_path / "where.py"
    script.write_text(WHERE_SCRIPT)
    run = sperse("run", "-q", "--up", str(script))
    assert run.returncode == 0, run.stderr
    said, pid = run.stdout.rsplit(maxsplit=1)
    assert said.endswith("ran under") and int(pid) in server_pids  # a worker of a server of up

    children = children_of(up.pid)
    up.process.send_signal(signal.SIGTERM)
    assert up.wait() == 0
    assert list(record_dir.iterdir()) == []  # the record and the token file written for it
    assert not [child for child in children if pid_alive(child)]

    status = sperse("status")
    assert status.returncode == 1
    assert status.stderr.startswith("sperse status: error: no cluster recorded by `sperse up`")


# ---- no record, a stale record -----------------------------------------------------------


def test_no_record_says_how_to_start_a_cluster(
    record_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _status.main([]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"sperse status: error: no cluster recorded by `sperse up` (in {record_dir}/cluster.json): "
        "start one with `sperse up --servers 2`, or give the coordinator's URL (sperse status "
        "sperse://HOST:PORT) or set SPERSE_COORDINATOR\n"
    )
    assert cli.main(["run", "--up", "script.py"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sperse: error: no cluster recorded by `sperse up` (in ")
    assert err.endswith("or name one with --connect URL --token-file PATH\n")


def test_a_stale_record_is_refused_saying_so(record_dir: Path, tmp_path: Path) -> None:
    pid = dead_pid()
    token_file = tmp_path / "token"
    token_file.write_text("a-token\n")
    record_dir.mkdir(mode=0o700)
    fields = {"url": "sperse://127.0.0.1:9", "token_file": str(token_file), "pid": pid}
    (record_dir / "cluster.json").write_text(json.dumps(fields))

    for command in (["status"], ["run", "--up", str(tmp_path / "never-read.py")]):
        done = sperse(*command)
        assert done.returncode == 1, done.stderr
        assert done.stdout == ""
        assert done.stderr.count("\n") == 1, done.stderr
        assert "no cluster recorded by `sperse up`: the one in" in done.stderr
        assert f"is stale (its `sperse up`, pid {pid}, is no longer running" in done.stderr
        assert "start one with `sperse up --servers 2`" in done.stderr


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("not json", "it is not JSON"),
        ('{"url": "http://x", "token_file": "/t", "pid": 1}', "is not sperse://HOST:PORT"),
        ('{"url": "sperse://h:1", "token_file": "/t", "pid": 0}', "its pid 0 is not a process id"),
    ],
)
def test_a_broken_record_is_refused_saying_so(
    record_dir: Path, capsys: pytest.CaptureFixture[str], content: str, why: str
) -> None:
    record_dir.mkdir(mode=0o700)
    (record_dir / "cluster.json").write_text(content)
    assert _status.main([]) == 1
    err = capsys.readouterr().err
    assert why in err and "delete it and start one with `sperse up --servers 2`" in err


# ---- the record, in-process ----------------------------------------------------------------


def test_a_record_is_removed_only_by_the_sperse_up_that_wrote_it(record_dir: Path) -> None:
    mine = up_record.write_record("sperse://127.0.0.1:1", "a-token", None, record_dir)
    token_file = record_dir / f"token-{os.getpid()}"
    assert (mine.token_file, mine.pid) == (str(token_file), os.getpid())
    assert token_file.read_text() == "a-token\n"
    assert _up.recorded_cluster() == mine
    later = {"url": "sperse://127.0.0.1:2", "token_file": "/elsewhere", "pid": os.getppid()}
    up_record.write_private(mine.path, json.dumps(later))  # what a later `sperse up` writes
    up_record.forget_record(mine, token_written=True)
    assert json.loads(mine.path.read_text()) == later
    assert not token_file.exists()  # its own token file goes, whoever holds the record


def test_a_given_token_file_is_recorded_by_its_absolute_path(
    record_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    record = up_record.write_record("sperse://127.0.0.1:1", "ignored", "my-token", record_dir)
    assert record.token_file == str(tmp_path / "my-token")
    assert sorted(p.name for p in record_dir.iterdir()) == ["cluster.json"]  # no token written
    up_record.forget_record(record, token_written=False)
    assert list(record_dir.iterdir()) == []


def test_token_files_of_dead_sperse_ups_are_swept(record_dir: Path) -> None:
    record_dir.mkdir(mode=0o700)
    dead = record_dir / f"token-{dead_pid()}"
    dead.write_text("old\n")
    alive = record_dir / f"token-{os.getpid()}"  # a running process's
    alive.write_text("in use\n")
    record = up_record.write_record("sperse://127.0.0.1:1", "t", str(alive), record_dir)
    assert not dead.exists() and alive.exists()
    up_record.forget_record(record, token_written=False)
    assert alive.exists()  # given with --token-file: not ours to remove


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"XDG_RUNTIME_DIR": "/run/user/7", "XDG_STATE_HOME": "/s"}, "/run/user/7/sperse"),
        ({"XDG_STATE_HOME": "/s"}, "/s/sperse"),
        ({"XDG_RUNTIME_DIR": "relative", "XDG_STATE_HOME": "also"}, "~/.local/state/sperse"),
        ({}, "~/.local/state/sperse"),
    ],
)
def test_record_dir(env: dict[str, str], expected: str) -> None:
    assert _up.record_dir(env) == Path(os.path.expanduser(expected))


def test_up_excludes_connect_local_and_ray(capsys: pytest.CaptureFixture[str]) -> None:
    for other in (["--connect", "sperse://127.0.0.1:1"], ["--local"], ["--ray", "auto"]):
        with pytest.raises(SystemExit) as exit_:
            cli.main(["run", "--up", *other, "script.py"])
        assert exit_.value.code == 2
        assert "--up (the cluster `sperse up` recorded) excludes" in capsys.readouterr().err
