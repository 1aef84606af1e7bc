"""The comparison's results as an aligned plain-text table (what ``tensorpeft compare`` prints)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._table import render_table

if TYPE_CHECKING:
    from ._compare import MethodRow

__all__ = ["format_table"]


def format_table(rows: list[MethodRow], evaluated_on: str = "test") -> str:
    """Aligned plain-text table of the rows (``evaluated_on`` names the accuracy column's data)."""
    generated = any(r.valid_answers for r in rows)  # the decoder job: exact match of generated answers
    header = ["method", "ranks", "adapter params", "trainable", f"{evaluated_on} accuracy", "s/step", "peak MB"]
    if generated:
        header.insert(5, "valid answers")
    lines = []
    for r in rows:
        acc = f"{100 * r.accuracy_mean:.1f}" + (f" ± {100 * r.accuracy_std:.1f}" if len(r.accuracy) > 1 else "")
        line = [
            r.method,
            r.ranks,
            f"{r.adapter_params:,}",
            f"{r.trainable_params:,}",
            acc,
            f"{r.seconds_per_step:.3f}" if r.seconds_per_step > 0 else "-",
            f"{r.peak_memory_mb:.0f}",
        ]
        if generated:
            line.insert(5, f"{100 * sum(r.valid_answers) / len(r.valid_answers):.1f}%" if r.valid_answers else "-")
        lines.append(tuple(line))
    return render_table(None, tuple(header), lines, left=(0, 1))
