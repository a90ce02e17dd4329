"""Sperse: interactive, reactive, remote and distributed Python."""

from __future__ import annotations

__all__: list[str] = []
