"""The addresses Sperse speaks: ``sperse://HOST:PORT`` or ``HOST:PORT``."""

from __future__ import annotations

__all__ = ["ACCEPTED_URLS", "parse_url"]


ACCEPTED_URLS = (
    "sperse://HOST:PORT or HOST:PORT (a server or a coordinator), a list of those, "
    "or ray://HOST:PORT"
)


def parse_url(url: str) -> str:
    """``sperse://host:port`` (or ``host:port``) → ``host:port``."""
    scheme, sep, _ = url.partition("://")
    if sep and scheme != "sperse":
        raise ValueError(
            f"{url!r} is not a Sperse address: {scheme}:// is not spoken here; give {ACCEPTED_URLS}"
        )
    address = url.removeprefix("sperse://").rstrip("/")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or "/" in address:
        raise ValueError(f"not a server address: {url!r}; give {ACCEPTED_URLS}")
    return address
