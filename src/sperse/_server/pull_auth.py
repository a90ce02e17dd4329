"""How a server proves to another of its cluster that it holds the cluster token, for a
``Pull``, without sending the token.

The address a server pulls from comes from a client (``Task.peer_refs``): a client could
point it anywhere. So a pull never carries the token. It carries a proof bound to the
address the puller dialled::

    proof = HMAC-SHA256(token, "sperse-pull/1" \\0 holder \\0 object_id \\0 server)

and the holder accepts it only when ``holder`` is an address of its own
(:class:`OwnAddresses`). An address a client points a server at learns a proof that is good
for that address only: relayed to a real server of the cluster, it is refused.

Invariants: the token never leaves the server in a pull; a proof is checked in constant
time; an address is the holder's own when it names the port the holder listens on and a
host that is the holder's (its advertised address, its bound host, or, bound to every
interface, a host whose every address is local to this machine).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import socket

from sperse._server.config import is_loopback

__all__ = ["OwnAddresses", "pull_proof", "split_address"]

_DOMAIN = b"sperse-pull/1"
_WILDCARD = ("", "0.0.0.0", "::", "[::]")
_LOOPBACK_NAMES = ("localhost",)
_CACHED = 256  # addresses remembered, each way (a client may name many)


def pull_proof(token: str, holder: str, object_id: str, server: str) -> bytes:
    """The proof a server asking ``holder`` for ``object_id`` sends (module docstring)."""
    message = b"\0".join([_DOMAIN, *(part.encode() for part in (holder, object_id, server))])
    return hmac.new(token.encode(), message, hashlib.sha256).digest()


def split_address(address: str) -> tuple[str, int] | None:
    """``host:port``, ``[v6]:port`` or either after ``sperse://``, as (host, port); None when
    it is not one."""
    host, sep, port = address.removeprefix("sperse://").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        return None
    return host.removeprefix("[").removesuffix("]"), int(port)


def _local(ip: str) -> bool:
    """Whether ``ip`` is an address of this machine: only those can be bound."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((ip, 0))
    except OSError:
        return False
    return True


class OwnAddresses:
    """The addresses a server answers pulls on: see the module docstring. Use on the
    server's event loop."""

    def __init__(self, host: str, port: int, advertise: str = "") -> None:
        self._host = host
        self._port = port
        self._advertised = split_address(advertise) if advertise else None
        self._known: dict[str, bool] = {}

    async def include(self, address: str) -> bool:
        known = self._known.get(address)
        if known is None:
            known = await self._check(address)
            if len(self._known) >= _CACHED:
                self._known.clear()
            self._known[address] = known
        return known

    async def _check(self, address: str) -> bool:
        parsed = split_address(address)
        if parsed is None:
            return False
        if parsed == self._advertised:  # behind a forwarded port, as registered
            return True
        host, port = parsed
        if port != self._port:
            return False
        bound = self._host.removeprefix("[").removesuffix("]")
        if host == bound:
            return True
        ips = await _resolve(host)
        if not ips:
            return False
        if bound in _WILDCARD:
            return all(_local(ip) for ip in ips)
        if host in _LOOPBACK_NAMES and is_loopback(bound):
            return True
        return ips <= await _resolve(bound)


async def _resolve(host: str) -> set[str]:
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return set()
    return {str(info[4][0]) for info in infos}
