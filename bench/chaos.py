"""Chaos: a 3-server cluster runs a mixed workload while its parts are killed at random.

A coordinator and three servers (real processes, on loopback), a client in this process
and a second client in a process of its own. For ``--seconds``, the clients run tasks,
``sperse.map``, calls of remote objects and a batch job (``sperse submit``); meanwhile,
every 1-4 s (seeded: ``--seed``), one of these is killed with SIGKILL and started again on
the same address: a worker of a server, a server, the coordinator, the second client.

At the end, every result reported must be correct (an error is allowed when it says what
was lost: ``ServerLost``, ``WorkerDied``, ``ObjectLost``...), nothing may still be pending
(each wait has a deadline), and once everything is stopped no process it started, no
``/dev/shm`` file of its servers and no Unix socket of theirs may be left.

Run: ``.venv/bin/python bench/chaos.py [--seconds 60] [--seed 1] [--json]``. Prints the
counts (kills by kind, tasks run, results checked, wrong, lost, left over); exits 1 when
anything is wrong, lost or left over. ``tests/reliability/test_chaos.py`` runs it briefly;
``make soak`` at length.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

import sperse
from sperse.errors import (
    ClientGone,
    NoMatchingServer,
    ObjectLost,
    ServerLost,
    TaskCancelled,
    WorkerDied,
)

PY = sys.executable
SPERSE = [PY, "-c", "import sys; from sperse.cli import main; sys.exit(main())"]
READY = 60.0  # seconds for a process to say it is ready
SETTLE = 180.0  # seconds for every pending result after the chaos ends
ALLOWED = (ServerLost, WorkerDied, ObjectLost, TaskCancelled, NoMatchingServer, ClientGone)


def square(x: int) -> int:
    return x * x


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def add(self, k: int) -> int:
        self.n += k
        return self.n


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A process started from a command line, restartable on the same address."""

    def __init__(self, name: str, argv: list[str], ready: str, log: Path) -> None:
        self.name, self.argv, self.ready, self.log = name, argv, ready, log
        self.popen: subprocess.Popen[str] | None = None
        self.pids: set[int] = set()  # every pid it ever had, and its children's

    def start(self) -> None:
        with self.log.open("a") as log:
            popen = subprocess.Popen(
                self.argv, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True
            )
        self.popen = popen
        self.pids.add(popen.pid)
        assert popen.stdout is not None
        deadline = time.monotonic() + READY
        while time.monotonic() < deadline:
            line = popen.stdout.readline()
            if not line:
                raise RuntimeError(f"{self.name} ended before it was ready: see {self.log}")
            if self.ready in line:
                threading.Thread(target=_drain, args=(popen.stdout,), daemon=True).start()
                return
        raise RuntimeError(f"{self.name} was not ready within {READY:g} s")

    def children(self) -> list[psutil.Process]:
        if self.popen is None:
            return []
        try:
            found = psutil.Process(self.popen.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        self.pids.update(p.pid for p in found)
        return found

    def kill(self) -> None:
        self.children()
        if self.popen is not None:
            self.popen.kill()
            self.popen.wait(30)

    def stop(self) -> None:
        self.children()
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(30)


def _drain(stream: Any) -> None:
    for _ in stream:
        pass


CLIENT = """
import sys, sperse
c = sperse.connect(sys.argv[1], token_file=sys.argv[2])
print("client ready", flush=True)
i = 0
while True:
    i += 1
    try:
        assert sperse.remote(pow)(i, 2).result(timeout=120) == i * i
    except (sperse.errors.ServerLost, sperse.errors.WorkerDied, sperse.errors.NoMatchingServer):
        pass
"""


class Chaos:
    def __init__(self, seconds: float, seed: int, workdir: Path) -> None:
        self.seconds = seconds
        self.rng = random.Random(seed)
        self.dir = workdir
        self.token_file = workdir / "token"
        self.token_file.write_text("chaos-token-" + os.urandom(8).hex())
        self.token_file.chmod(0o600)
        self.kills: collections.Counter[str] = collections.Counter()
        self.counts: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.wrong: list[str] = []
        port = free_port()
        self.url = f"sperse://127.0.0.1:{port}"
        common = ["--token-file", str(self.token_file), "--log-level", "warning"]
        self.coordinator = Proc(
            "coordinator",
            [*SPERSE, "coordinator", "--port", str(port), "--heartbeat-timeout", "3", *common],
            "ready at",
            workdir / "coordinator.log",
        )
        self.servers = [
            Proc(
                f"s{i}",
                [
                    *SPERSE,
                    *("server", "--port", str(free_port()), "--name", f"s{i}", "--workers", "2"),
                    *("--join", f"127.0.0.1:{port}", "--session-grace", "10", *common),
                ],
                "ready at",
                workdir / f"s{i}.log",
            )
            for i in range(3)
        ]
        client_py = workdir / "client.py"
        client_py.write_text(CLIENT)
        self.client = Proc(
            "client",
            [PY, str(client_py), self.url, str(self.token_file)],
            "client ready",
            workdir / "client.log",
        )

    # ---- the workload ----------------------------------------------------------------------

    def check(self, what: str, run: Callable[[], Any], expected: Any) -> None:
        self.counts[what] += 1
        try:
            value = run()
        except ALLOWED as exc:
            self.errors[type(exc).__name__] += 1
            return
        except TimeoutError:
            self.counts["lost"] += 1
            self.wrong.append(f"{what}: still pending after {SETTLE:g} s")
            return
        except Exception as exc:  # an error that does not say what was lost is wrong
            self.wrong.append(f"{what}: {type(exc).__name__}: {exc}")
            return
        if value != expected:
            self.wrong.append(f"{what}: {value!r} != {expected!r}")
        else:
            self.counts["correct"] += 1

    def tasks(self, stop: threading.Event) -> None:
        remote_square = sperse.remote(square)
        base = 0
        while not stop.is_set():
            pendings = [(i, remote_square(i)) for i in range(base, base + 20)]
            base += 20
            for i, p in pendings:
                self.check("task", lambda p=p: p.result(timeout=SETTLE), i * i)

    def maps(self, stop: threading.Event) -> None:
        while not stop.is_set():
            n = self.rng.randrange(50, 300)
            self.check(
                "map",
                lambda n=n: sperse.map(square, range(n)).result(timeout=SETTLE),
                [i * i for i in range(n)],
            )

    def objects(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                counter = sperse.remote(Counter)()
            except ALLOWED as exc:
                self.errors[type(exc).__name__] += 1
                continue
            for total in range(1, 51):
                if stop.is_set():
                    break
                self.counts["object call"] += 1
                try:
                    got = counter.add(1).result(timeout=SETTLE)
                except ALLOWED as exc:  # the object went with its server: a new one
                    self.errors[type(exc).__name__] += 1
                    break
                except Exception as exc:
                    self.wrong.append(f"object call: {type(exc).__name__}: {exc}")
                    break
                if got != total:
                    self.wrong.append(f"object call: {got} != {total}")
                    break
                self.counts["correct"] += 1

    def jobs(self, stop: threading.Event) -> None:
        unit = self.dir / "unit.py"
        unit.write_text("def run(data):\n    return str(int(data) ** 2)\n")
        round_ = 0
        while not stop.is_set():
            round_ += 1
            inputs, outputs = self.dir / f"in{round_}", self.dir / f"out{round_}"
            inputs.mkdir()
            for i in range(40):
                (inputs / f"u{i}").write_text(str(i))
            argv = [*SPERSE, "submit", "--python", f"{unit}:run", "--input"]
            argv += [str(inputs), "--output", str(outputs), "--connect", self.url]
            argv += ["--token-file", str(self.token_file), "--json"]
            self.counts["job"] += 1
            done = subprocess.run(argv, capture_output=True, text=True, timeout=SETTLE + 60)
            down = ("nothing listens", "no coordinator answered")  # refused; reset or gone
            if done.returncode == 2 and any(said in done.stderr for said in down):
                self.errors["job could not start"] += 1  # the coordinator was down: said so
                continue
            if done.returncode not in (0, 1):
                self.wrong.append(f"job: exit {done.returncode}: {done.stderr[-300:]}")
                continue
            for i in range(40):
                out = outputs / f"u{i}"
                self.counts["job unit"] += 1
                if out.exists():
                    if out.read_text() != str(i * i):
                        self.wrong.append(f"job unit u{i}: {out.read_text()!r}")
                    else:
                        self.counts["correct"] += 1
                elif f'"u{i}"' not in (outputs / "_failed.jsonl").read_text():
                    self.wrong.append(f"job unit u{i}: neither an output nor a failure")
                else:
                    self.errors["job unit failed"] += 1

    # ---- the chaos ------------------------------------------------------------------------

    def kill_one(self) -> None:
        kind = self.rng.choice(["worker", "worker", "server", "coordinator", "client"])
        if kind == "worker":
            server = self.rng.choice(self.servers)
            workers = server.children()
            if not workers:
                return
            try:
                self.rng.choice(workers).kill()
            except psutil.NoSuchProcess:
                return
        elif kind == "server":
            server = self.rng.choice(self.servers)
            server.kill()
            server.start()
        elif kind == "coordinator":
            self.coordinator.kill()
            self.coordinator.start()
        else:
            self.client.kill()
            self.client.start()
        self.kills[kind] += 1

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        self.coordinator.start()
        for server in self.servers:
            server.start()
        self.client.start()
        cluster = sperse.connect(self.url, token_file=str(self.token_file))
        stop = threading.Event()
        loads = [self.tasks, self.maps, self.objects, self.jobs]
        threads = [threading.Thread(target=f, args=(stop,), name=f.__name__) for f in loads]
        try:
            deadline = time.monotonic() + READY
            while len(cluster.backend.servers()) < 3:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"3 servers did not join within {READY:g} s")
                time.sleep(0.05)
            for thread in threads:
                thread.start()
            end = time.monotonic() + self.seconds
            while time.monotonic() < end:
                time.sleep(self.rng.uniform(1.0, 4.0))  # the chaos's own pace, not a wait
                self.kill_one()
        finally:
            stop.set()
            for thread in threads:
                thread.join(SETTLE + 120)
            hung = [t.name for t in threads if t.is_alive()]
            cluster.close()
            for proc in [self.client, *self.servers, self.coordinator]:
                proc.stop()
        left = self.left_over()
        return {
            "minutes": round((time.monotonic() - started) / 60, 2),
            "kills": dict(self.kills),
            "checked": dict(self.counts),
            "errors reported": dict(self.errors),
            "wrong": self.wrong[:20],
            "lost": self.counts["lost"] + len(hung),
            "left over": left,
        }

    def left_over(self) -> list[str]:
        """Processes, /dev/shm files and sockets of ours still there (after a grace for
        processes that are ending)."""
        pids = set().union(*(p.pids for p in [self.client, *self.servers, self.coordinator]))
        deadline = time.monotonic() + 30
        alive = sorted(pids)
        while alive and time.monotonic() < deadline:
            alive = [pid for pid in alive if psutil.pid_exists(pid) and not _zombie(pid)]
            if alive:
                time.sleep(0.1)
        left = [f"process {pid}" for pid in alive]
        prefixes = tuple(f"sperse-{pid}-" for pid in pids)
        for name in os.listdir("/dev/shm"):
            if name.startswith(prefixes):
                left.append(f"/dev/shm/{name}")
        with open("/proc/net/unix") as table:
            for line in table:
                if any(f"sperse-{pid}" in line for pid in pids):
                    left.append(f"socket {line.split()[-1]}")
        return left


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the counts as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sperse-chaos-") as tmp:
        report = Chaos(args.seconds, args.seed, Path(tmp)).run()
        if report["wrong"] or report["lost"] or report["left over"]:
            for log in sorted(Path(tmp).glob("*.log")):
                tail = log.read_text()[-2000:]
                print(f"--- {log.name}\n{tail}", file=sys.stderr)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key:>16}: {value}")
    return 1 if report["wrong"] or report["lost"] or report["left over"] else 0


if __name__ == "__main__":
    sys.exit(main())
