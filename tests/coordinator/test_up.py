"""``sperse up``, ``LocalCluster``, ``sperse status`` and the ``sperse coordinator`` command."""

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
from coordinator_helpers import (
    DEADLINE,
    TOKEN,
    Child,
    CoordinatorThread,
    children_of,
    member,
    pid_alive,
    wait_until,
)

from sperse import _status
from sperse._backends.membership import MembershipWatch
from sperse._up import LocalCluster, ServerSpec, options

StartChild = Callable[..., Child]

CLUSTER_READY = re.compile(r"^sperse cluster ready at (sperse://127\.0\.0\.1:\d+)$")


def sperse(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sperse.cli", *args],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        env=env,
        check=False,
    )


# ---- sperse up, a real process ------------------------------------------------------------


def test_sperse_up_with_a_config_file(
    tmp_path: Path, start_child: StartChild, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))  # its record, not the developer's
    config = tmp_path / "cluster.toml"
    config.write_text(
        "[coordinator]\n"
        "heartbeat_timeout = 3.0\n"
        "\n"
        "[[server]]\n"
        'name = "gpu-1"\n'
        'tags = ["gpu", "fast"]\n'
        "resources = { gpu = 1 }\n"
        'cwd = "work/gpu-1"\n'
        "\n"
        "[[server]]\n"
        'name = "plain"\n'
    )
    token_file = tmp_path / "token"
    up = start_child("sperse.cli", ["up", "--config", str(config), "--token-file", str(token_file)])
    lines = up.read_lines(7)
    match = CLUSTER_READY.match(lines[0])
    assert match, lines
    url = match.group(1)
    assert lines[1].split()[0] == "gpu-1"
    assert "tags: fast,gpu" in lines[1] and "gpu=1" in lines[1]
    assert lines[2].split()[0] == "plain"
    assert f'sperse.connect("{url}", token_file="{token_file}")' in lines[3]
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    record = json.loads((tmp_path / "sperse" / "cluster.json").read_text())
    assert record == {"url": url, "token_file": str(token_file), "pid": up.pid}
    children = children_of(up.pid)
    assert len(children) == 3  # the coordinator and two servers

    gpu_pid = int(lines[1].rsplit("pid: ", 1)[1].split()[0])
    workdir = tmp_path / "work" / "gpu-1"
    assert workdir.is_dir()
    assert os.readlink(f"/proc/{gpu_pid}/cwd") == str(workdir.resolve())

    status = sperse("status", url, "--token-file", str(token_file), "--json")
    assert status.returncode == 0, status.stderr
    listed = {m["name"]: m for m in json.loads(status.stdout)}
    assert sorted(listed) == ["gpu-1", "plain"]
    assert listed["gpu-1"]["tags"] == ["fast", "gpu"]
    assert listed["gpu-1"]["resources"] == {"gpu": 1.0}
    assert listed["plain"]["tags"] == []

    up.process.send_signal(signal.SIGTERM)
    assert up.wait() == 0
    gone = [pid for pid in children if pid_alive(pid)]
    assert not gone, f"children {gone} outlived sperse up"
    assert list((tmp_path / "sperse").iterdir()) == []
    assert token_file.exists()  # given with --token-file: it stays


def test_sperse_up_refuses_a_bad_config(tmp_path: Path) -> None:
    config = tmp_path / "cluster.toml"
    config.write_text('[[server]]\nname = "a"\ncolour = "red"\n')
    result = sperse("up", "--config", str(config))
    assert result.returncode == 2
    assert "unknown keys ['colour']" in result.stderr


# ---- the plan of sperse up, without processes ------------------------------------------


def plan(*args: str) -> list[ServerSpec]:
    return options.read_plan(options.build_parser().parse_args(list(args))).specs


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), [("server-1", set()), ("server-2", set())]),
        (("--tags", "gpu,db,"), [("server-1", {"gpu"}), ("server-2", {"db"}), ("server-3", set())]),
        (
            ("--tags", "gpu+fast", "--servers", "2"),
            [("server-1", {"gpu", "fast"}), ("server-2", set())],
        ),
        (("--servers", "1", "--name-prefix", "n"), [("n1", set())]),
    ],
)
def test_plan_from_options(args: tuple[str, ...], expected: list[tuple[str, set[str]]]) -> None:
    assert [(s.name, set(s.tags)) for s in plan(*args)] == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--tags", "a,b,c", "--servers", "2"), "3 entries for 2 servers"),
        (("--servers", "0"), "at least 1"),
        (("--workers", "0"), "at least 1"),
    ],
)
def test_plan_refuses(args: tuple[str, ...], message: str) -> None:
    with pytest.raises(options.ConfigError, match=message):
        plan(*args)


