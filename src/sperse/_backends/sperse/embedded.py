"""``EmbeddedServer``: a ``sperse server`` child process that one client owns.

Invariant: the child dies with its client. Its token goes on its stdin, which it keeps
reading; when the client process dies, stdin closes and the server stops by itself. ``stop``
ends it by its own pid and sweeps the shared memory files it left.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence

from sperse._serialize import shm as _shm
from sperse._tokens import new_token
from sperse._wire.urls import parse_url
from sperse.errors import ServerUnavailable

__all__ = ["EmbeddedServer"]


def _server_log_path(name: str) -> str | None:
    """Where an embedded server logs: ``SPERSE_SERVER_LOG`` (``-``: None, our stderr), else a
    file of its own under the user's state directory."""
    chosen = os.environ.get("SPERSE_SERVER_LOG", "")
    if chosen == "-":
        return None
    if chosen:
        return chosen
    state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    folder = os.path.join(state, "sperse", "logs")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return os.path.join(folder, f"server-{safe}-{os.getpid()}.log")


def _tail(path: str | None, lines: int = 20) -> str:
    """The last ``lines`` of the log at ``path``, to quote in an error ("" if none)."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as file:
            text = file.read()[-8192:].decode(errors="replace")
    except OSError:
        return ""
    last = text.strip().splitlines()[-lines:]
    return (":\n" + "\n".join(last)) if last else ""


class EmbeddedServer:
    """A ``sperse server`` child process on a random loopback port, owned by this client.

    The token goes to it on its stdin, never on a command line (where ``ps``
    shows it). It keeps reading stdin: when this process dies, stdin closes
    and the server stops by itself, so no orphan survives its client.

    Its log (and its workers' stray output) goes to ``log_path``, not to this process's
    terminal, where it would land before the exception it describes: by default
    ``$XDG_STATE_HOME/sperse/logs/server-NAME-PID.log`` (``~/.local/state/...``), removed
    at ``stop`` when empty. ``SPERSE_SERVER_LOG`` names another file, or ``-`` for this
    process's standard error.
    """

    def __init__(
        self,
        *,
        workers: int | None = None,
        name: str = "local",
        tags: Iterable[str] = (),
        resources: dict[str, float] | None = None,
        ready_timeout: float = 30.0,
        log_level: str = "warning",
        token: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        """``token``: the cluster's (default: a new random one). ``extra_args``: more
        ``sperse server`` options (``--join``, ...)."""
        self.token = token or new_token()
        args = [sys.executable, "-m", "sperse.server", "--host", "127.0.0.1", "--port", "0"]
        args += ["--token-stdin", "--print-local-address", "--name", name]
        args += ["--log-level", log_level]
        if workers:
            args += ["--workers", str(workers)]
        for tag in tags:
            args += ["--tag", tag]
        for key, value in (resources or {}).items():
            args += ["--resource", f"{key}={value}"]
        args += extra_args
        self.log_path = _server_log_path(name)
        log = None if self.log_path is None else open(self.log_path, "ab")  # noqa: SIM115
        try:
            self.process = subprocess.Popen(
                args,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,  # Ctrl-C at the prompt is ours, not the server's
            )
        finally:
            if log is not None:
                log.close()  # the child has its own descriptor
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(self.token.encode() + b"\n")
        self.process.stdin.flush()
        self.local_address = ""  # its same-host socket's name, which it prints first
        self.address = self._wait_ready(ready_timeout)

    def _wait_ready(self, timeout: float) -> str:
        """The server's address, from its ready line (after the line that names its
        same-host socket, if any)."""
        deadline = time.monotonic() + timeout
        read = b""
        while True:
            line, end, read = read.partition(b"\n")
            if end:  # a whole line
                text = line.decode().strip()
                if " local at " not in text:
                    break
                self.local_address = text.rsplit(" local at ", 1)[1]
                continue
            read = line + self._read_more(deadline)
        if " ready at " not in text:
            self.stop()
            raise ServerUnavailable(f"the embedded sperse server said {text!r} instead of ready")
        return parse_url(text.rsplit(" ready at ", 1)[1])

    def _read_more(self, deadline: float) -> bytes:
        """What the server printed next: an error if it exits or the deadline passes."""
        stdout = self.process.stdout
        assert stdout is not None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.process.poll() is not None:
                self.stop()
                where = "above" if self.log_path is None else f"in {self.log_path}"
                raise ServerUnavailable(
                    "the embedded sperse server did not start (exit code "
                    f"{self.process.returncode}); its log is {where}{_tail(self.log_path)}"
                )
            ready, _, _ = select.select([stdout], [], [], remaining)
            if ready:
                chunk = os.read(stdout.fileno(), 4096)
                if chunk:
                    return chunk

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """Close its stdin (it stops itself), then terminate, then kill: by its own pid. Then
        sweep the shared memory files it left (it sweeps its own, unless it was killed)."""
        with contextlib.suppress(Exception):
            assert self.process.stdin is not None
            self.process.stdin.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            try:
                self.process.wait(2)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        _shm.sweep(_shm.server_prefix(self.process.pid))
        if self.process.stdout is not None:
            self.process.stdout.close()
        if self.log_path is not None:
            with contextlib.suppress(OSError):
                if os.path.getsize(self.log_path) == 0:
                    os.unlink(self.log_path)
