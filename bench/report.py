"""Tables the bench prints: medians and tails beside the floors measured in the same run."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def summarize(samples: Sequence[float]) -> tuple[float, float, float]:
    """Median, p95 and max of ``samples``."""
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered), p95, ordered[-1]


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], first_width: int = 38) -> str:
    """A Markdown table: the first column left-aligned, numbers right-aligned with two decimals."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.2f}"
        return "" if value is None else str(value)

    widths = [first_width] + [max(len(header), 9) for header in headers[1:]]
    lines = [
        "| "
        + " | ".join(
            f"{header:<{widths[0]}}" if i == 0 else f"{header:>{widths[i]}}" for i, header in enumerate(headers)
        )
        + " |",
        "|"
        + "|".join("-" * (width + 2) if i == 0 else "-" * (width + 1) + ":" for i, width in enumerate(widths))
        + "|",
    ]
    for row in rows:
        cells = [cell(value) for value in row]
        lines.append(
            "| "
            + " | ".join(f"{c:<{widths[0]}}" if i == 0 else f"{c:>{widths[i]}}" for i, c in enumerate(cells))
            + " |"
        )
    return "\n".join(lines)


def latency_rows(named: Sequence[tuple[str, Sequence[float], float | None]]) -> list[list[object]]:
    """``[name, median, p95, max, median / floor]`` for each ``(name, samples, floor median)``."""
    rows: list[list[object]] = []
    for name, samples, floor in named:
        median, p95, worst = summarize(samples)
        rows.append([name, median, p95, worst, median / floor if floor else None])
    return rows
