"""The one plain-text table renderer: the budget planner, ``decomp.compare`` and ``tensorpeft compare`` use it.

A leaf of the package root, standard library only, shared by every subpackage.
"""

from __future__ import annotations

__all__ = ["render_table"]


def render_table(title: str | None, header, lines, left=()) -> str:
    """An aligned plain-text table: ``title``, the header, a rule, one line per row.

    Parameters
    ----------
    title : str or None
        The first line (none when ``None``).
    header : sequence of str
        Column names.
    lines : sequence of sequence of str
        The cells, one sequence per row, as many as ``header``.
    left : collection of int
        Columns aligned left (text); the others align right (numbers).

    Returns
    -------
    str
        The table, trailing spaces stripped.
    """
    cells = [tuple(header), *(tuple(line) for line in lines)]
    widths = [max(len(line[k]) for line in cells) for k in range(len(header))]

    def render(line):
        parts = [c.ljust(w) if k in left else c.rjust(w) for k, (c, w) in enumerate(zip(line, widths, strict=True))]
        return "  ".join(parts).rstrip()

    rule = "-" * len(render(header))
    head = [] if title is None else [title]
    return "\n".join([*head, render(header), rule, *(render(line) for line in cells[1:])])
