"""The examples and the demo run as a new user would run them, and print what they promise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_tour() -> None:
    out = run("examples/tour.py")
    assert "[local] summing 1000 rows" in out
    assert "total: 499500" in out
    assert "doubled: 999000" in out
    assert "pending: ['biggest', 'squares']" in out
    assert "biggest: 81" in out
    assert "biggest after n = 20: 361" in out


def test_demo() -> None:
    out = run("-m", "sperse.demo")
    assert "pending now: {'x': " in out
    assert "x = 16" in out and "y = 17" in out
    assert "x = 100" in out and "y = 101" in out
    assert "upstream error in x" in out
    assert "y = 4" in out
    assert "sperse.gather(...) -> [0, 1, 4, 9, 16]" in out


def test_cli_demo_and_version() -> None:
    assert "sperse 0.1.0" in run("-m", "sperse.cli", "--version")
    assert "x = 16" in run("-m", "sperse.cli", "demo")


def test_sperse_run_the_tour() -> None:
    out = run("-m", "sperse.cli", "run", "examples/tour.py")
    assert "total: 499500" in out
    assert "biggest after n = 20: 361" in out
