"""Random secrets for clusters: what ``--token`` takes on a command line."""

from __future__ import annotations

import secrets

__all__ = ["new_token"]


def new_token(nbytes: int = 32) -> str:
    """A random URL-safe token of ``nbytes`` bytes that never starts with ``-``: argparse
    would read ``--token -xyz`` as a missing value (one token in 64 did)."""
    while True:
        token = secrets.token_urlsafe(nbytes)
        if not token.startswith("-"):
            return token
