"""A real Jupyter kernel of this venv, driven through ``jupyter_client`` as a front end would.

Every iopub message is kept in :attr:`Kernel.messages`, in arrival order, so a test can
look for a message that came while it waited for another (an update that arrives while
the kernel is idle). Nothing here sleeps: every wait reads the channel with a deadline.
"""

from __future__ import annotations

import json
import os
import queue
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

Message = dict[str, Any]
KERNEL_NAME = "sperse-test"


def kernel_env(tmp: Path) -> dict[str, str]:
    """The environment of a kernel (or ``ipython``) started by a test: its files in ``tmp``."""
    env = dict(os.environ)
    env.update(
        IPYTHONDIR=str(tmp / "ipython"),
        JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
        JUPYTER_DATA_DIR=str(tmp / "data"),
        JUPYTER_PLATFORM_DIRS="1",
        PYDEVD_DISABLE_FILE_VALIDATION="1",
    )
    return env


def kernel_spec_manager(tmp: Path) -> KernelSpecManager:
    """A kernel spec that runs ``python -m ipykernel_launcher`` with this venv's python."""
    spec = tmp / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "sperse test", "language": "python"})
    )
    return KernelSpecManager(kernel_dirs=[str(tmp / "kernels")])


def over_ipc(km: KernelManager, tmp: Path) -> None:
    """Connect ``km``'s kernel through Unix sockets in ``tmp``, not TCP ports on loopback.

    A TCP port is picked free, released, then bound by the kernel: in between, another
    process (Ray, a server, another kernel) may take it, and the kernel dies at start-up
    ("Kernel died before replying to kernel_info", jupyter_client#154). A socket file in a
    directory of the test's own has no such window, and nothing listens on the network.
    """
    prefix = tmp / "ipc"
    # A socket's path has at most 107 bytes; the kernel adds "-<port>".
    assert len(str(prefix)) < 96, f"socket path too long for a Unix socket: {prefix}"
    km.transport = "ipc"
    km.ip = str(prefix)


@dataclass
class Execution:
    msg_id: str
    reply: Message
    outputs: list[Message] = field(default_factory=list)

    def text(self) -> str:
        """Everything the cell showed: streams, results, displays and errors, as text."""
        return "\n".join(output_text(m) for m in self.outputs)

    def displays(self) -> list[Message]:
        return [m for m in self.outputs if m["msg_type"] == "display_data"]


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def output_text(msg: Message) -> str:
    """The text of an output message, without terminal colours."""
    content = msg["content"]
    match msg["msg_type"]:
        case "stream":
            return str(content["text"])
        case "display_data" | "update_display_data" | "execute_result":
            return str(content["data"].get("text/plain", ""))
        case "error":
            return _ANSI.sub("", "\n".join(content["traceback"]))
    return ""


def display_id(msg: Message) -> str | None:
    transient = msg["content"].get("transient") or {}
    value = transient.get("display_id")
    return str(value) if value is not None else None


class Kernel:
    def __init__(self, km: KernelManager) -> None:
        self.km = km
        self.kc = km.client()
        self.messages: list[Message] = []

    def _read(self, timeout: float) -> Message | None:
        try:
            msg: Message = self.kc.get_iopub_msg(timeout=timeout)
        except queue.Empty:
            return None
        msg["msg_type"] = msg["header"]["msg_type"]
        self.messages.append(msg)
        return msg

    def wait_for(self, match: Callable[[Message], bool], timeout: float = 30) -> Message:
        """The first iopub message (already seen, or arriving within ``timeout``) that matches."""
        for msg in self.messages:
            if match(msg):
                return msg
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            new = self._read(remaining)
            if new is not None and match(new):
                return new
        raise AssertionError(
            f"no matching iopub message within {timeout} s; last: {self.messages[-5:]}"
        )

    def execute(self, code: str, timeout: float = 30, cell_id: str | None = None) -> Execution:
        """Run a cell; return when its reply and its last output (status idle) are in.
        ``cell_id``: the notebook cell's id, as Jupyter sends it (the same id again: the
        same cell, re-executed)."""
        if cell_id is None:
            msg_id = self.kc.execute(code)
        else:  # as JupyterLab sends it: the cell's id in the request's metadata
            content = {
                "code": code,
                "silent": False,
                "store_history": True,
                "user_expressions": {},
                "allow_stdin": False,
                "stop_on_error": True,
            }
            msg = self.kc.session.msg("execute_request", content, metadata={"cellId": cell_id})
            self.kc.shell_channel.send(msg)
            msg_id = msg["header"]["msg_id"]
        reply: Message = self.kc.get_shell_msg(timeout=timeout)
        assert reply["parent_header"]["msg_id"] == msg_id
        self.wait_for(
            lambda m: (
                m["msg_type"] == "status"
                and m["parent_header"].get("msg_id") == msg_id
                and m["content"]["execution_state"] == "idle"
            ),
            timeout,
        )
        outputs = [
            m
            for m in self.messages
            if m["parent_header"].get("msg_id") == msg_id
            and m["msg_type"] in ("stream", "display_data", "execute_result", "error")
        ]
        return Execution(msg_id, reply, outputs)


@contextmanager
def started_kernel(tmp: Path) -> Iterator[Kernel]:
    """A kernel on Unix sockets (:func:`over_ipc`); stopped by a shutdown request (then by its pid) at the end."""
    km = KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=kernel_spec_manager(tmp))
    km.connection_file = str(tmp / "connection.json")
    over_ipc(km, tmp)
    km.start_kernel(env=kernel_env(tmp), cwd=str(tmp))
    kernel = Kernel(km)
    try:
        kernel.kc.start_channels()
        kernel.kc.wait_for_ready(timeout=60)
        yield kernel
    finally:
        kernel.kc.stop_channels()
        km.shutdown_kernel(now=False)
