"""Rank ⇄ parameter-count maths in plain Python ints: the largest format within a budget.

Every format answers "how many parameters at rank r" exactly (:attr:`TensorNetwork.num_params`); this
module inverts that map. A format class opts in with two classmethods, which the built-in formats
define in :mod:`._stacked` and their own modules:

``_from_scale(scale, **kwargs)``
    The format with scalar rank ``scale`` (Tucker-2: ``(scale, scale)`` unless one side is fixed;
    tensor-train: every bond ``scale``, capped at its bound; LoRA²: ``inner`` follows ``rank``).
``_max_scale(**kwargs)``
    The largest meaningful ``scale``, or None when unbounded (CP).

A plain :class:`TensorNetwork` needs no hooks: name the rank letters with ``rank_indices=``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping

from ._cp import CP
from ._lora import LoRA
from ._network import TensorNetwork
from ._orthogonal import OrthogonalProjection
from ._stacked import StackedFormat
from ._tt import TensorTrain
from ._tucker2 import Tucker2
from ._validate import MAX_RANK, check_positive_int, check_size, check_size_tuple

__all__ = ["BudgetError", "Comparison", "ComparisonRow", "compare", "rank_for_budget"]


class BudgetError(ValueError):
    """Even the smallest format (scalar rank 1) has more parameters than the budget.

    ``smallest`` holds that format, so callers can report its parameter count.

    Parameters
    ----------
    message : str
        The error message.
    smallest : TensorNetwork
        The smallest format (scalar rank 1); also the attribute ``smallest``.

    Examples
    --------
    >>> from tensorpeft import decomp
    >>> try:
    ...     decomp.rank_for_budget(decomp.LoRA, 1, stack=(4,), out_features=16, in_features=16)
    ... except decomp.BudgetError as err:
    ...     err.smallest.num_params
    128
    """

    def __init__(self, message: str, smallest: TensorNetwork):
        super().__init__(message)
        self.smallest = smallest


def check_budget(budget) -> int:
    """Return ``budget`` as a Python int >= 1; raise TypeError/ValueError naming `budget` otherwise."""
    if isinstance(budget, bool) or not isinstance(budget, numbers.Integral):
        raise TypeError(
            f"`budget` must be a positive integer parameter count, got {budget!r} ({type(budget).__name__})."
        )
    if budget < 1:
        raise ValueError(f"`budget` must be a positive integer parameter count, got {budget!r}.")
    return int(budget)


def rank_for_budget(format_cls, budget, **kwargs):
    r"""The format of class ``format_cls`` with the largest rank whose parameter count fits ``budget``.

    Parameters
    ----------
    format_cls : type
        A format class: :class:`LoRA`, :class:`Tucker2`, :class:`CP`, :class:`TensorTrain`,
        :class:`OrthogonalProjection`, a subclass defining the ``_from_scale``/``_max_scale`` hooks
        (see Notes), or :class:`TensorNetwork` itself.
    budget : int
        Maximum number of parameters (``num_params``), a positive integer.
    **kwargs
        The constructor's other arguments (``stack``, ``out_features``, ``in_features``, ``heads``,
        ``in_modes``, ``out_modes``, ``share_stack``, ``inner``, ...), never ``rank``. Tucker-2 also
        takes ``rank_out=`` or ``rank_in=`` to fix one side (default: ``r_out = r_in``).
        For :class:`TensorNetwork`: ``equation``, ``sizes``, ``stack_indices``, ``out_indices``,
        ``in_indices`` (and optionally ``factor_names``, ``zero_factor``), plus ``rank_indices``, a
        string of the contracted letters that all take the scalar rank, and optionally ``max_rank``.

    Returns
    -------
    TensorNetwork
        An instance of ``format_cls``: ``num_params <= budget``, and maximal: the next scalar rank
        would exceed ``budget``, or the rank is already at its bound.

    Raises
    ------
    TypeError
        If ``budget`` is not an integer, ``rank`` is passed, or ``format_cls`` is not a format class
        with the hooks (or the :class:`TensorNetwork` constructor), or a hook returns something else
        (``_from_scale`` a non-format, ``_max_scale`` a non-integer).
    ValueError
        If ``budget < 1``, or if even rank 1 exceeds it (a :class:`BudgetError` naming the smallest
        format's parameter count), or if the constructor rejects ``kwargs``.

    Notes
    -----
    The scalar rank ``s`` is found by binary search on :math:`[1, s_\text{max}]` in integer arithmetic,
    assuming ``num_params`` does not decrease as ``s`` grows (true of every built-in format, and of any
    network whose rank letters appear in its factors). Unbounded formats (CP, a network without
    ``max_rank``) search :math:`[1, \text{budget}]`, enough because a rank letter in a factor costs at
    least one parameter per unit of rank. Every bound is capped at ``2**63 - 1``, the largest rank of an
    index, so the search takes at most 64 steps for any format and any budget (a custom format whose
    count stops growing with the scale included), and the largest format is tried first: a budget
    above it is answered at once. Counts per format:

    - LoRA :math:`\prod(\text{stack})\, r (d_\text{in} + d_\text{out})`;
    - Tucker-2 :math:`r_\text{out} d_\text{out} + r_\text{in} d_\text{in}
      + \prod(\text{stack})\, r_\text{out} r_\text{in}`;
    - CP :math:`R(\sum \text{stack} + d_\text{out} + d_\text{in})` (with heads
      :math:`R(\sum \text{stack} + H + d_\text{out}/H + d_\text{in})`);
    - tensor-train :math:`\sum_k r_{k-1} n_k r_k`, every bond ``min(s, bound_k)``;
    - LoRA² :math:`\prod(\text{stack})\,(k(d_\text{in} + d_\text{out}) + 2kr + r)` with ``k = r = s``
      unless ``inner`` is fixed.

    References
    ----------
    Bershatsky et al., "LoTR: Low Tensor Rank Weight Adaptation", arXiv:2402.01376 (the Tucker-2
    counts); Hounie et al., "LoRTA", arXiv:2410.04060 (860 R); Anjum et al., "TT-LoRA",
    arXiv:2408.01008 (990 at rank 5).

    Examples
    --------
    >>> from tensorpeft import decomp
    >>> f = decomp.rank_for_budget(decomp.Tucker2, 14_000, stack=(24,), out_features=768, in_features=768)
    >>> f.rank, f.num_params
    ((8, 8), 13824)
    >>> decomp.rank_for_budget(decomp.Tucker2, 14_000, stack=(24,), out_features=768, in_features=768, rank_out=4).rank
    (4, 12)
    >>> f = decomp.rank_for_budget(decomp.CP, 10_000, stack=(12, 4), out_features=768, in_features=768, heads=12)
    >>> f.rank, f.num_params
    (11, 9460)
    >>> decomp.rank_for_budget(decomp.LoRA, 1_000, stack=(24,), out_features=768, in_features=768)
    Traceback (most recent call last):
    ...
    tensorpeft.decomp.BudgetError: `budget`=1000 is below the 36864 parameters of the smallest LoRA (rank 1).

    A custom network, with its rank letters named:

    >>> f = decomp.rank_for_budget(
    ...     decomp.TensorNetwork, 100, equation="or,lrs,is->loi", sizes={"o": 6, "l": 4, "i": 5},
    ...     stack_indices="l", out_indices="o", in_indices="i", rank_indices="rs")
    >>> f.sizes["r"], f.num_params
    (3, 69)
    """
    budget = check_budget(budget)
    if not isinstance(format_cls, type) or not issubclass(format_cls, TensorNetwork):
        raise TypeError(
            "`format_cls` must be a format class such as decomp.Tucker2 (a TensorNetwork subclass), "
            f"got {format_cls!r}."
        )
    if "rank" in kwargs:
        raise TypeError(
            "`rank` is what rank_for_budget chooses; pass the other constructor arguments only "
            "(for Tucker2, fix one side with `rank_out=` or `rank_in=`)."
        )
    build, bound = _hooks(format_cls, kwargs)
    smallest = _check_built(build(1), format_cls)  # validates kwargs through the constructor before any bound
    if smallest.num_params > budget:
        raise BudgetError(
            f"`budget`={budget} is below the {smallest.num_params} parameters of the smallest "
            f"{format_cls.__name__} (rank 1).",
            smallest,
        )
    hi = _check_bound(bound(), format_cls)
    hi = min(budget if hi is None else hi, MAX_RANK)
    if hi > 1:
        largest = _check_built(build(hi), format_cls)
        if largest.num_params <= budget:  # e.g. a huge budget: the largest format, at once
            return largest
        hi -= 1
    lo, best = 1, smallest  # invariant: build(lo).num_params <= budget
    while lo < hi:
        mid = (lo + hi + 1) // 2
        candidate = _check_built(build(mid), format_cls)
        if candidate.num_params <= budget:
            lo, best = mid, candidate
        else:
            hi = mid - 1
    return best


def _check_bound(hi, format_cls):
    """The ``_max_scale`` of a format: None or a positive int (TypeError/ValueError naming `format_cls` otherwise)."""
    if hi is None:
        return None
    if isinstance(hi, bool) or not isinstance(hi, numbers.Integral):
        raise TypeError(
            f"`format_cls`={format_cls.__name__}: `_max_scale` must return a positive int or None, got {hi!r}."
        )
    if hi < 1:
        raise ValueError(f"`format_cls`={format_cls.__name__}: `_max_scale` must be at least 1, got {hi!r}.")
    return int(hi)


def _check_built(fmt, format_cls):
    """The format a ``_from_scale`` hook built, which must be a TensorNetwork with an int ``num_params``."""
    if not isinstance(fmt, TensorNetwork):
        raise TypeError(
            f"`format_cls`={format_cls.__name__}: `_from_scale` must return a format, got {type(fmt).__name__}."
        )
    return fmt


def _hooks(format_cls, kwargs):
    """``(build(scale), bound())`` for ``format_cls``: its own hooks, or the generic network's."""
    if hasattr(format_cls, "_from_scale"):
        max_scale = getattr(format_cls, "_max_scale", None)

        def bound():
            return None if max_scale is None else max_scale(**kwargs)

        return (lambda scale: format_cls._from_scale(scale, **kwargs)), bound
    if format_cls.__init__ is TensorNetwork.__init__:
        return _network_hooks(format_cls, dict(kwargs))
    raise TypeError(
        f"`format_cls`={format_cls.__name__} has no rank hooks: define classmethods `_from_scale(scale, **kwargs)` "
        "(the format at scalar rank `scale`) and `_max_scale(**kwargs)` (its bound, or None) to use rank_for_budget."
    )


def _network_hooks(format_cls, kwargs):
    """Hooks for a plain TensorNetwork whose letters ``rank_indices`` all take the scalar rank."""
    rank_indices = kwargs.pop("rank_indices", None)
    max_rank = kwargs.pop("max_rank", None)
    if not isinstance(rank_indices, str) or not rank_indices:
        raise TypeError(
            "`rank_indices` must name the rank letters of the equation (a non-empty str such as 'r') "
            f"to use rank_for_budget with {format_cls.__name__}, got {rank_indices!r}."
        )
    if max_rank is not None:
        max_rank = check_positive_int(max_rank, "max_rank")
    if not isinstance(kwargs.get("sizes", {}), Mapping):
        raise TypeError(f"`sizes` must be a mapping from index letter to size, got {type(kwargs['sizes']).__name__}.")
    equation = kwargs.get("equation")
    output = equation.replace(" ", "").split("->")[-1] if isinstance(equation, str) else ""
    letters = set(equation) if isinstance(equation, str) else set()
    for c in rank_indices:
        if c not in letters or c in output:
            raise ValueError(
                f"`rank_indices`={rank_indices!r}: {c!r} must be a contracted letter of `equation`={equation!r} "
                "(in a factor, not in the output)."
            )
    sizes = dict(kwargs.pop("sizes", {}))

    def build(scale):
        return format_cls(sizes=sizes | dict.fromkeys(rank_indices, scale), **kwargs)

    return build, lambda: max_rank


BudgetError.__module__ = "tensorpeft.decomp"  # as users import it; shows so in tracebacks


# --------------------------------------------------------------------------- compare

#: The built-in formats in table order, with the name of the paper each one implements.
BUILTIN_FORMATS: tuple[tuple[type[StackedFormat], str], ...] = (
    (LoRA, "LoRA"),
    (Tucker2, "LoTR"),
    (CP, "LoRTA"),
    (TensorTrain, "TT-LoRA"),
    (OrthogonalProjection, "LoRA²"),
)


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
        widths = [max(len(line[k]) for line in cells) for k in range(len(header))]
        left = {0, 1, 7}  # text columns; numbers align right

        def render(line):
            parts = [c.ljust(w) if k in left else c.rjust(w) for k, (c, w) in enumerate(zip(line, widths, strict=True))]
            return "  ".join(parts).rstrip()

        shape = f"{self.out_features}×{self.in_features}"
        title = f"budget {self.budget:,} params; stack {self.stack}, {shape} ({self.dense_params:,} dense)"
        rule = "-" * len(render(header))
        return "\n".join([title, render(header), rule, *(render(line) for line in cells[1:])])


def _text(value, ratio: bool = False) -> str:
    if value is None:
        return "-"
    if ratio:
        return f"{value:,.1f}x"
    if isinstance(value, tuple):
        return "(" + ",".join(str(v) for v in value) + ")"
    return f"{value:,}"


def slice_rank(fmt: TensorNetwork) -> int | None:
    """Upper bound on the rank of every slice ``ΔW_s`` of a built-in format (None for others).

    Tucker-2: ``min(r_out, r_in)``; CP: ``R`` (each slice is ``out·diag(·)·inᵀ``, per head block);
    tensor-train: the bond between the last input core and the first output core; LoRA and LoRA²: ``r``.
    Every bound is also capped at ``min(d_out, d_in)``.
    """
    if isinstance(fmt, LoRA | OrthogonalProjection | CP):
        r = fmt.rank
    elif isinstance(fmt, Tucker2):
        r = min(fmt.rank)
    elif isinstance(fmt, TensorTrain):
        r = fmt.rank[(len(fmt.stack) if fmt.share_stack else 0) + len(fmt.in_modes) - 1]
    else:
        return None
    return min(r, fmt.out_features, fmt.in_features)


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
    extra = {
        CP: {"heads": heads},
        TensorTrain: {"in_modes": in_modes, "out_modes": out_modes, "share_stack": share_stack},
        OrthogonalProjection: {"inner": inner},
    }
    dense = math.prod(stack) * out_features * in_features
    rows = []
    for cls, alias in BUILTIN_FORMATS:
        try:
            fmt = rank_for_budget(cls, budget, **common, **extra.get(cls, {}))
        except BudgetError as err:
            note = f"does not fit: rank 1 needs {err.smallest.num_params:,} params"
            rows.append(ComparisonRow(cls.__name__, alias, None, None, None, None, None, note))
            continue
        rho = slice_rank(fmt)
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
