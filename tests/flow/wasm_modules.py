"""A small WebAssembly module for the flow tests, as WAT text (wasmtime compiles it).

Exports: ``upper`` (stdin to stdout with ASCII letters upper-cased; up to 60,000 bytes),
``trap`` (``unreachable``), ``spin`` (loops forever), ``fail`` (writes ``bad item`` to
stderr and exits with 3), and ``grow`` (grows its memory until refused, then traps).
"""

from __future__ import annotations

UPPER_WAT = """(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 200) "bad item\\n")
  (func (export "upper") (local $n i32) (local $i i32) (local $c i32)
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const 60000))
    (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 16)))
    (local.set $n (i32.load (i32.const 16)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $c (i32.load8_u (i32.add (i32.const 1024) (local.get $i))))
        (if (i32.and (i32.ge_u (local.get $c) (i32.const 97)) (i32.le_u (local.get $c) (i32.const 122)))
          (then (i32.store8 (i32.add (i32.const 1024) (local.get $i))
                            (i32.sub (local.get $c) (i32.const 32)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.store (i32.const 4) (local.get $n))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 20))))
  (func (export "trap") unreachable)
  (func (export "spin") (loop $l (br $l)))
  (func (export "fail")
    (i32.store (i32.const 0) (i32.const 200))
    (i32.store (i32.const 4) (i32.const 9))
    (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 20)))
    (call $proc_exit (i32.const 3)))
  (func (export "grow")
    (loop $g (br_if $g (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
    unreachable)
)"""
