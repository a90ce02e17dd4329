"""The Python block of docs/ray.md runs as written, in a fresh process that starts its own
local Ray (and stops it on ``cluster.close()``: checked by its processes being gone)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]

CHECKS = """
import os, select
import ray


def descendants(pid):
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in os.listdir(f"/proc/{parent}/task"):
            try:
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    children = [int(p) for p in f.read().split()]
            except OSError:
                continue
            found += children
            todo += children
    return found


assert ray.is_initialized()
assert ray.nodes()[0]["NodeManagerAddress"] == "127.0.0.1"
started = []
for pid in descendants(os.getpid()):  # Ray's processes, started by connect()
    try:
        started.append(os.pidfd_open(pid))
    except ProcessLookupError:
        pass  # (a short-lived one, gone already)
assert started
cluster.close()
assert not ray.is_initialized()
for fd in started:  # each must exit: a pidfd turns readable when its process has
    assert select.select([fd], [], [], 30)[0], "close() left one of Ray's processes running"
"""


def test_ray_doc_block_runs() -> None:
    (block,) = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "ray.md").read_text(), re.S)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a Ray of its own
    done = subprocess.run(
        [sys.executable, "-c", block + CHECKS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "['db'] 2"
    assert re.fullmatch(r"\[[0-9a-f]{8}\] loading 5 rows", lines[1]), lines
    assert lines[2] == "[0, 1, 2, 3, 4]"
