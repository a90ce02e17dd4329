"""Helpers of the job tests: a WebAssembly module in WAT, embedded servers, input files.

Servers are ``EmbeddedServer`` child processes (as ``sperse.connect()`` starts them), each
stopped by its pid when its cluster closes; the client gives a broken connection up within
a second or so, so that a server killed by a test is noticed soon.
"""

from __future__ import annotations

import os
from pathlib import Path

import sperse
from sperse._backends.sperse import EmbeddedServer, SperseBackend

ROOT = Path(__file__).resolve().parents[2]
SUMMER = ROOT / "examples" / "wasm" / "summer.wasm"

_WASI = """
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
"""

# Reads its input (up to 60,000 bytes); what it does depends on the first byte:
# t traps, l loops forever, m grows its memory until refused then traps, x writes
# "bad unit" to stderr and exits with 3, s computes a while then echoes; anything else
# is echoed. Memory: 0 iovec, 16 bytes read, 20 bytes written, 200 text, 1024 the input.
BEHAVE_WAT = (
    "(module"
    + _WASI
    + """
  (memory (export "memory") 1)
  (data (i32.const 200) "bad unit\\n")
  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 20))))
  (func (export "_start") (local $n i32) (local $c i32) (local $i i32)
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const 60000))
    (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 16)))
    (local.set $n (i32.load (i32.const 16)))
    (local.set $c (i32.load8_u (i32.const 1024)))
    (if (i32.eq (local.get $c) (i32.const 116)) (then unreachable))
    (if (i32.eq (local.get $c) (i32.const 108)) (then (loop $l (br $l))))
    (if (i32.eq (local.get $c) (i32.const 109)) (then
      (loop $g (br_if $g (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
      unreachable))
    (if (i32.eq (local.get $c) (i32.const 120)) (then
      (call $write (i32.const 2) (i32.const 200) (i32.const 9))
      (call $proc_exit (i32.const 3))))
    (if (i32.eq (local.get $c) (i32.const 115)) (then
      (local.set $i (i32.const 3000000))
      (loop $s
        (local.set $i (i32.sub (local.get $i) (i32.const 1)))
        (br_if $s (local.get $i)))))
    (call $write (i32.const 1) (i32.const 1024) (local.get $n)))
)"""
)


def embedded_cluster(name: str, workers: int = 1) -> tuple[sperse.Cluster, EmbeddedServer]:
    server = EmbeddedServer(workers=workers, name=name)
    try:
        backend = SperseBackend(
            server.address,
            token=server.token,
            process=server,
            reconnect_timeout=0.5,
            # A resume attempt may wait this long for a server that is dying (SIGKILL).
            connect_timeout=1.0,
        )
        return sperse.Cluster(backend), server
    except BaseException:
        server.stop()
        raise


def sums(count: int) -> dict[str, bytes]:
    """Inputs of summer.wasm: ``i + 2i``, whose output is ``3i``."""
    return {f"{i}.txt": f"{i} + {2 * i}\n".encode() for i in range(count)}


def outputs(directory: Path) -> dict[str, bytes]:
    """Every output file under ``directory`` (not the job's own files)."""
    found = {}
    for path in directory.rglob("*"):
        rel = path.relative_to(directory).as_posix()
        if path.is_file() and rel != "_failed.jsonl" and not rel.startswith("."):
            found[rel] = path.read_bytes()
    return found


def leftovers(directory: Path) -> list[str]:
    """Half-written files: there must be none once a job has ended."""
    partial = directory / ".sperse-partial"
    return sorted(os.listdir(partial)) if partial.exists() else []
