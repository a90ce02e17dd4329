"""The worker side, in this process: each kind of unit failure is data, the module is
compiled once per worker, and a worker without the module asks for it."""

from __future__ import annotations

import hashlib

import pytest
import wasmtime
from job_helpers import SUMMER

from sperse._wasm import MAX_DETAIL
from sperse.jobs import _worker
from sperse.jobs._worker import NEED_MODULE, compile_module, new_engine, run_wasm_batch

MiB = 1 << 20


def key(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_worker_without_the_module_asks_for_it_then_keeps_it(behave_wasm: bytes) -> None:
    k = key(behave_wasm)
    before = _worker.compiled_here()
    assert run_wasm_batch(k, None, 16 * MiB, [b"hello"]) in (NEED_MODULE, [(True, b"hello")])
    first = run_wasm_batch(k, None, 16 * MiB, [b"a"], behave_wasm)
    again = run_wasm_batch(k, None, 16 * MiB, [b"b"])  # no bytes: compiled already
    assert [o[:2] for o in first] == [(True, b"a")]
    assert [o[:2] for o in again] == [(True, b"b")]
    assert _worker.compiled_here() <= before + 1


def test_module_bytes_must_match_their_digest(behave_wasm: bytes) -> None:
    with pytest.raises(ValueError, match="digest"):
        run_wasm_batch("0" * 64, None, None, [b""], behave_wasm)


def test_summer_adds() -> None:
    data = SUMMER.read_bytes()
    out = run_wasm_batch(key(data), None, 16 * MiB, [b"3 + 4\n", b"-10 + 2"], data)
    assert [o[:2] for o in out] == [(True, b"7\n"), (True, b"-8\n")]


@pytest.mark.parametrize(
    ("unit", "kind", "message"),
    [
        (b"trap", "trap", "unreachable"),
        (b"loop", "timeout", "time limit of 0.2 s"),
        (b"more memory", "memory", "memory limit of 4 MiB"),
        (b"x exit", "exit", "exited with code 3"),
    ],
)
def test_each_failure_is_data_and_the_next_unit_runs(
    behave_wasm: bytes, unit: bytes, kind: str, message: str
) -> None:
    bad, good = run_wasm_batch(key(behave_wasm), 0.2, 4 * MiB, [unit, b"fine"], behave_wasm)
    assert bad[0] is False and bad[1] == kind, bad
    assert message in bad[2]
    assert good[:2] == (True, b"fine")


def test_stderr_of_a_failed_unit_is_its_detail(behave_wasm: bytes) -> None:
    ((ok, kind, _, detail, _),) = run_wasm_batch(key(behave_wasm), None, None, [b"x"], behave_wasm)
    assert (ok, kind, detail) == (False, "exit", "bad unit\n")


def test_initial_memory_over_the_limit_is_a_memory_failure() -> None:
    data = bytes(
        wasmtime.wat2wasm('(module (memory (export "memory") 100) (func (export "_start")))')
    )
    ((ok, kind, message, _, _),) = run_wasm_batch(key(data), None, 1 * MiB, [b""], data)
    assert (ok, kind) == (False, "memory")
    assert "memory limit of 1 MiB" in message


def test_the_sandbox_has_no_files_and_no_environment() -> None:
    """A module that opens a preopened directory finds none: fd 3 is not there."""
    data = bytes(
        wasmtime.wat2wasm(
            """(module
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $p (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $e (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    ;; errno 8 (EBADF): no preopened directory at fd 3
    (if (i32.ne (call $p (i32.const 3) (i32.const 0)) (i32.const 8)) (then (call $exit (i32.const 1))))
    (drop (call $e (i32.const 0) (i32.const 4)))
    ;; no environment variables
    (if (i32.load (i32.const 0)) (then (call $exit (i32.const 2))))))"""
        )
    )
    ((ok, *rest),) = run_wasm_batch(key(data), None, None, [b""], data)
    assert ok, rest


@pytest.mark.parametrize(
    ("wat", "reason"),
    [
        ('(module (import "env" "f" (func)) (func (export "_start")))', "unknown import"),
        ('(module (func (export "main")))', "no `_start`"),
    ],
)
def test_modules_that_are_not_wasi_commands_are_refused(wat: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        compile_module(new_engine(), bytes(wasmtime.wat2wasm(wat)))


def test_invalid_bytes_are_refused_with_wasmtimes_reason() -> None:
    with pytest.raises(
        ValueError, match=r"not a valid WebAssembly module(.|\n)*unknown binary version"
    ):
        compile_module(new_engine(), b"\0asm\x07\0\0\0")


# ---- Python functions --------------------------------------------------------------------


def test_python_units_fail_alone() -> None:
    from job_units import behave

    out = _worker.run_python_batch(behave, 0.3, [b"raise 1", b"loop", b"int", b"ok", b"text"])
    raised, loop, wrong, ok, text = out
    assert raised[:3] == (False, "raised", "ValueError: bad unit raise 1")
    assert "about to fail" in raised[3] and "in behave" in raised[3]
    assert loop[:3] == (False, "timeout", "ran past its time limit of 0.3 s")
    assert wrong[:2] == (False, "output") and "returned int" in wrong[2]
    assert ok[:2] == (True, b"OK")
    assert text[:2] == (True, b"TEXT")


def chatty(data: bytes) -> bytes:
    """Writes ``data`` megabytes to stdout and to stderr, then fails."""
    import sys

    chunk = "x" * (1 << 20)
    for _ in range(int(data)):
        print(chunk)
        print(chunk, file=sys.stderr)
    print("the end", file=sys.stderr)
    raise ValueError("after all that")


def test_a_python_unit_that_writes_much_costs_its_worker_little() -> None:
    """Issue 17: a unit's stdout is dropped as it is written, and only the tail of its
    stderr is kept (the last MAX_DETAIL characters), whatever it writes."""
    import tracemalloc

    tracemalloc.start()
    try:
        ((done, kind, message, detail, _),) = _worker.run_python_batch(chatty, None, [b"64"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (done, kind, message) == (False, "raised", "ValueError: after all that")
    assert "the end" in detail and "ValueError" in detail
    assert len(detail) <= MAX_DETAIL + 2000  # the tail, and the traceback
    assert peak < 16 << 20, f"{peak >> 20} MiB held to run a unit that wrote 128 MiB"
