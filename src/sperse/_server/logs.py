"""The server's log: one line per event, ``event=NAME key=value ...``.

Values with spaces, quotes or ``=`` are double-quoted (JSON string rules), so every line
splits unambiguously. Secrets (tokens) are never logged.
"""

from __future__ import annotations

import json
import logging

__all__ = ["log", "log_event"]

log = logging.getLogger("sperse.server")

_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/[]@+,")


def _value(value: object) -> str:
    text = str(value)
    if text and all(c in _PLAIN for c in text):
        return text
    return json.dumps(text, ensure_ascii=False)


def log_event(level: int, event: str, *, exc_info: bool = False, **fields: object) -> None:
    if log.isEnabledFor(level):
        parts = [f"event={event}"]
        parts.extend(f"{key}={_value(value)}" for key, value in fields.items())
        log.log(level, " ".join(parts), exc_info=exc_info)
