"""``map_wasm`` in this process: bytes through an export of a module compiled from WAT here,
the module compiled once per process, and every way an item can fail (not bytes, a trap,
an exit code, the memory and time limits) as a ``FlowFailed`` naming operator and item."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from wasm_modules import UPPER_WAT

import sperse
from sperse._flow.api import InProcess
from sperse._wasm import process_host

WAIT = 60.0


def upper_module() -> bytes:
    """The module with a data segment of its own: a key no other test compiled."""
    body = UPPER_WAT.rstrip().removesuffix(")")
    return f'{body}  (data (i32.const 400) "{uuid.uuid4().hex}"))'.encode()


def test_items_go_through_the_export_on_every_replica() -> None:
    f = sperse.Flow("wasm")
    words = [f"word {i}".encode() for i in range(300)]
    out = (
        f.source(words)
        .map_wasm(UPPER_WAT.encode(), "upper", name="upper")
        .on(replicas=3)
        .map(bytes.decode)
        .collect()
    )
    run = f.run(executor=InProcess(batch=16))
    assert sorted(out.result(WAIT)) == sorted(w.decode().upper() for w in words)
    assert run.result(WAIT).items["upper"] == 300


def test_the_module_is_compiled_once_per_process_for_all_its_replicas() -> None:
    module = upper_module()
    before = process_host().compiled
    f = sperse.Flow("once")
    out = f.source([b"a", b"b", b"c", b"d"] * 10).map_wasm(module, "upper").on(replicas=4).collect()
    f.run(executor=InProcess(batch=2))
    assert sorted(set(out.result(WAIT))) == [b"A", b"B", b"C", b"D"]
    assert process_host().compiled == before + 1


def test_a_wasi_command_runs_as_its_start_function() -> None:
    # A job's module (`_start`: stdin to stdout) is a map_wasm operator as it is.
    echo = b"""(module
      (import "wasi_snapshot_preview1" "fd_read" (func $r (param i32 i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "_start")
        (i32.store (i32.const 0) (i32.const 64)) (i32.store (i32.const 4) (i32.const 1000))
        (drop (call $r (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 16)))
        (i32.store (i32.const 4) (i32.load (i32.const 16)))
        (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 20)))))"""
    f = sperse.Flow("cmd")
    out = f.source([b"x", b"", b"yz"]).map_wasm(echo).collect()
    f.run(executor=InProcess())
    assert out.result(WAIT) == [b"x", b"", b"yz"]


@pytest.mark.parametrize(
    ("export", "item", "said"),
    [
        ("upper", "text", "map_wasm takes bytes, not str"),
        ("trap", b"t", "trapped: wasm trap: wasm `unreachable` instruction executed (trap)"),
        ("fail", b"f", "exited with code 3 (exit); its stderr: bad item"),
        ("grow", b"g", "needed more than its memory limit of 2 MiB"),
        ("spin", b"s", "ran past its time limit of 0.2 s (timeout)"),
    ],
)
def test_an_item_that_fails_fails_the_run_naming_operator_and_item(
    export: str, item: object, said: str
) -> None:
    f = sperse.Flow("bad")
    items = [b"fine", item] if export == "upper" else [item]  # the others fail on any item
    out = (
        f.source(items)
        .map_wasm(UPPER_WAT.encode(), export, timeout=0.2, max_memory_mb=2, name="wasm-op")
        .collect()
    )
    f.run(executor=InProcess())
    with pytest.raises(sperse.FlowFailed) as info:
        out.result(WAIT)
    error = info.value
    assert error.operator == "wasm-op"
    assert error.item == repr(item)
    assert said in str(error)


@pytest.mark.parametrize(
    ("module", "export", "said"),
    [
        (b"not wasm", "upper", "is not a WebAssembly module"),
        (UPPER_WAT.encode(), "nope", "exports no function 'nope' (its functions: fail, grow"),
        (UPPER_WAT.encode(), "memory", "exports no function 'memory'"),
        (
            b'(module (func (export "f") (param i32)))',
            "f",
            "takes or returns values; it must take none",
        ),
        (
            b'(module (import "env" "g" (func)) (func (export "f")))',
            "f",
            "imports something a sandboxed WASI program cannot have",
        ),
    ],
)
def test_a_module_that_cannot_run_is_refused_when_the_flow_is_built(
    module: bytes, export: str, said: str
) -> None:
    f = sperse.Flow("refused")
    with pytest.raises(ValueError, match="map_wasm: ") as info:
        f.source([b"x"]).map_wasm(module, export)
    assert said in str(info.value)


def test_a_module_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "upper.wat"
    path.write_text(UPPER_WAT)
    f = sperse.Flow("file")
    out = f.source([b"abc"]).map_wasm(path, "upper").collect()
    f.run(executor=InProcess())
    assert out.result(WAIT) == [b"ABC"]
