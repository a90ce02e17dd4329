"""``sperse submit`` as a user runs it: exit codes, the summary, resuming, stdin, and a client
killed in the middle of a job."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from job_helpers import ROOT, SUMMER, leftovers, outputs, sums

PROGRESS = re.compile(rb": (\d+)/(\d+|\?) done")


def submit(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sperse.cli", "submit", *args],
        cwd=ROOT,
        input=None if stdin is None else stdin.decode(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_job_then_the_same_command_again(
    make_inputs: Callable[..., Path], tmp_path: Path
) -> None:
    inputs, out = make_inputs(sums(50)), tmp_path / "out"
    args = ("--wasm", str(SUMMER), "--input", str(inputs), "--output", str(out), "--workers", "1")
    first = submit(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("50 units: 50 succeeded, 0 failed, 0 skipped")
    assert "50/50 done" in first.stderr  # the last progress line (stderr is no terminal)
    assert outputs(out) == {f"{i}.txt": f"{3 * i}\n".encode() for i in range(50)}
    again = submit(*args)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("50 units: 0 succeeded, 0 failed, 50 skipped")


def test_failed_units_make_exit_code_1_and_are_listed(
    make_inputs: Callable[..., Path], tmp_path: Path
) -> None:
    inputs = make_inputs(sums(5) | {"bad.txt": b"one plus two"})
    out = tmp_path / "out"
    done = submit(
        "--wasm", str(SUMMER), "--input", str(inputs), "--output", str(out), "--local", "--json"
    )
    assert done.returncode == 1, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["ok"], summary["succeeded"], summary["failed"]) == (False, 5, 1)
    (failure,) = summary["failures"]
    assert failure["unit"] == "bad.txt" and failure["kind"] == "exit"
    assert failure["detail"] == 'summer: expected "A + B" on stdin\n'
    assert summary["failed_list"] == str(out / "_failed.jsonl")
    listed = json.loads((out / "_failed.jsonl").read_text())
    assert listed["unit"] == "bad.txt" and listed["error"] == "exited with code 2"


def test_an_invalid_module_is_exit_code_2_before_anything_runs(
    make_inputs: Callable[..., Path], tmp_path: Path
) -> None:
    module = tmp_path / "broken.wasm"
    module.write_bytes(b"\0asm\x01\0\0\0\x01\x05")  # a section cut short
    out = tmp_path / "out"
    done = submit(
        "--wasm", str(module), "--input", str(make_inputs(sums(3))), "--output", str(out), "--local"
    )
    assert done.returncode == 2
    assert "broken.wasm was refused: not a valid WebAssembly module" in done.stderr
    assert "unexpected end" in done.stderr  # wasmtime's own reason
    assert not out.exists()


def test_units_from_stdin(tmp_path: Path) -> None:
    args = ["--wasm", str(SUMMER), "--input", "-", "--output", str(tmp_path), "--local"]
    done = submit(*args, stdin=b"1 + 2\n30 + 40\n")
    assert done.returncode == 0, done.stderr
    assert outputs(tmp_path) == {"00000001": b"3\n", "00000002": b"70\n"}


def test_a_python_function_by_file(make_inputs: Callable[..., Path], tmp_path: Path) -> None:
    function = f"{Path(__file__).with_name('job_units.py')}:behave"
    inputs = make_inputs({"x": b"hello", "y": b"raise it"})
    done = submit(
        "--python", function, "--input", str(inputs), "--output", str(tmp_path / "o"), "--local"
    )
    assert done.returncode == 1
    assert "y: ValueError: bad unit raise it" in done.stdout
    assert (tmp_path / "o" / "x").read_bytes() == b"HELLO"


def test_a_killed_client_loses_nothing_and_the_rerun_finishes(
    behave_wasm: bytes, make_inputs: Callable[..., Path], tmp_path: Path
) -> None:
    module = tmp_path / "behave.wasm"
    module.write_bytes(behave_wasm)
    inputs = {f"u{i:03d}": f"s {i}".encode() for i in range(300)}
    source, out = make_inputs(inputs), tmp_path / "out"
    args = ["--wasm", str(module), "--input", str(source), "--output", str(out)]
    command = [sys.executable, "-m", "sperse.cli", "submit", *args, "--local"]
    process = subprocess.Popen(
        [*command, "--workers", "1", "--progress-interval", "0.05"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        for line in process.stderr:  # progress lines: wait until some units are done
            match = PROGRESS.search(line)
            if match and int(match.group(1)) >= 20:
                break
        else:
            raise AssertionError("the job ended before it could be killed")
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(30)
        if process.stderr is not None:
            process.stderr.close()
    written = outputs(out)
    assert 20 <= len(written) < 300
    assert all(inputs[name] == data for name, data in written.items())  # none truncated

    rerun = submit(*args, "--local", "--workers", "1")
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(written)} skipped" in rerun.stdout
    assert outputs(out) == inputs and leftovers(out) == []
