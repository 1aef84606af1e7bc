"""Rank ⇄ parameter-count maths in plain Python ints: the largest format within a budget.

Every format answers "how many parameters at rank r" exactly (:attr:`TensorNetwork.num_params`); this
module inverts that map. A format class opts in with two classmethods of the format protocol
(``docs/guide/protocol.rst``), which the built-in formats define in :mod:`._stacked` and their own modules:

``from_scale(scale, **kwargs)``
    The format with scalar rank ``scale`` (Tucker-2: ``(scale, scale)`` unless one side is fixed;
    tensor-train: every bond ``scale``, capped at its bound; LoRA²: ``inner`` follows ``rank``).
``max_scale(**kwargs)``
    The largest meaningful ``scale``, or None when unbounded (CP).

A plain :class:`TensorNetwork` needs no hooks: name the rank letters with ``rank_indices=``.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping, Sequence

from ._network import TensorNetwork
from .validate import MAX_RANK, check_positive_int

__all__ = ["BudgetError", "BudgetPlan", "check_budget", "rank_for_budget"]


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


def rank_for_budget(format_cls, budget, *, stacks=None, **kwargs):
    r"""The format of class ``format_cls`` with the largest rank whose parameter count fits ``budget``.

    Parameters
    ----------
    format_cls : type
        A format class: :class:`LoRA`, :class:`Tucker2`, :class:`CP`, :class:`TensorTrain`,
        :class:`OrthogonalProjection`, a subclass defining the ``from_scale``/``max_scale`` hooks
        (see Notes), or :class:`TensorNetwork` itself.
    budget : int
        Maximum number of parameters (``num_params``), a positive integer.
    stacks : list of tuple, dict or plan, optional
        Several stacks sharing one scalar rank (the stacks of a model): each a ``(stack, out_features,
        in_features)`` tuple, a dict of constructor arguments (``heads``, modes, ...) or an object with
        those attributes (a :class:`tensorpeft.nn.StackPlan`, its ``heads`` included when set), merged over
        ``kwargs``. The count is the sum over the stacks, and a scale that one stack refuses (past its
        layer dimension) does not fit.
    **kwargs
        The constructor's other arguments (``stack``, ``out_features``, ``in_features``, ``heads``,
        ``in_modes``, ``out_modes``, ``share_stack``, ``inner``, ...), never ``rank``. Tucker-2 also
        takes ``rank_out=`` or ``rank_in=`` to fix one side (default: ``r_out = r_in``).
        For :class:`TensorNetwork`: ``equation``, ``sizes``, ``stack_indices``, ``out_indices``,
        ``in_indices`` (and optionally ``factor_names``, ``zero_factor``), plus ``rank_indices``, a
        string of the contracted letters that all take the scalar rank, and optionally ``max_rank``.

    Returns
    -------
    TensorNetwork or BudgetPlan
        An instance of ``format_cls``: ``num_params <= budget``, and maximal: the next scalar rank
        would exceed ``budget``, or the rank is already at its bound. With ``stacks``, a
        :class:`BudgetPlan`: the shared scale, one format per stack and whether it is the maximum.

    Raises
    ------
    TypeError
        If ``budget`` is not an integer, ``rank`` is passed, or ``format_cls`` is not a format class
        with the hooks (or the :class:`TensorNetwork` constructor), or a hook returns something else
        (``from_scale`` a non-format, ``max_scale`` a non-integer).
    ValueError
        If ``budget < 1``, or if even rank 1 exceeds it (a :class:`BudgetError` naming the smallest
        format's parameter count), or if the constructor rejects ``kwargs`` (or a stack at rank 1).
        ``stacks`` that is not a non-empty list of tuples or dicts raises naming `stacks`.

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

    The stacks of a model (one scale, the counts summed):

    >>> plan = decomp.rank_for_budget(decomp.Tucker2, 30_000, stacks=[((12,), 768, 768), ((12,), 3072, 768)])
    >>> plan.scale, plan.num_params, plan.formats[1].rank
    (5, 27480, (5, 5))
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
    if stacks is not None:
        return _plan_for_budget(format_cls, budget, stacks, kwargs)
    build, bound = _hooks(format_cls, kwargs)
    smallest = _check_built(build(1), format_cls)  # validates kwargs through the constructor before any bound
    _check_fits(smallest, budget, f"{format_cls.__name__} (rank 1)")
    hi = _check_bound(bound(), format_cls)
    return _largest_within(lambda scale: _check_built(build(scale), format_cls), smallest, budget, hi)


def _check_fits(smallest, budget: int, what: str) -> None:
    """Raise a :class:`BudgetError` when ``smallest`` (rank 1) has more parameters than ``budget``."""
    if smallest.num_params > budget:
        raise BudgetError(
            f"`budget`={budget} is below the {smallest.num_params} parameters of the smallest {what}.", smallest
        )


def _largest_within(build, smallest, budget: int, hi: int | None):
    """The candidate of the largest scale in ``[1, hi]`` whose ``num_params`` fits ``budget``.

    ``build(scale)`` returns a candidate with ``num_params``, or None where the scale is refused (a
    stack of a plan past its layer dimension); fitting must be monotone in the scale. ``smallest`` is
    ``build(1)``, known to fit. An unbounded ``hi`` (None) searches ``[1, budget]``; every bound is
    capped at ``MAX_RANK``, so at most 64 candidates are built.
    """
    hi = min(budget if hi is None else hi, MAX_RANK)

    def fits(candidate):
        return candidate is not None and candidate.num_params <= budget

    if hi > 1:
        largest = build(hi)
        if fits(largest):  # e.g. a huge budget: the largest format, at once
            return largest
        hi -= 1
    lo, best = 1, smallest  # invariant: build(lo) fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        candidate = build(mid)
        if fits(candidate):
            lo, best = mid, candidate
        else:
            hi = mid - 1
    return best


@dataclasses.dataclass(frozen=True)
class BudgetPlan:
    """Formats of several stacks at one shared scalar rank: :func:`rank_for_budget` with ``stacks=``.

    Attributes
    ----------
    scale : int
        The scalar rank shared by every stack.
    formats : tuple of TensorNetwork
        One format per stack, in the order of ``stacks``.
    at_max : bool
        Whether one more scale adds no parameter or is refused by a stack: the formats' maximum.

    Examples
    --------
    >>> from tensorpeft import decomp
    >>> plan = decomp.rank_for_budget(decomp.LoRA, 1_000, stacks=[((2,), 16, 16), ((), 32, 16)])
    >>> plan.scale, plan.num_params, [f.num_params for f in plan.formats]
    (8, 896, [512, 384])
    """

    scale: int
    formats: tuple[TensorNetwork, ...]
    at_max: bool = False

    @property
    def num_params(self) -> int:
        """Parameters of all the stacks together."""
        return sum(f.num_params for f in self.formats)


def _check_stacks(stacks) -> list[dict]:
    """``stacks`` as a list of constructor-argument dicts (TypeError/ValueError naming `stacks`)."""
    if isinstance(stacks, str | bytes | Mapping) or not isinstance(stacks, Sequence):
        raise TypeError(
            "`stacks` must be a list of (stack, out_features, in_features) tuples, of dicts of constructor "
            f"arguments or of stack plans, got {type(stacks).__name__}."
        )
    if not stacks:
        raise ValueError("`stacks` must name at least one stack, got an empty list.")
    out = []
    for k, item in enumerate(stacks):
        if isinstance(item, Mapping):
            out.append(dict(item))
        elif isinstance(item, tuple | list) and len(item) == 3:
            out.append(dict(zip(("stack", "out_features", "in_features"), item, strict=True)))
        elif all(hasattr(item, a) for a in ("stack", "out_features", "in_features")):  # a StackPlan of nn
            out.append({"stack": item.stack, "out_features": item.out_features, "in_features": item.in_features})
            if getattr(item, "heads", None) is not None:
                out[-1]["heads"] = item.heads
        else:
            raise TypeError(
                f"`stacks[{k}]` must be a (stack, out_features, in_features) tuple or a dict of constructor "
                f"arguments, got {item!r}."
            )
        if "rank" in out[-1]:
            raise TypeError(f"`stacks[{k}]` names `rank`, which is what rank_for_budget chooses.")
    return out


def _plan_for_budget(format_cls, budget: int, stacks, kwargs) -> BudgetPlan:
    """One shared scale for every stack of ``stacks``, the largest whose summed count fits ``budget``."""
    hooks = [_hooks(format_cls, kwargs | item) for item in _check_stacks(stacks)]

    def build(scale):
        try:
            return BudgetPlan(scale, tuple(_check_built(make(scale), format_cls) for make, _ in hooks))
        except ValueError:
            if scale == 1:  # the arguments themselves are wrong: say so
                raise
            return None  # a stack refuses this scale (past its layer dimension)

    smallest = build(1)
    _check_fits(smallest, budget, f"{format_cls.__name__} on these {len(hooks)} stack(s) (rank 1)")
    bounds = [_check_bound(bound(), format_cls) for _, bound in hooks]
    best = _largest_within(build, smallest, budget, None if None in bounds else max(bounds))
    following = build(best.scale + 1) if best.scale < MAX_RANK else None
    at_max = following is None or following.num_params == best.num_params
    return dataclasses.replace(best, at_max=at_max)


def _check_bound(hi, format_cls):
    """The ``max_scale`` of a format: None or a positive int (TypeError/ValueError naming `format_cls` otherwise)."""
    if hi is None:
        return None
    if isinstance(hi, bool) or not isinstance(hi, numbers.Integral):
        raise TypeError(
            f"`format_cls`={format_cls.__name__}: `max_scale` must return a positive int or None, got {hi!r}."
        )
    if hi < 1:
        raise ValueError(f"`format_cls`={format_cls.__name__}: `max_scale` must be at least 1, got {hi!r}.")
    return int(hi)


def _check_built(fmt, format_cls):
    """The format a ``from_scale`` hook built, which must be a TensorNetwork with an int ``num_params``."""
    if not isinstance(fmt, TensorNetwork):
        raise TypeError(
            f"`format_cls`={format_cls.__name__}: `from_scale` must return a format, got {type(fmt).__name__}."
        )
    return fmt


def _hooks(format_cls, kwargs):
    """``(build(scale), bound())`` for ``format_cls``: its own hooks, or the generic network's."""
    if hasattr(format_cls, "from_scale"):
        max_scale = getattr(format_cls, "max_scale", None)

        def bound():
            return None if max_scale is None else max_scale(**kwargs)

        return (lambda scale: format_cls.from_scale(scale, **kwargs)), bound
    if format_cls.__init__ is TensorNetwork.__init__:
        return _network_hooks(format_cls, dict(kwargs))
    raise TypeError(
        f"`format_cls`={format_cls.__name__} has no rank hooks: define classmethods `from_scale(scale, **kwargs)` "
        "(the format at scalar rank `scale`) and `max_scale(**kwargs)` (its bound, or None) to use rank_for_budget."
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
BudgetPlan.__module__ = "tensorpeft.decomp"
