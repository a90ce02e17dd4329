"""``map_wasm``: each item (bytes) through an export of a WebAssembly module, in the sandbox
of ``sperse submit --wasm`` (:mod:`sperse._wasm`).

The module's bytes travel in the plan; a replica compiles them the first time a batch
comes (once per process: replicas in one process share the compiled module, each has a
sandbox of its own) and runs each item in a fresh instance: the item is the instance's
stdin, its stdout the output. No files, no network, no environment; memory capped by the
store's limiter, time per item by epoch interruption. Unlike the other operators this one
is not pure: it runs the sandbox (whose output goes through private files of the process).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from sperse._flow.ops import Ctx, ItemError, Op
from sperse._wasm import Sandbox, compile_module, load_module, new_engine, process_host

__all__ = ["MapWasm", "wasm_args"]

_BYTES = (bytes, bytearray, memoryview)
_DETAIL = 300  # characters of the instance's stderr kept in the error


def wasm_args(
    module: str | os.PathLike[str] | bytes,
    export: str,
    timeout: float | None,
    max_memory_mb: float | None,
) -> tuple[str, bytes, str, float | None, int | None]:
    """The plan's arguments of a ``map_wasm``: the module (binary; WAT text is compiled
    here), checked now so that a module that cannot run is refused when the flow is built,
    with wasmtime's reason (``ValueError``)."""
    if not isinstance(export, str) or not export:
        raise TypeError(f"map_wasm: export is the name of an exported function, not {export!r}")
    if timeout is not None and not timeout > 0:
        raise ValueError(f"map_wasm: timeout must be positive seconds, not {timeout!r}")
    if max_memory_mb is not None and not max_memory_mb > 0:
        raise ValueError(f"map_wasm: max_memory_mb must be positive, not {max_memory_mb!r}")
    try:
        data, _ = load_module(module)
        compile_module(new_engine(), data, export)
    except ValueError as exc:
        raise ValueError(f"map_wasm: {exc}") from None
    except ImportError as exc:  # pragma: no cover - an install without the jobs extra
        raise ImportError(
            "map_wasm needs the wasmtime package: pip install 'sperse[jobs]'"
        ) from exc
    memory = None if max_memory_mb is None else int(max_memory_mb * (1 << 20))
    return hashlib.sha256(data).hexdigest(), data, export, timeout, memory


class MapWasm(Op):
    """One replica's ``map_wasm``: bytes in, the export's stdout out, per item."""

    __slots__ = ("export", "key", "max_memory", "module", "sandbox", "timeout")

    def __init__(
        self,
        name: str,
        key: str,
        module: bytes,
        export: str,
        timeout: float | None,
        max_memory: int | None,
    ) -> None:
        super().__init__(name)
        self.key = key
        self.module = module
        self.export = export
        self.timeout = timeout
        self.max_memory = max_memory
        self.sandbox: Sandbox | None = None

    def on_batch(self, port: int, items: list[Any], ctx: Ctx) -> list[Any]:
        sandbox = self.sandbox
        if sandbox is None:
            sandbox = self.sandbox = process_host().new_sandbox(self.key, self.module, self.export)
        out = []
        for item in items:
            if not isinstance(item, _BYTES):
                raise ItemError(
                    item,
                    message=f"map_wasm takes bytes, not {type(item).__name__}: encode the items "
                    "before it (.map(str.encode), or pickle.dumps)",
                )
            outcome = sandbox.run(bytes(item), self.timeout, self.max_memory)
            if outcome[0]:
                out.append(outcome[1])
                continue
            _, kind, message, detail, _ = outcome
            # What the instance wrote (wasmtime's own text of a trap follows it: dropped).
            stderr = detail.split("error while executing at", 1)[0].strip()[-_DETAIL:]
            raise ItemError(
                item,
                message=f"the WebAssembly export {self.export!r} {message} ({kind})"
                + (f"; its stderr: {stderr}" if stderr else ""),
            )
        return out
