"""Test helpers: a coordinator on a background loop, child processes stopped by their pid, and
``wait_until`` (a condition polled every 50 ms up to a deadline: nothing sleeps to wait).
"""

from __future__ import annotations

import asyncio
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc

from sperse._coordinator.service import CoordinatorConfig, CoordinatorServer
from sperse._wire import pb
from sperse._wire.sperse_pb2_grpc import CoordinatorStub

DEADLINE = 20.0
TOKEN = "cluster-token-0123456789"
T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = DEADLINE, what: str = "") -> T:
    """Poll ``predicate`` every 50 ms until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(0.05)  # the poll period of this helper, not a wait for an event


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def children_of(pid: int) -> set[int]:
    """The child processes of ``pid`` (Linux: /proc)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.update(int(p) for p in (task / "children").read_text().split())
    return found


def member(name: str, address: str = "127.0.0.1:1001", **fields: Any) -> pb.Member:
    return pb.Member(name=name, address=address, **fields)


class CoordinatorThread:
    """A ``CoordinatorServer`` on a loop of its own thread; ``close()`` stops it."""

    def __init__(self, **config: Any) -> None:
        config.setdefault("token", TOKEN)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-coordinator")
        self._thread.start()
        self.server = CoordinatorServer(CoordinatorConfig(**config))
        try:
            self.call(self.server.start())
        except BaseException:
            self._stop_loop()
            raise
        self.channel = grpc.insecure_channel(self.address)
        self.stub = CoordinatorStub(self.channel)

    @property
    def address(self) -> str:
        return self.server.address

    @property
    def url(self) -> str:
        return f"sperse://{self.address}"

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = DEADLINE) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def names(self) -> list[str]:
        async def snapshot() -> list[str]:
            return [m.name for m in self.server.members().members]

        return self.call(snapshot())

    def join(self, m: pb.Member, token: str = TOKEN) -> pb.JoinReply:
        return self.stub.Join(pb.JoinRequest(token=token, member=m), timeout=DEADLINE)

    def heartbeat(self, m: pb.Member, token: str = TOKEN) -> pb.HeartbeatReply:
        return self.stub.Heartbeat(pb.HeartbeatRequest(token=token, member=m), timeout=DEADLINE)

    def leave(self, name: str, token: str = TOKEN) -> pb.LeaveReply:
        return self.stub.Leave(pb.LeaveRequest(token=token, name=name), timeout=DEADLINE)

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.channel.close()
        try:
            self.call(self.server.stop(0.5))
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class Child:
    """A ``python -m MODULE ARGS`` child process; ``stop()`` ends it by its pid, whatever
    its state (a stopped one is continued first)."""

    READY = re.compile(r" ready at (sperse://\S+)$")

    def __init__(
        self,
        module: str,
        args: Sequence[str],
        stderr: Path,
        *,
        token: str | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.stderr_path = stderr
        self._stderr = stderr.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=cwd,
        )
        if token is not None:
            assert self.process.stdin is not None
            self.process.stdin.write(token.encode() + b"\n")
            self.process.stdin.flush()
        self._out = b""

    @property
    def pid(self) -> int:
        return self.process.pid

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def read_lines(self, count: int, timeout: float = DEADLINE) -> list[str]:
        """The first ``count`` lines of its stdout (waiting for them)."""
        stdout = self.process.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        while self._out.count(b"\n") < count:
            left = deadline - time.monotonic()
            assert left > 0, f"no {count} lines on stdout in time; stderr:\n{self.stderr()}"
            readable, _, _ = select.select([stdout], [], [], left)
            if readable:
                chunk = os.read(stdout.fileno(), 4096)
                assert chunk, f"stdout closed; stderr:\n{self.stderr()}"
                self._out += chunk
        return self._out.decode().splitlines()[:count]

    def ready_url(self, timeout: float = DEADLINE) -> str:
        (line,) = self.read_lines(1, timeout)
        match = self.READY.search(line)
        assert match, f"not a ready line: {line!r}; stderr:\n{self.stderr()}"
        return match.group(1)

    def wait(self, timeout: float = DEADLINE) -> int:
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(DEADLINE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()
        self._stderr.close()


StartChild = Callable[..., Child]
