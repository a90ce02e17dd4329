"""What a task printed, as ``(stream, text)`` chunks in order, and how much of it is kept."""

from __future__ import annotations

__all__ = ["Chunk", "last_characters"]

Chunk = tuple[str, str]  # (stream, text)


def last_characters(chunks: list[Chunk], limit: int) -> list[Chunk]:
    """The last ``limit`` characters of ``chunks``, chunk by chunk (the oldest one kept
    may be cut at its start)."""
    kept: list[Chunk] = []
    room = limit
    for stream, text in reversed(chunks):
        part = text[-room:]
        kept.append((stream, part))
        room -= len(part)
        if room <= 0:
            break
    kept.reverse()
    return kept
