"""Contraction execution with paths chosen once per shape and cached.

opt_einsum chooses the pairwise order (the part that matters: a bad order for a tensor train costs
orders of magnitude). Execution is ours: each pairwise step is handed to the array library's own
``einsum`` (numpy or torch). For torch this measured faster per training step than
``opt_einsum.contract_expression(..., backend="torch")``, whose tensordot/transposes make the backward
pass slower (see ``benchmarks/bench_apply.py``).
"""

from __future__ import annotations

from functools import lru_cache

import opt_einsum

from ._backend import Ops

__all__ = ["contract", "contraction_plan"]


@lru_cache(maxsize=1024)
def contraction_plan(equation: str, shapes: tuple[tuple[int, ...], ...]) -> tuple[tuple[tuple[int, ...], str], ...]:
    """Return the pairwise steps ``((positions, einsum), ...)`` for ``equation`` on ``shapes``.

    Positions index the current operand list; the result of each step is appended to its end.
    """
    if len(shapes) == 1:
        return (((0,), equation),)
    _, info = opt_einsum.contract_path(equation, *shapes, shapes=True, optimize="auto")
    return tuple((tuple(step[0]), step[2]) for step in info.contraction_list)


def contract(equation: str, *operands, ops: Ops):
    """Contract ``operands`` according to ``equation`` using the cached plan for their shapes."""
    plan = contraction_plan(equation, tuple(tuple(op.shape) for op in operands))
    stack = list(operands)
    for positions, step in plan:
        args = [stack.pop(p) for p in positions]
        stack.append(ops.einsum(step, *args))
    (result,) = stack
    return result
