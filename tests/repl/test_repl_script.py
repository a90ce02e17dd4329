"""``sperse run script.py`` as a user runs it: a real process with its embedded server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def sperse_run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    workers = [] if "--connect" in args else ["--workers", "2"]
    return subprocess.run(
        [sys.executable, "-m", "sperse.cli", "run", *workers, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=None if env is None else {**os.environ, **env},
    )


def test_tour_script() -> None:
    done = sperse_run("examples/tour_script.py")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "total: 499500" in lines
    assert "biggest: 361" in lines
    assert "biggest: 81" not in lines  # computed from n = 10, cancelled when n became 20
    assert any(line.startswith("[") and "rows ready" in line for line in lines), lines
    assert any("biggest ready" in line and "biggest = 361" in line for line in lines), lines
    assert done.stderr == ""


def test_remote_syntax_arguments_and_quiet(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(
        "import sys\n"
        "def slow(n):\n"
        "    import time\n"
        "    time.sleep(0.2)\n"
        "    return n\n"
        "n = int(sys.argv[1])\n"
        "x = remote slow(n)\n"
        "y = x * 10\n"
        "print('y is', y, 'from', __file__)\n"
        "remote:\n"
        "    import os\n"
        "    pid = os.getpid()\n"
        "print('elsewhere:', pid != __import__('os').getpid())\n"
    )
    done = sperse_run("-q", str(script), "4")
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == sorted([f"y is 40 from {script}", "elsewhere: True"])


def test_local_error_exits_non_zero_like_python(tmp_path: Path) -> None:
    script = tmp_path / "bad.py"
    script.write_text("a = 1\ndef f():\n    return 1 / 0\nb = f()\nprint('not reached')\n")
    done = sperse_run(str(script))
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == (
        "Traceback (most recent call last):\n"
        f'  File "{script}", line 4, in <module>\n'
        "    b = f()\n"
        "        ^^^\n"
        f'  File "{script}", line 3, in f\n'
        "    return 1 / 0\n"
        "           ~~^~~\n"
        "ZeroDivisionError: division by zero\n"
    )


def test_remote_error_exits_non_zero(tmp_path: Path) -> None:
    script = tmp_path / "bad_remote.py"
    script.write_text("x = remote 1 / 0\ny = x + 1\nprint('entered everything')\n")
    done = sperse_run(str(script))
    assert done.returncode == 1
    assert done.stdout == "entered everything\n"
    assert "x failed on local" in done.stderr
    assert "This happened remotely on local:" in done.stderr
    assert "ZeroDivisionError: division by zero" in done.stderr


def test_remote_traceback_names_the_script_its_line_and_text(tmp_path: Path) -> None:
    script = tmp_path / "fail.py"
    script.write_text("def inverse(x):\n    return 1 / x\n\ny = remote inverse(0)\n")
    done = sperse_run(str(script))
    assert done.returncode == 1
    assert f'File "{script}", line 2, in inverse\n    return 1 / x\n' in done.stderr, done.stderr


def test_server_logs_go_to_a_file_not_the_terminal(tmp_path: Path) -> None:
    """A worker killed under a task: the user sees the error once; the embedded server's
    warning about it is in its log file, not on the terminal before the error."""
    script = tmp_path / "dies.py"
    script.write_text("import os\nx = remote os._exit(3)\n")
    done = sperse_run(str(script), env={"XDG_STATE_HOME": str(tmp_path / "state")})
    assert done.returncode == 1
    assert "WorkerDied" in done.stderr
    assert "WARNING" not in done.stderr, done.stderr
    (log,) = (tmp_path / "state" / "sperse" / "logs").glob("server-local-*.log")
    assert "WARNING" in log.read_text()


def test_syntax_error_and_missing_file(tmp_path: Path) -> None:
    script = tmp_path / "typo.py"
    script.write_text("x = 1\ny = remote[gpu &] f(x)\n")
    done = sperse_run(str(script))
    assert done.returncode == 1
    assert f'File "{script}", line 2' in done.stderr
    assert "SyntaxError: invalid placement" in done.stderr
    done = sperse_run(str(tmp_path / "missing.py"))
    assert done.returncode == 2
    assert "cannot read" in done.stderr


def test_connect_to_a_running_server(tmp_path: Path) -> None:
    from sperse._backends.sperse import EmbeddedServer

    script = tmp_path / "on_db.py"
    script.write_text("x = remote[db] 6 * 7\nprint('x is', x)\n")
    server = EmbeddedServer(workers=1, name="box", tags=["db"])
    url = f"sperse://{server.address}"
    try:
        done = sperse_run("--connect", url, "--token", server.token, str(script))
        assert done.returncode == 0, done.stderr
        assert "x ready on box" in done.stdout and "x is 42" in done.stdout
        assert server.alive()  # leaving the server is not stopping it
        done = sperse_run("--connect", url, "--token", "wrong", str(script))
        assert done.returncode == 1
        assert done.stderr.startswith(f"sperse: cannot connect to {url}: ")
    finally:
        server.stop()
