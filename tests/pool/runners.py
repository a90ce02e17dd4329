"""Runners for the pool tests, imported by the workers (so: standard library only).

``command`` reads the payload as ``b"verb"`` or ``b"verb:argument"``; the verbs are the test
scenarios, each in its own function below.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from pathlib import Path

_TICK = 0.01
_WAIT_CAP = 20.0  # a runner that waits for the test gives up after this (a failed test)


def echo(payload: bytes) -> bytes:
    return payload


def text(payload: bytes) -> str:
    """A runner with a bug: it returns str, not bytes."""
    return payload.decode()


def pid(payload: bytes) -> bytes:
    return str(os.getpid()).encode()


def sleep(seconds: str) -> bytes:
    """Short sleeps in a loop (every tick is a chance for the interrupt to land), after a line
    that tells the test the task really runs."""
    print("sleeping", seconds)
    end = time.monotonic() + float(seconds)
    while time.monotonic() < end:
        time.sleep(_TICK)
    return b"slept"


def wait_for_file(path: str) -> bytes:
    """Print a line, then wait until the test creates ``path``: proves output is live."""
    print("waiting for", path)
    print("on stderr", file=sys.stderr)
    end = time.monotonic() + _WAIT_CAP
    while not Path(path).exists():
        if time.monotonic() > end:
            return b"gave up"
        time.sleep(_TICK)
    print("seen")
    return b"seen"


def lines(count: str) -> bytes:
    for i in range(int(count)):
        print(f"line {i}")
    sys.stdout.write("no newline at the end")
    return b"printed"


def exit_hard(code: str) -> bytes:
    os._exit(int(code))


def kill_self(_: str) -> bytes:
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")


def stubborn(_: str) -> bytes:
    """Swallows every interrupt: only SIGKILL stops it. Says so once it runs."""
    announced = False
    end = time.monotonic() + _WAIT_CAP
    while time.monotonic() < end:
        with contextlib.suppress(BaseException):
            if not announced:
                print("stubborn")
                announced = True
            time.sleep(_WAIT_CAP)
    return b"outlived the test"


def boom(_: str) -> bytes:
    raise RuntimeError("runner bug")


_barriers: dict[str, threading.Barrier] = {}
_barriers_lock = threading.Lock()


def meet(argument: str) -> bytes:
    """``parties:tag``: print the tag, wait until ``parties`` tasks of this worker have come
    (only tasks that run at once can), print again. Proves concurrency and output tagging."""
    parties, _, tag = argument.partition(":")
    with _barriers_lock:
        barrier = _barriers.setdefault(parties, threading.Barrier(int(parties)))
    print(f"{tag} arrived")
    barrier.wait(_WAIT_CAP)
    print(f"{tag} leaves")
    return tag.encode()


def command(payload: bytes) -> bytes:
    verb, _, argument = payload.decode().partition(":")
    match verb:
        case "echo":
            return argument.encode()
        case "pid":
            return pid(payload)
        case "name":  # of the worker's process, as multiprocessing knows it
            return multiprocessing.current_process().name.encode()
        case "where":  # what a worker starts with: its variable ARGUMENT, cwd, parent
            parent = multiprocessing.parent_process()
            seen = [os.environ.get(argument, "-"), os.getcwd(), str(parent and parent.pid)]
            return "\n".join(seen).encode()
        case "sleep":
            return sleep(argument)
        case "wait_for_file":
            return wait_for_file(argument)
        case "lines":
            return lines(argument)
        case "exit":
            return exit_hard(argument)
        case "kill_self":
            return kill_self(argument)
        case "stubborn":
            return stubborn(argument)
        case "boom":
            return boom(argument)
        case "meet":
            return meet(argument)
    raise ValueError(f"unknown test command {verb!r}")
