"""Driver side: joining a Ray, or starting one (docs/ray.md, "Install and connect").

``address`` is what ``ray.init`` takes: ``None`` joins the Ray this machine runs (as
``RAY_ADDRESS`` or the last ``ray start`` says) or starts a local one, ``"auto"`` joins and
never starts, ``"HOST:PORT"`` joins that cluster's head, ``"ray://HOST:PORT"`` is Ray Client.
A Ray started here listens on 127.0.0.1 only, without dashboard. Ray's own forwarding of
worker output is off: the relay shows it, prefixed. A process joins one Ray at a time.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, Final

from sperse._backends.ray.errors import first_line
from sperse._backends.ray.protocol import NAME_LABEL
from sperse.errors import ServerUnavailable, SperseError

__all__ = ["START_TIMEOUT", "check_joined", "init_ray", "wait_for_mailbox"]

START_TIMEOUT: Final = 60.0  # the longest start() waits for the mailbox actor


def init_ray(
    ray: Any,
    address: str | None,
    *,
    num_cpus: int | None,
    resources: Mapping[str, float],
    name: str | None,
    init_options: Mapping[str, Any],
) -> None:
    """``ray.init`` for ``address`` (this process runs no Ray yet); ``ServerUnavailable``
    with the likely cause if it cannot. ``num_cpus``, ``resources`` (tags) and ``name`` are
    those of a local Ray started here."""
    options: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
    if address is None and _existing_cluster() is None:
        address = "local"
    if address == "local":
        options.update(include_dashboard=False, _node_ip_address="127.0.0.1")
        if num_cpus is not None:
            options["num_cpus"] = num_cpus
        if resources:
            options["resources"] = dict(resources)
        if name:
            options["labels"] = {NAME_LABEL: name}
    options.update(init_options)
    try:
        ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:
        where = address or "the Ray this machine runs"
        auth = ""
        if address not in (None, "auto", "local") and "RAY_AUTH_MODE" not in os.environ:
            auth = (
                "; a cluster with token authentication (the default of a Ray started by "
                "ray.init) also needs RAY_AUTH_MODE=token here, and its token in "
                "~/.ray/auth_token or RAY_AUTH_TOKEN"
            )
        raise ServerUnavailable(
            f"cannot join Ray at {where}: {first_line(exc)}. Start it (`ray start "
            "--head`), check the address (HOST:PORT of the head, ray://HOST:PORT for Ray "
            f"Client), or omit it to start a local Ray{auth}"
        ) from exc


def check_joined(ray: Any, address: str | None) -> None:
    """This process runs Ray already: it must be the Ray ``address`` names."""
    if address in (None, "auto"):
        return
    joined = "Ray Client" if ray.util.client.ray.is_connected() else ""
    if not joined:
        joined = str(ray.get_runtime_context().gcs_address)
        if address == joined:
            return
    raise SperseError(
        f"this process runs Ray already ({joined}), so it cannot join Ray at {address}: "
        "a process joins one Ray at a time. Call ray.shutdown() first, or connect "
        "without an address to use the Ray it runs"
    )


def wait_for_mailbox(ray: Any, mailbox: Any) -> None:
    """Wait until the mailbox actor runs: its first output is then live, and a cluster
    that cannot run Sperse's code (not installed on its nodes) is an error now."""
    try:
        ray.get(mailbox.take.remote(0), timeout=START_TIMEOUT)
    except Exception as exc:
        raise ServerUnavailable(
            f"the Ray cluster cannot start Sperse's mailbox actor: {first_line(exc)}. "
            "Is sperse installed on every node (pip install sperse), in the same version?"
        ) from exc


def _existing_cluster() -> str | None:
    """The address of the Ray this machine runs (``RAY_ADDRESS``, ``ray start``), if any."""
    try:
        from ray._private.services import canonicalize_bootstrap_address

        found = canonicalize_bootstrap_address(None)  # type: ignore[arg-type]  # None: look
    except Exception:
        return None
    return str(found) if found else None
