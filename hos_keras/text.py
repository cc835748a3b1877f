"""Wording of what hos_keras prints."""

from __future__ import annotations

__all__ = ["plural"]


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """`"1 epoch"`, `"2 epochs"`: the count and the noun, plural unless one
    (`nouns`: the plural when it is not `noun + "s"`)."""
    return f"{count:,} {noun if count == 1 else nouns or noun + 's'}"
