"""Functions of the Python-function job tests (shipped to workers by value)."""

from __future__ import annotations

import os
import sys


def behave(data: bytes) -> bytes | str | int:
    """Like the WAT module of the WebAssembly tests: the first word says what to do."""
    if data.startswith(b"raise"):
        print("about to fail", file=sys.stderr)
        raise ValueError(f"bad unit {data.decode()}")
    if data.startswith(b"loop"):
        while True:
            pass
    if data.startswith(b"int"):
        return 42
    if data.startswith(b"die"):
        os._exit(1)  # the worker process dies
    if data.startswith(b"text"):
        return data.decode().upper()
    return data.upper()


def stuck(data: bytes) -> bytes:
    """Ignores the time limit's signal (as code stuck in C would), then runs forever on
    ``stuck``; other units come back as they are."""
    if data == b"stuck":
        import signal

        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        while True:
            pass
    return data


def kill_server(data: bytes) -> bytes:
    """``kill`` kills the server running it (the worker's parent process) and waits to die
    with it; other units come back upper-cased."""
    if data == b"kill":
        import multiprocessing
        import signal
        import threading

        os.kill(multiprocessing.parent_process().pid, signal.SIGKILL)
        threading.Event().wait()  # the worker exits when it sees its server gone
    return data.upper()
