"""A Ray head in a helper process, for tests of other processes that join it (``--ray``).

The helper starts a local Ray (``ray.init``: 127.0.0.1 only, no dashboard), prints its
address as one JSON line, and waits for its stdin to close; then it shuts Ray down, which
stops the processes Ray started. ``RayHead.stop`` closes that stdin, waits, and checks by
pid (pidfds, so a reused pid is never signalled) that every process under the helper is
gone, killing any left.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Mapping

from sperse._backends.ray import NAME_LABEL

_HELPER = """
import json, logging, os, sys
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
import ray
config = json.loads(sys.argv[1])
ray.init(
    address="local",
    num_cpus=config["num_cpus"],
    resources=config["resources"],
    labels=config["labels"],
    include_dashboard=False,
    _node_ip_address="127.0.0.1",
    log_to_driver=False,
    logging_level=logging.ERROR,
)
nodes = [n["NodeManagerAddress"] for n in ray.nodes()]
address = ray.get_runtime_context().gcs_address
print(json.dumps({"address": address, "nodes": nodes}), flush=True)
sys.stdin.read()
ray.shutdown()
"""


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(FileNotFoundError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                out.extend(int(p) for p in f.read().split())
    return out


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in _children(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


class RayHead:
    """A local Ray head in a helper process; ``address`` is what ``ray.init`` joins."""

    def __init__(
        self,
        *,
        num_cpus: int = 2,
        resources: Mapping[str, float] | None = None,
        name: str = "head",
        timeout: float = 60.0,
    ) -> None:
        config = {
            "num_cpus": num_cpus,
            "resources": dict(resources or {}),
            "labels": {NAME_LABEL: name},
        }
        env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
        self.process = subprocess.Popen(
            [sys.executable, "-c", _HELPER, json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        self._pidfds: dict[int, int] = {}
        try:
            line = self._first_line(timeout)
            started = json.loads(line)
        except BaseException:
            self.stop()
            raise
        self.address: str = started["address"]
        self.nodes: list[str] = started["nodes"]
        self.track()

    def _first_line(self, timeout: float) -> str:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            raise AssertionError(f"the Ray head did not start within {timeout} s")
        line = self.process.stdout.readline()
        if not line:
            raise AssertionError(f"the Ray head exited with {self.process.wait(10)}")
        return line

    def track(self) -> list[int]:
        """Open pidfds on every process under the helper (Ray's, and the workers)."""
        pids = descendants(self.process.pid)
        for pid in pids:
            if pid not in self._pidfds:
                with contextlib.suppress(ProcessLookupError):
                    self._pidfds[pid] = os.pidfd_open(pid)
        return pids

    def stop(self, timeout: float = 30.0) -> None:
        """Shut the head down, then make sure every process it started is gone."""
        self.track()
        if self.process.poll() is None:
            with contextlib.suppress(OSError):
                assert self.process.stdin is not None
                self.process.stdin.close()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        deadline = time.monotonic() + timeout
        for fd in self._pidfds.values():
            left = max(0.0, deadline - time.monotonic())
            if not select.select([fd], [], [], left)[0]:
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                select.select([fd], [], [], 10)
            os.close(fd)
        self._pidfds.clear()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
