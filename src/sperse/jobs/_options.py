"""The options of ``sperse submit``: standard library only, so that ``sperse --help`` and the
other commands do not load the client to describe them."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEFAULT_MAX_MEMORY_MB",
    "DEFAULT_MAX_OUTPUT_MB",
    "DEFAULT_RETRIES",
    "SubmitRequest",
    "add_arguments",
    "request_from",
]

DEFAULT_RETRIES: Final = 3
DEFAULT_MAX_MEMORY_MB: Final = 1024
DEFAULT_MAX_OUTPUT_MB: Final = 1024


@dataclass(frozen=True, slots=True)
class SubmitRequest:
    input: str
    output: str
    wasm: str | None = None
    python: str | None = None
    on: str | None = None
    retries: int = DEFAULT_RETRIES
    timeout: float | None = None
    max_memory: float | None = DEFAULT_MAX_MEMORY_MB
    max_output: float = DEFAULT_MAX_OUTPUT_MB
    json: bool = False
    progress_interval: float = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``sperse submit`` to ``parser``."""
    program = parser.add_mutually_exclusive_group(required=True)
    program.add_argument(
        "--wasm", metavar="MODULE.wasm", help="a WebAssembly module run as a WASI command per unit"
    )
    program.add_argument(
        "--python",
        metavar="MODULE:FUNC",
        help="a function bytes -> bytes|str: pkg.module:func or path/to/file.py:func",
    )
    parser.add_argument(
        "--input",
        required=True,
        metavar="DIR",
        help="a directory: every file under it is a unit; - for one unit per line of stdin",
    )
    parser.add_argument(
        "--output",
        required=True,
        metavar="DIR",
        help="outputs go here under the inputs' names; units whose output exists are skipped",
    )
    parser.add_argument("--on", metavar="TAG-EXPR", help="run only on servers matching this")
    parser.add_argument(
        "--retries",
        type=int,
        default=DEFAULT_RETRIES,
        metavar="N",
        help=f"tries again of a unit whose worker or server died (default {DEFAULT_RETRIES})",
    )
    parser.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="time limit of each unit (default none)"
    )
    parser.add_argument(
        "--max-memory",
        type=float,
        default=DEFAULT_MAX_MEMORY_MB,
        metavar="MB",
        help=f"memory limit of each WebAssembly unit, in MiB (default {DEFAULT_MAX_MEMORY_MB})",
    )
    parser.add_argument(
        "--max-output",
        type=float,
        default=DEFAULT_MAX_OUTPUT_MB,
        metavar="MB",
        help="what a WebAssembly unit may write to stdout, in MiB: past it, the write fails "
        f"and so does the unit (default {DEFAULT_MAX_OUTPUT_MB})",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    parser.add_argument(
        "--progress-interval",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="when stderr is not a terminal: a progress line this often (default 5)",
    )


def request_from(args: argparse.Namespace) -> SubmitRequest:
    """The request of parsed ``sperse submit`` arguments."""
    get = vars(args).get
    return SubmitRequest(
        input=args.input,
        output=args.output,
        wasm=get("wasm"),
        python=get("python"),
        on=get("on"),
        retries=get("retries", DEFAULT_RETRIES),
        timeout=get("timeout"),
        max_memory=get("max_memory", DEFAULT_MAX_MEMORY_MB),
        max_output=get("max_output", DEFAULT_MAX_OUTPUT_MB),
        json=bool(get("json", False)),
        progress_interval=get("progress_interval", 5.0),
    )
