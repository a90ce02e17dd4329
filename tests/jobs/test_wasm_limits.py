"""The limits of a WebAssembly unit, on a real server: memory past ``--max-memory`` is
reported as ``memory`` and freed when the unit ends (the worker's peak memory stays near the
cap however many units hit it); stdout past ``--max-output`` fails the unit while it writes;
stderr is kept to its last 64 KiB as it is written; no ``/dev/shm/sperse-wasm-*`` folder
outlives its worker, and one left by a dead process is swept when a server starts.

Memory is measured as the worker's peak resident set (``VmHWM`` in ``/proc``): a bound on
memory, not on time.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import wasmtime
from job_helpers import embedded_cluster

import sperse
from sperse._backends.sperse import EmbeddedServer
from sperse._serialize import shm
from sperse.jobs import submit_job

pytestmark = pytest.mark.skipif(
    not os.path.isdir("/proc/self/fd") or not os.access(shm.SHM_DIR, os.W_OK),
    reason="needs Linux /proc and a writable /dev/shm",
)

MIB = 1 << 20

_WASI = """
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
"""

# What it does depends on the first byte of its input:
# g grows its memory 1 MiB at a time, touching every page, until a growth is refused, then
#   traps (as a C program's abort after malloc returned NULL);
# o writes 64 KiB blocks to stdout until a write fails, then exits with 0;
# e writes 64 MiB to stderr (64 KiB blocks, the last one of "Z"s), then exits with 1;
# anything else writes "ok".
HOG_WAT = (
    "(module"
    + _WASI
    + """
  (memory (export "memory") 2)
  (data (i32.const 200) "ok")
  (func $write (param $fd i32) (param $ptr i32) (param $len i32) (result i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 20)))
  (func (export "_start") (local $c i32) (local $p i32) (local $i i32)
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const 16))
    (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 16)))
    (local.set $c (i32.load8_u (i32.const 1024)))
    (if (i32.eq (local.get $c) (i32.const 103)) (then
      (loop $grow
        (if (i32.eq (memory.grow (i32.const 16)) (i32.const -1)) (then unreachable))
        (local.set $p (i32.sub (i32.mul (memory.size) (i32.const 65536)) (i32.const 1048576)))
        (loop $touch
          (i32.store8 (local.get $p) (i32.const 1))
          (local.set $p (i32.add (local.get $p) (i32.const 4096)))
          (br_if $touch (i32.lt_u (local.get $p) (i32.mul (memory.size) (i32.const 65536)))))
        (br $grow))))
    (if (i32.eq (local.get $c) (i32.const 111)) (then
      (loop $out
        (br_if $out (i32.eqz (call $write (i32.const 1) (i32.const 65536) (i32.const 65536)))))
      (call $proc_exit (i32.const 0))))
    (if (i32.eq (local.get $c) (i32.const 101)) (then
      (local.set $i (i32.const 1023))
      (loop $err
        (drop (call $write (i32.const 2) (i32.const 65536) (i32.const 65536)))
        (local.set $i (i32.sub (local.get $i) (i32.const 1)))
        (br_if $err (local.get $i)))
      (memory.fill (i32.const 65536) (i32.const 90) (i32.const 65536))
      (drop (call $write (i32.const 2) (i32.const 65536) (i32.const 65536)))
      (call $proc_exit (i32.const 1))))
    (drop (call $write (i32.const 1) (i32.const 200) (i32.const 2))))
)"""
)


@pytest.fixture(scope="module")
def hog_wasm() -> bytes:
    return bytes(wasmtime.wat2wasm(HOG_WAT))


@pytest.fixture
def one_worker() -> Iterator[tuple[sperse.Cluster, EmbeddedServer]]:
    cluster, server = embedded_cluster("limits", workers=1)
    try:
        yield cluster, server
    finally:
        cluster.close()


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
        except OSError:
            continue
        found.update(int(p) for p in text.split())
    return found


def _descendants(pid: int) -> set[int]:
    found = _children(pid)
    for child in list(found):
        found |= _descendants(child)
    return found


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _worker_of(server: EmbeddedServer) -> int:
    """The pid of the server's one worker process that has run WebAssembly (wasmtime's
    library is mapped in it)."""
    found = []
    for pid in _descendants(server.process.pid):
        try:
            if "libwasmtime" in Path(f"/proc/{pid}/maps").read_text():
                found.append(pid)
        except OSError:
            continue
    assert len(found) == 1, f"not one worker running WebAssembly: {found}"
    return found[0]


def _wasm_dirs(pids: set[int]) -> list[str]:
    prefixes = tuple(f"sperse-wasm-{pid}-" for pid in pids)
    return sorted(name for name in os.listdir(shm.SHM_DIR) if name.startswith(prefixes))


def _warm_up(
    cluster: sperse.Cluster, hog: bytes, make_inputs: Callable[..., Path], out: Path
) -> None:
    summary = submit_job(
        wasm=hog, input=make_inputs({"a": b"a"}), output=out, cluster=cluster
    ).wait(timeout=60)
    assert summary.ok, summary.report()


def test_memory_past_the_cap_is_memory_and_is_freed_after_each_unit(
    one_worker: tuple[sperse.Cluster, EmbeddedServer],
    hog_wasm: bytes,
    make_inputs: Callable[..., Path],
    tmp_path: Path,
) -> None:
    cluster, server = one_worker
    _warm_up(cluster, hog_wasm, make_inputs, tmp_path / "warm")
    worker = _worker_of(server)
    before = _kib(worker, "VmRSS")
    cap_mb = 48
    job = submit_job(
        wasm=hog_wasm,
        input=make_inputs({f"g{i:02d}": b"g" for i in range(24)}),
        output=tmp_path / "out",
        max_memory_mb=cap_mb,
        cluster=cluster,
    )
    summary = job.wait(timeout=120)
    assert summary.failed == 24, summary.report()
    for failure in summary.failures:
        assert failure.error is not None
        assert failure.error.kind == "memory", failure.error
        assert f"memory limit of {cap_mb} MiB" in failure.error.message
        assert "--max-memory" in failure.error.message  # how to raise it
    assert _worker_of(server) == worker  # the same worker ran them all
    peak = _kib(worker, "VmHWM")
    # 24 units of 48 MiB each: kept until a collection, they would take ~1 GiB.
    assert peak - before < (2 * cap_mb + 64) * 1024, (before, peak)


def test_stdout_past_its_limit_fails_the_unit_as_it_writes(
    one_worker: tuple[sperse.Cluster, EmbeddedServer],
    hog_wasm: bytes,
    make_inputs: Callable[..., Path],
    tmp_path: Path,
) -> None:
    """A unit that writes until a write fails is stopped at the limit (without it, it
    would write until its time limit)."""
    cluster, _ = one_worker
    job = submit_job(
        wasm=hog_wasm,
        input=make_inputs({"out": b"o", "fine": b"-"}),
        output=tmp_path / "out",
        timeout=60,
        max_output_mb=4,
        cluster=cluster,
    )
    summary = job.wait(timeout=120)
    assert (summary.succeeded, summary.failed) == (1, 1), summary.report()
    error = summary.failures[0].error
    assert error is not None and error.kind == "output", error
    assert "output limit of 4 MiB" in error.message and "--max-output" in error.message
    assert not (tmp_path / "out" / "out").exists()


def test_stderr_is_kept_to_its_tail_as_it_is_written(
    one_worker: tuple[sperse.Cluster, EmbeddedServer],
    hog_wasm: bytes,
    make_inputs: Callable[..., Path],
    tmp_path: Path,
) -> None:
    cluster, server = one_worker
    _warm_up(cluster, hog_wasm, make_inputs, tmp_path / "warm")
    worker = _worker_of(server)
    before = _kib(worker, "VmRSS")
    summary = submit_job(
        wasm=hog_wasm,
        input=make_inputs({"err": b"e"}),
        output=tmp_path / "out",
        cluster=cluster,
    ).wait(timeout=120)
    assert summary.failed == 1, summary.report()
    error = summary.failures[0].error
    assert error is not None and error.kind == "exit"
    assert error.detail.endswith("Z" * 1000)  # the end of what it wrote
    assert len(error.detail) <= 65 * 1024
    # 64 MiB of stderr was never held by the worker (nor written to /dev/shm).
    assert _kib(worker, "VmHWM") - before < 32 * 1024


def _wait_exited(pids: set[int], deadline: float) -> None:
    """Wait (on each process's pidfd, up to ``deadline`` seconds) until ``pids`` have exited."""
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            ready, _, _ = select.select([fd], [], [], deadline)
            assert ready, f"process {pid} did not exit"
        finally:
            os.close(fd)


@pytest.mark.parametrize("stop", ["stopped", "killed"])
def test_no_wasm_folder_outlives_its_worker(
    stop: str, hog_wasm: bytes, make_inputs: Callable[..., Path], tmp_path: Path
) -> None:
    """Whether the server stops, or is killed (its workers then exit at once, running no
    clean-up of their own), no folder of theirs is left in /dev/shm."""
    cluster, server = embedded_cluster("wasm-dirs", workers=2)
    try:
        summary = submit_job(
            wasm=hog_wasm,
            input=make_inputs({f"u{i}": b"-" for i in range(20)}),
            output=tmp_path / "out",
            cluster=cluster,
        ).wait(timeout=60)
        assert summary.ok, summary.report()
        workers = _descendants(server.process.pid)
        if stop == "killed":
            os.kill(server.process.pid, signal.SIGKILL)
            server.process.wait(30)
            _wait_exited(workers, 30)
    finally:
        cluster.close()
    assert not server.alive()
    _wait_exited(workers, 30)
    assert _wasm_dirs(workers | {server.process.pid}) == []


def test_a_wasm_folder_of_a_dead_process_is_swept_when_a_server_starts() -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(dead.stdout)
    folder = Path(shm.SHM_DIR) / f"sperse-wasm-{pid}-stale0"
    folder.mkdir()
    (folder / "stdout").write_bytes(b"left over")
    (folder / "stderr").write_bytes(b"")
    mine = Path(shm.SHM_DIR) / f"sperse-wasm-{os.getpid()}-alive0"  # its owner lives
    mine.mkdir()
    try:
        # The sweep runs before the server says it is ready, which its start waits for.
        EmbeddedServer(workers=1, name="sweeper").stop()
        assert not folder.exists()
        assert mine.exists()
    finally:
        for path in (folder, mine):
            if path.exists():
                for child in path.iterdir():
                    child.unlink()
                path.rmdir()
