"""The terminal REPL's latency, driven through a pseudo-terminal as a person would use it.

- prompt back: the statement ``x = remote slow(60)`` is typed, then Enter is sent; the time
  from writing Enter to the pty until the next prompt (``>>>`` on a new line) comes back,
  ``--submissions`` times (200). Each one redefines ``x``, so the previous task is
  cancelled and no result arrives to print meanwhile. Target: p50 ≤ 5 ms.
- start: from starting ``sperse`` (embedded server, 2 workers) to its first prompt, against
  ``ipython`` (``--no-banner``, no config) to its first ``In [1]:``, ``--starts`` times each
  (5), alternating; median and best. Target: ``sperse`` ≤ 1.5 s.

Every process started here is stopped by its pid.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import select
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = "import os, sys; os.login_tty(0); os.execv(sys.argv[1], sys.argv[1:])"
ESCAPE = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


class Pty:
    """A command in a pseudo-terminal, read raw."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 120, 0, 0))
        self.process = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, *argv],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            cwd=ROOT,
        )
        os.close(slave)
        self.master = master
        self.output = b""

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def read_until(self, pattern: re.Pattern[bytes], start: int, timeout: float = 60) -> int:
        """Read until ``pattern`` matches the escape-free output after offset ``start``."""
        deadline = time.monotonic() + timeout
        while True:
            if pattern.search(ESCAPE.sub(b"", self.output[start:])):
                return len(self.output)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {pattern.pattern!r} in {self.output[start:]!r}")
            ready, _, _ = select.select([self.master], [], [], remaining)
            if ready:
                self.output += os.read(self.master, 65536)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        os.close(self.master)


def environment(history: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(TERM="xterm", PROMPT_TOOLKIT_NO_CPR="1", SPERSE_HISTORY=str(history))
    return env


SPERSE_PROMPT = re.compile(rb"(^|\n)>>> ?")
IPYTHON_PROMPT = re.compile(rb"In \[1\]: ")


def sperse_argv() -> list[str]:
    return [sys.executable, "-m", "sperse.cli", "--workers", "2"]


def ipython_argv() -> list[str] | None:
    """IPython run by this environment's Python, else by the base Python it was made from
    (the system-wide install; run directly, not through a version-manager shim)."""
    base = Path(sys.base_prefix) / "bin" / "python3"
    for python in (sys.executable, str(base)):
        probe = subprocess.run([python, "-c", "import IPython"], capture_output=True, check=False)
        if probe.returncode == 0:
            return [python, "-m", "IPython"]
    found = shutil.which("ipython")
    return None if found is None else [found]


def prompt_back(submissions: int, history: Path) -> list[float]:
    term = Pty(sperse_argv(), environment(history))
    try:
        term.read_until(SPERSE_PROMPT, 0)
        mark = len(term.output)
        term.write(b"import time\rdef slow(n):\rtime.sleep(n)\rreturn n\r\r")
        mark = term.read_until(re.compile(rb"return n.*\n[^\n]*>>> ?$", re.S), mark)
        times = []
        line = b"x = remote slow(60)"
        back = re.compile(rb"\n[^\n]*>>> ?")
        for _ in range(submissions + 10):  # the first ten warm up
            term.write(line)
            mark = term.read_until(re.compile(re.escape(line)), mark)
            start = time.perf_counter()
            term.write(b"\r")
            mark = term.read_until(back, mark)
            times.append(time.perf_counter() - start)
        return times[10:]
    finally:
        term.close()


def start_time(argv: list[str], prompt: re.Pattern[bytes], history: Path) -> float:
    start = time.perf_counter()
    term = Pty(argv, environment(history))
    try:
        term.read_until(prompt, 0)
        return time.perf_counter() - start
    finally:
        term.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--submissions", type=int, default=200)
    parser.add_argument("--starts", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        history = Path(tmp) / "history"
        times = sorted(prompt_back(args.submissions, history))
        p50 = statistics.median(times) * 1000
        p90 = times[int(len(times) * 0.9)] * 1000
        verdict = "ok" if p50 <= 5 else "MISSED"
        print(f"prompt back after a remote statement ({len(times)} submissions):")
        print(f"  p50 {p50:.2f} ms, p90 {p90:.2f} ms, max {times[-1] * 1000:.2f} ms")
        print(f"  target p50 <= 5 ms: {verdict}")

        ipython = ipython_argv()
        ipython_argv_full = (
            None if ipython is None else [*ipython, "--no-banner", "--no-confirm-exit"]
        )
        sperse_times: list[float] = []
        ipython_times: list[float] = []
        ipython_env = {"IPYTHONDIR": str(Path(tmp) / "ipython")}
        for _ in range(args.starts):
            sperse_times.append(start_time(sperse_argv(), SPERSE_PROMPT, history))
            if ipython_argv_full is not None:
                os.environ.update(ipython_env)
                ipython_times.append(start_time(ipython_argv_full, IPYTHON_PROMPT, history))
        print(f"start to first prompt ({args.starts} starts each, median / best):")
        median, best = statistics.median(sperse_times), min(sperse_times)
        verdict = "ok" if median <= 1.5 else "MISSED"
        print(f"  sperse (embedded server, 2 workers): {median:.3f} s / {best:.3f} s")
        if ipython_times:
            assert ipython is not None
            print(
                f"  ipython ({' '.join(ipython)}): {statistics.median(ipython_times):.3f} s"
                f" / {min(ipython_times):.3f} s"
            )
        else:
            print("  ipython: not installed here")
        print(f"  target sperse <= 1.5 s: {verdict}")


if __name__ == "__main__":
    main()
