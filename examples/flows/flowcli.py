"""What the flow examples share: their command line, the cluster's lifetime, and output.

Every example takes ``--servers N`` (default 2: a local cluster of N servers, started here
and stopped at the end, on an error or Ctrl-C too) or ``--connect URL [--token-file F]`` (a
running cluster: ``sperse up`` prints its URL), and ``--json``: only the result, as JSON, on
stdout. Progress and errors go to stderr, so ``--json`` output can be piped as it is.

Exit codes: 0 done; 2 bad arguments (argparse's usage line and the reason); 1 the flow or
the cluster failed (the error's message on stderr); 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import sperse
from sperse._up import LocalCluster

if TYPE_CHECKING:  # numpy is imported where edges are read: every flow host imports the
    import numpy as np  # example's module (its functions), and numpy costs it ~40 ms

__all__ = [
    "BadInput",
    "ExampleError",
    "NotConverged",
    "existing_file",
    "main",
    "parse",
    "parser",
    "positive_int",
    "progress",
    "read_edges",
]

WAIT = 3600.0  # seconds a run may take before the example gives up on it


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not positive: give 1 or more")
    return value


def existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no file {text!r}")
    return path


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every example has."""
    p = argparse.ArgumentParser(description=description)
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--servers",
        type=positive_int,
        default=None,  # 2, set by parse(): argparse takes a given 2 for its default
        metavar="N",
        help="start a local cluster of N servers for the run (default 2)",
    )
    where.add_argument(
        "--connect", metavar="URL", help="run on a running cluster (sperse://HOST:PORT)"
    )
    p.add_argument(
        "--token-file", metavar="F", help="the cluster's token, with --connect (or SPERSE_TOKEN)"
    )
    p.add_argument("--json", action="store_true", help="print only the result, as JSON")
    return p


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so that a local cluster is stopped either way."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def cluster(args: argparse.Namespace) -> Iterator[sperse.Cluster]:
    """The cluster the example runs on: connected to ``--connect``, or a ``LocalCluster``
    of ``--servers`` servers (their stderr is ours), stopped when this ends."""
    with _sigterm_as_interrupt(), contextlib.ExitStack() as stack:
        if args.connect:
            client = sperse.connect(args.connect, token_file=args.token_file)
        else:
            started = time.perf_counter()
            progress(f"starting a local cluster of {args.servers} servers")
            up = stack.enter_context(LocalCluster(args.servers))
            progress(f"cluster ready at {up.url} in {time.perf_counter() - started:.1f} s")
            client = sperse.connect(up.url, token=up.token)
        stack.callback(client.close)
        yield client


def main(
    args: argparse.Namespace,
    compute: Callable[[sperse.Cluster], Any],
    show: Callable[[Any], str],
) -> int:
    """Run ``compute`` on the cluster ``args`` ask for; print its result as JSON
    (``--json``) or as ``show`` makes it. Returns the exit code."""
    prog = Path(sys.argv[0]).name
    try:
        with cluster(args) as client:
            started = time.perf_counter()
            result = compute(client)
            progress(f"done in {time.perf_counter() - started:.2f} s")
    except KeyboardInterrupt:
        progress(f"{prog}: interrupted (the local cluster, if any, is stopped)")
        return 130
    except (sperse.SperseError, OSError, TimeoutError, ExampleError) as exc:
        progress(f"{prog}: error: {type(exc).__name__}: {exc}")
        return 1
    if args.json:
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(show(result))
    sys.stdout.flush()
    return 0


def parse(p: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """``p``'s arguments, with the shared checks: ``--token-file`` only with ``--connect``,
    and it must exist."""
    args = p.parse_args(argv)
    if args.servers is None:
        args.servers = 2
    if args.token_file is not None:
        if not args.connect:
            p.error("--token-file goes with --connect URL (a local cluster makes its own token)")
        if not os.path.isfile(args.token_file):
            p.error(f"--token-file: no file {args.token_file!r}")
    return args


class ExampleError(Exception):
    """A run that gives no result, said in its message (exit code 1)."""


class BadInput(ExampleError, ValueError):
    """An input file that does not say what the example expects: the message names the
    file and line."""


class NotConverged(ExampleError):
    """An iteration that had not converged when it hit its bound on rounds."""


def read_edges(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The edges of ``path``, one ``src dst`` pair of ints per line (blank lines skipped):
    ``(ids, src, dst)``, where ``ids`` are the node ids in increasing order and ``src``,
    ``dst`` index into it. Every pair is kept as it comes (duplicates too)."""
    import numpy as np

    text = path.read_text(encoding="utf-8")
    tokens = text.split()
    try:
        pairs = np.array(tokens, dtype=np.int64)
    except (ValueError, OverflowError):
        pairs = None
    if pairs is None or len(tokens) % 2:
        for number, line in enumerate(text.splitlines(), 1):
            fields = line.split()
            if fields and (len(fields) != 2 or not all(_is_int(f) for f in fields)):
                raise BadInput(f"{path}, line {number}: {line!r} is not two node ids (ints)")
        raise BadInput(f"{path}: node ids must be ints that fit in 64 bits")
    pairs = pairs.reshape(-1, 2)
    ids, index = np.unique(pairs, return_inverse=True)
    index = index.reshape(-1, 2)
    return ids, index[:, 0].copy(), index[:, 1].copy()


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True