def test_plan_from_a_config_file(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        '[coordinator]\nport = 0\n[[server]]\ntags = ["db"]\nworkers = 3\ncwd = "w"\n[[server]]\n'
    )
    first, second = plan("--config", str(config), "--workers", "2")
    assert (first.name, set(first.tags), first.workers) == ("server-1", {"db"}, 3)
    assert first.cwd == str(tmp_path / "w")
    assert (second.name, second.workers, second.cwd) == ("server-2", 2, None)
    with pytest.raises(options.ConfigError, match="--servers and --tags do not apply"):
        plan("--config", str(config), "--servers", "3")


# ---- LocalCluster ------------------------------------------------------------------------


def test_local_cluster_kill_and_add_servers(tmp_path: Path) -> None:
    cluster = LocalCluster(
        servers=2, tags=[["gpu"], []], heartbeat_timeout=1.0, cwd=[tmp_path / "one", None]
    )
    pids = {cluster.coordinator.pid} | {s.pid for s in cluster.servers}
    try:
        assert [s.name for s in cluster.servers] == ["server-1", "server-2"]
        assert os.readlink(f"/proc/{cluster.servers[0].pid}/cwd") == str(tmp_path / "one")
        with MembershipWatch(cluster.url, cluster.token) as watch:
            assert {m.name: set(m.tags) for m in watch.members()} == {
                "server-1": {"gpu"},
                "server-2": set(),
            }
            killed = cluster.kill_server("server-1")
            assert not pid_alive(killed.pid)
            wait_until(
                lambda: [m.name for m in watch.members()] == ["server-2"],
                what="the killed server dropped",
            )
            added = cluster.add_server("server-3", tags=["db"])
            pids.add(added.pid)
            (info,) = wait_until(
                lambda: [m for m in watch.members() if m.name == "server-3"],
                what="the added server in the watch",
            )
            assert (info.url, info.tags) == (added.url, frozenset({"db"}))
            with pytest.raises(ValueError, match="already"):
                cluster.add_server("server-2")
    finally:
        cluster.close()
    assert not [pid for pid in pids if pid_alive(pid)]
    assert cluster.exited() == []  # nothing died that it did not stop itself


# ---- sperse status, in-process -----------------------------------------------------------


def test_status_lists_servers(
    coordinator: CoordinatorThread, capsys: pytest.CaptureFixture[str]
) -> None:
    coordinator.join(member("db-1", "127.0.0.1:7001", tags=["db"], workers=2, resources={"mem": 8}))
    coordinator.heartbeat(member("db-1", "127.0.0.1:7001", objects=3, object_bytes=3 << 20))
    assert _status.main([coordinator.url, "--token", TOKEN]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == list(_status.COLUMNS)
    assert row.split()[:5] == ["db-1", "127.0.0.1:7001", "db", "mem=8", "2"]
    assert "3 (3.0 MiB)" in row


def test_status_errors_are_one_line_and_exit_1(
    coordinator: CoordinatorThread,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SPERSE_COORDINATOR", coordinator.url)
    monkeypatch.setenv("SPERSE_TOKEN", "wrong")
    assert _status.main([]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refused the token" in err
    port = coordinator.server.port
    coordinator.close()
    assert _status.main([f"sperse://127.0.0.1:{port}", "--timeout", "5"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no coordinator answered" in err


# ---- sperse coordinator, a real process --------------------------------------------------


def test_sperse_coordinator_prints_one_ready_line_and_stops_on_sigterm(
    start_child: StartChild,
) -> None:
    coordinator = start_child("sperse.cli", ["coordinator", "--heartbeat-timeout", "2"])
    url = coordinator.ready_url()
    assert re.fullmatch(r"sperse://127\.0\.0\.1:\d+", url)
    token = coordinator.stderr().split("the cluster token is\n", 1)[1].split()[0]
    with MembershipWatch(url, token) as watch:
        assert watch.members() == []
    coordinator.process.send_signal(signal.SIGTERM)
    assert coordinator.wait() == 0
    assert coordinator.process.stdout is not None
    assert coordinator.process.stdout.read() == b""  # nothing after the ready line


def test_sperse_coordinator_refuses_all_interfaces_without_tls() -> None:
    result = sperse("coordinator", "--host", "0.0.0.0", "--token", "t")
    assert result.returncode == 2
    assert "refusing to listen on '0.0.0.0' without TLS" in result.stderr
    assert "--insecure" in result.stderr
    assert result.stdout == ""


def test_the_python_blocks_of_the_cluster_doc_run() -> None:
    doc = Path(__file__).resolve().parents[2] / "docs" / "cluster.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)
    assert len(blocks) == 2
    outputs = []
    for block in blocks:
        done = subprocess.run(
            [sys.executable, "-c", block], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    assert outputs[1].splitlines() == [
        "['server-1', 'server-2']",
        "42 from server-1",
        "[0, 2, 4, 6, 8, 10, 12, 14]",
    ]
