"""docs/jobs.md runs as written: its shell blocks in order, then its Python block, in a fresh
directory holding the examples; each prints what the text around it says."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from job_helpers import ROOT

DOC = ROOT / "docs" / "jobs.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_jobs_doc_runs(tmp_path: Path) -> None:
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    shell = blocks("sh")
    assert len(shell) == 4

    def run(script: str) -> str:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    first = run(shell[0])
    assert first.startswith("100 units: 100 succeeded, 0 failed, 0 skipped")
    assert first.rstrip().endswith("42")

    second = run(shell[1])
    assert second.startswith("101 units: 1 succeeded, 1 failed, 99 skipped (already done)")
    assert "bad.txt: exited with code 2" in second and "exit code 1" in second
    (shown,) = blocks("text")[1:2]
    listed = (tmp_path / "sums" / "out" / "_failed.jsonl").read_text()
    assert json.loads(listed) == json.loads(shown)  # the doc shows the real line

    third = run(shell[2])
    assert "exit code 2" in third and not (tmp_path / "broken-out").exists()

    run(shell[3])
    assert (tmp_path / "words" / "00000002").read_text() == "1 2 10\n"

    (code,) = blocks("python")
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "bad.txt exit exited with code 2" in done.stdout
    assert done.stdout.rstrip().endswith("100 1 1")


def test_the_python_example_runs() -> None:
    done = subprocess.run(
        [sys.executable, "examples/jobs/api.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("latin1.txt failed: UnicodeDecodeError")
    assert lines[1].startswith("21 units: 20 succeeded, 1 failed")
    assert lines[2] == "doc07.txt: 1 7 35"
