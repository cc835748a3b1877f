"""Wording of what hos_keras prints: counts, table cells, tables."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["allocation_label", "cell", "plural", "statistic_cell", "table"]


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """`"1 epoch"`, `"2 epochs"`: the count and the noun, plural unless one
    (`nouns`: the plural when it is not `noun + "s"`)."""
    return f"{count:,} {noun if count == 1 else nouns or noun + 's'}"


def cell(value) -> str:
    """A table cell: `-` for None, thousands separators for integers, 4
    significant digits for floats, strings as they are."""
    if value is None:
        return "-"
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    if isinstance(value, (int, np.integer)):
        return f"{value:,}"
    return str(value)


def allocation_label(allocation: str, config: dict | None) -> str:
    """An allocation's name for people: `"target over shapiro"` for a target
    search over a base allocation, else the name itself."""
    base = (config or {}).get("base")
    return f"target over {base}" if allocation == "target" and base else allocation


def statistic_cell(value) -> str:
    """The layer statistic T: `-` when there is none, else 4 decimals, so that a
    column of T values lines up (0.9540 beside 0.9969)."""
    return "-" if value is None else f"{float(value):.4f}"


def table(headers: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
    """The lines of a table: the header, a rule, then one line per row.

    The first column is left-aligned, the others right-aligned, each as wide as
    its widest cell; values are formatted by `cell` (pass a string to choose
    another format).

    Args:
        headers: Column titles.
        rows: One sequence of values per row, as long as `headers`.

    Returns:
        The lines, without line ends.

    Example:

    >>> for line in table(("layer", "kept"), [("conv1", 8), ("conv2", 12)]):
    ...     print(line)
    layer  kept
    -----------
    conv1     8
    conv2    12
    """
    cells = [[cell(v) for v in row] for row in rows]
    widths = [
        max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)
    ]

    def line(values) -> str:
        return "  ".join(
            v.ljust(w) if i == 0 else v.rjust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ).rstrip()

    head = line(headers)
    return [head, "-" * len(head), *(line(row) for row in cells)]
