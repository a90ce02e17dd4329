"""Services at the prompt take a redefined function in place (issue 15): when a cell binds
a name to a new function and a running service this process served has an operator running
the old one, the operator gets the new one (``Service.update``: its keyed state kept, no
request lost or answered twice), and the prompt says so. The cell that served the service
takes those names in place (``sperse._workspace.live``), so it is not run again (which
would start the service anew, its state gone)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from sperse._flow.serving import SWAPPABLE, Service, services
from sperse._workspace import live

__all__ = ["PromptSwaps"]


def _functions(svc: Service) -> Iterator[tuple[str, Callable[..., Any]]]:
    """(operator name, the function it runs) of each operator of ``svc`` that has one."""
    run = svc._run
    if run is None:
        return
    for node in run.plan.logical.nodes:
        if node.kind in SWAPPABLE and node.args:
            fn = node.args[1] if node.kind == "scan" else node.args[0]
            if callable(fn):
                yield node.name, fn


def _served() -> list[Service]:
    return [svc for svc in services() if svc._run is not None and svc.running]


class PromptSwaps:
    """The ``LiveUser`` of services (see :mod:`sperse._workspace.live`)."""

    def mark(self) -> int:
        return max((svc.generation for svc in services()), default=0)

    def running(self) -> bool:
        return bool(_served())

    def uses(self, value: Any, since: int) -> bool:
        return any(
            svc.generation > since and any(fn is value for _, fn in _functions(svc))
            for svc in _served()
        )

    def redefined(self, name: str, old: Any, new: Any) -> list[str]:
        notes: list[str] = []
        for svc in _served():
            for operator, fn in list(_functions(svc)):
                if fn is not old:
                    continue
                try:
                    svc.update(operator, new)
                except Exception as exc:  # said at the prompt; the old function runs on
                    notes.append(
                        f"service {svc.name!r}: operator {operator!r} still runs the old "
                        f"{name} ({type(exc).__name__}: {exc})"
                    )
                else:
                    notes.append(
                        f"service {svc.name!r}: operator {operator!r} now runs the new "
                        f"{name}, swapped in place (its keyed state kept)"
                    )
        return notes


live.register(PromptSwaps())
