"""The IPython/Jupyter front end: ``%load_ext sperse``.

Loading the extension gives the shell one :class:`~sperse.Workspace` (on
``sperse.current()``, the embedded server unless another cluster is in use): every cell's
Python, ``remote`` forms included, is entered into it, so names become reactive cells, and
the REPL's ``%`` commands become line magics. See ``docs/jupyter.md``.

IPython is imported when the extension loads (``_extension``), never by ``import sperse``.
"""

from __future__ import annotations

from typing import Any

from sperse._workspace import Workspace

__all__ = ["load_ipython_extension", "unload_ipython_extension", "workspace"]

# The extension of each shell that loaded it (keyed by the shell itself, kept until unloaded).
_LOADED: dict[Any, Any] = {}


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext sperse``. Loading it again does nothing; ``%reload_ext`` starts afresh."""
    from sperse.ipython._extension import Extension

    if ipython not in _LOADED:
        _LOADED[ipython] = Extension(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """Remove the transformer, hooks and magics; cancel the workspace's running work."""
    extension = _LOADED.pop(ipython, None)
    if extension is not None:
        extension.close()


def workspace(ipython: Any = None) -> Workspace:
    """The workspace of ``ipython`` (default: the running shell), for use from Python code."""
    if ipython is None:
        from IPython import get_ipython

        ipython = get_ipython()
    extension = _LOADED.get(ipython)
    if extension is None:
        raise LookupError("the sperse extension is not loaded in this shell: %load_ext sperse")
    ws: Workspace = extension.ws
    return ws
