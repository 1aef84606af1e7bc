"""The ``compare`` report: every built-in format at one parameter budget, side by side."""

from __future__ import annotations

import dataclasses
import math

from .._table import render_table
from ._network import TensorNetwork
from ._ranks import BudgetError, check_budget, rank_for_budget
from ._stacked import builtin_formats
from .validate import check_size, check_size_tuple

__all__ = ["Comparison", "ComparisonRow", "compare"]


@dataclasses.dataclass(frozen=True)
class ComparisonRow:
    """One format at the budget of a :func:`compare` table.

    The numeric fields are None (and ``note`` says why) when the format cannot fit the budget.
    ``vs_dense`` is dense parameters / ``num_params``; ``vs_lora`` is the parameters LoRA needs for
    ``slice_rank`` on every slice / ``num_params``.

    Attributes
    ----------
    name : str
        The format's class name.
    alias : str
        The name the format goes by in its paper.
    rank : int or tuple of int or None
        The largest rank that fits the budget.
    num_params : int or None
        Parameters of the format at that rank.
    slice_rank : int or None
        Rank of each ``d_out × d_in`` slice of the update.
    vs_dense, vs_lora : float or None
        Parameter ratios against the dense update and against LoRA (see above).
    note : str
        Why the numeric fields are None, or ``""``.
    format : TensorNetwork or None
        The format itself (not in the repr, not compared).

    Examples
    --------
    >>> from tensorpeft import decomp
    >>> row = decomp.compare(budget=600, stack=(4,), out_features=16, in_features=16).rows[0]
    >>> row.name, row.rank, row.num_params, row.vs_dense
    ('LoRA', 4, 512, 2.0)
    """

    name: str
    alias: str
    rank: int | tuple[int, ...] | None
    num_params: int | None
    slice_rank: int | None
    vs_dense: float | None
    vs_lora: float | None
    note: str = ""
    format: TensorNetwork | None = dataclasses.field(default=None, repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Every built-in format at one parameter budget (the result of :func:`compare`).

    ``rows`` holds one :class:`ComparisonRow` per format; ``str(table)`` renders an aligned
    plain-text table and :meth:`to_dicts` plain Python values (for JSON or a DataFrame).

    Attributes
    ----------
    budget : int
        The parameter budget.
    stack : tuple of int
        Sizes of the stacked modes.
    out_features, in_features : int
        Matrix shape ``d_out × d_in``.
    rows : tuple of ComparisonRow
        One row per format.

    Examples
    --------
    >>> from tensorpeft import decomp
    >>> table = decomp.compare(budget=600, stack=(4,), out_features=16, in_features=16)
    >>> table.budget, len(table), table.dense_params
    (600, 5, 1024)
    """

    budget: int
    stack: tuple[int, ...]
    out_features: int
    in_features: int
    rows: tuple[ComparisonRow, ...]

    @property
    def dense_params(self) -> int:
        """Parameters of the dense update, ``prod(stack)·d_out·d_in``."""
        return math.prod(self.stack) * self.out_features * self.in_features

    def __iter__(self):
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def to_dicts(self) -> list[dict]:
        """One dict per row with every field but ``format`` (plain ints, floats, tuples, str)."""
        return [{k: v for k, v in dataclasses.asdict(row).items() if k != "format"} for row in self.rows]

    def __str__(self) -> str:
        header = ("format", "paper", "rank", "params", "slice rank", "vs dense", "vs LoRA", "note")
        cells = [header]
        for row in self.rows:
            cells.append(
                (
                    row.name,
                    row.alias,
                    _text(row.rank),
                    _text(row.num_params),
                    _text(row.slice_rank),
                    _text(row.vs_dense, ratio=True),
                    _text(row.vs_lora, ratio=True),
                    row.note,
                )
            )
        shape = f"{self.out_features}×{self.in_features}"
        title = f"budget {self.budget:,} params; stack {self.stack}, {shape} ({self.dense_params:,} dense)"
        return render_table(title, header, cells[1:], left=(0, 1, 7))


def _text(value, ratio: bool = False) -> str:
    if value is None:
        return "-"
    if ratio:
        return f"{value:,.1f}x"
    if isinstance(value, tuple):
        return "(" + ",".join(str(v) for v in value) + ")"
    return f"{value:,}"


def compare(
    budget,
    stack,
    out_features,
    in_features,
    *,
    heads=None,
    in_modes=None,
    out_modes=None,
    share_stack=True,
    inner=None,
) -> Comparison:
    r"""Every built-in format at the largest rank that fits ``budget``, side by side.

    Parameters
    ----------
    budget : int
        Parameter budget, a positive integer.
    stack : tuple of int
        Sizes of the stacked modes (``()`` for one matrix).
    out_features, in_features : int
        Matrix shape ``d_out × d_in``.
    heads : int, optional
        Passed to :class:`CP` (LoRTA's head split of the output mode).
    in_modes, out_modes : tuple of int, optional
        Passed to :class:`TensorTrain` (default: balanced factorizations).
    share_stack : bool
        Passed to :class:`TensorTrain`.
    inner : int, optional
        Fixed ``inner`` width of :class:`OrthogonalProjection` (default: equal to its rank).

    Returns
    -------
    Comparison
        One :class:`ComparisonRow` per format, in the order LoRA, Tucker2, CP, TensorTrain,
        OrthogonalProjection, each from :func:`rank_for_budget`. A format whose rank 1 already exceeds
        the budget gets a row with a ``note`` and no numbers.

    Raises
    ------
    TypeError, ValueError
        For a bad ``budget``, shape or format argument (named), as :func:`rank_for_budget` raises.

    Notes
    -----
    With :math:`P` the format's parameter count, :math:`S = \prod(\text{stack})` and :math:`\rho` its
    per-slice rank: ``vs_dense`` :math:`= S d_\text{out} d_\text{in} / P` and ``vs_lora``
    :math:`= S \rho (d_\text{in} + d_\text{out}) / P`, the parameters LoRA needs to reach the same
    rank on every slice, relative to this format's.

    References
    ----------
    Hu et al., "LoRA", arXiv:2106.09685; Bershatsky et al., "LoTR", arXiv:2402.01376; Hounie et al.,
    "LoRTA", arXiv:2410.04060; Anjum et al., "TT-LoRA", arXiv:2408.01008; Zhang et al., "LoRA²",
    arXiv:2408.06854.

    Examples
    --------
    >>> from tensorpeft import decomp
    >>> table = decomp.compare(budget=75_000, stack=(24,), out_features=768, in_features=768)
    >>> [(row.name, row.rank, row.num_params) for row in table.rows[:3]]
    [('LoRA', 2, 73728), ('Tucker2', (32, 32), 73728), ('CP', 48, 74880)]
    >>> row = table.rows[1]
    >>> row.slice_rank, round(row.vs_lora, 2)
    (32, 16.0)
    >>> decomp.compare(30_000, (24,), 768, 768).rows[0].note
    'does not fit: rank 1 needs 36,864 params'
    """
    budget = check_budget(budget)
    stack = check_size_tuple(stack, "stack")
    out_features = check_size(out_features, "out_features")
    in_features = check_size(in_features, "in_features")
    common = {"stack": stack, "out_features": out_features, "in_features": in_features}
    options = {"heads": heads, "in_modes": in_modes, "out_modes": out_modes, "share_stack": share_stack, "inner": inner}
    dense = math.prod(stack) * out_features * in_features
    rows = []
    for cls, alias, names in builtin_formats():
        try:
            fmt = rank_for_budget(cls, budget, **common, **{n: options[n] for n in names})
        except BudgetError as err:
            note = f"does not fit: rank 1 needs {err.smallest.num_params:,} params"
            rows.append(ComparisonRow(cls.__name__, alias, None, None, None, None, None, note))
            continue
        rho = fmt.slice_rank
        lora = math.prod(stack) * rho * (in_features + out_features)
        rows.append(
            ComparisonRow(
                cls.__name__,
                alias,
                fmt.rank,
                fmt.num_params,
                rho,
                dense / fmt.num_params,
                lora / fmt.num_params,
                format=fmt,
            )
        )
    return Comparison(budget, stack, out_features, in_features, tuple(rows))
