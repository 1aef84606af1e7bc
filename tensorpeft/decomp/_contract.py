"""Contraction execution with paths chosen once per shape and cached.

opt_einsum chooses the pairwise order (the part that matters: a bad order for a tensor train costs
orders of magnitude); the plan is cached per ``(equation, shapes)``. Execution is ours, and for torch
it is layout-aware: a pairwise step that joins the activation (``x`` of a factored apply, marked by
the caller with ``activation=``, or a result derived from it) with a factor, and reduces to one matrix
product, runs as ``act2d @ factor2d`` with the factor made contiguous as a ``(small, big)`` matrix.
torch computes the gradient of a matmul operand in that operand's own memory layout, and a gradient
GEMM whose output is ``(d, r)`` with ``r`` ~ 8 ran about 2× slower here than the same product written
``(r, d)``; copying the factor (a few kB) fixes the layout of its gradient. Every other step (factor
with factor, batched or summed indices, numpy arrays) goes to the array library's own ``einsum``.

Executors, measured by ``benchmarks/bench_apply.py`` on the adapter-only training step (forward +
backward of a 12-layer 768×768 stack, 1,024 tokens, float32, every built-in format at LoRA r=8's
parameter count; 2026-11-22, 2-vCPU AMD EPYC, torch 2.13 CPU, 1 thread, process CPU time, 10
interleaved rounds, paired ratios; table in ``benchmarks/README.md``):

- ``"gemm"`` (default): fastest or tied on every format.
- ``"pairwise"``, each step through ``torch.einsum`` (the previous default): 1.46× slower on LoRA and
  1.41× on LoRA², within ±4% (noise) on Tucker-2, CP and the tensor trains. torch.einsum runs a step as
  ``bmm`` on permuted views, so a rank-8 factor's gradient comes out as a narrow ``(d, 8)`` GEMM.
- ``"expression"``, ``opt_einsum.contract_expression(..., backend="torch")``: 1.41× slower on LoRA,
  2.19× on the per-slice tensor train, within ±7% elsewhere.
- ``"einsum"``, one ``torch.einsum`` of the whole equation (torch orders it on every call): 1.08-2.64×
  slower on every format.

``executor(name)`` switches executors, for benchmarking only.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from functools import lru_cache
from typing import NamedTuple

import opt_einsum

from ._backend import Ops

__all__ = ["EXECUTORS", "contract", "executor"]

EXECUTORS = ("gemm", "pairwise", "expression", "einsum")
_current = {"executor": "gemm"}


@contextmanager
def executor(name: str):
    """Run the enclosed contractions with executor ``name`` (one of :data:`EXECUTORS`); for benchmarks."""
    if name not in EXECUTORS:
        raise ValueError(f"`name` must be one of {EXECUTORS}, got {name!r}.")
    previous = _current["executor"]
    _current["executor"] = name
    try:
        yield
    finally:
        _current["executor"] = previous


class _Gemm(NamedTuple):
    """A pairwise step done as one matrix product ``act2d @ fac2d`` (torch only)."""

    act: int  # which of the two popped operands is the activation
    act_perm: tuple[int, ...]
    act_shape: tuple[int, int]  # (M, K)
    fac_perm: tuple[int, ...]
    fac_shape: tuple[int, int]  # (N, K) when ``transpose`` else (K, N); always (small, big)
    transpose: bool
    result_shape: tuple[int, ...]  # (*M modes, *N modes)
    out_perm: tuple[int, ...]


class _Step(NamedTuple):
    positions: tuple[int, ...]
    equation: str
    gemm: _Gemm | None


def _gemm_spec(equation: str, sizes: dict[str, int], act: int) -> _Gemm | None:
    """Describe ``equation`` (two operands, ``act`` the activation) as one matrix product, or None."""
    lhs, out = equation.split("->")
    terms = lhs.split(",")
    if len(terms) != 2:
        return None
    a, b = terms
    shared = set(a) & set(b)
    contracted = shared - set(out)
    if not contracted or shared & set(out):
        return None  # an outer or a batched (Hadamard) product
    if any(c not in out for c in (set(a) | set(b)) - shared):
        return None  # an index summed inside one operand
    ta, tf = terms[act], terms[1 - act]
    # Rows and contracted modes in the activation's own order (no copy of the activation); the
    # factor's free modes in the order of the output, so that a final step needs no permutation.
    m = [c for c in ta if c not in shared]
    k = [c for c in ta if c in shared]
    n = [c for c in out if c in tf]
    size_m = math.prod(sizes[c] for c in m)
    size_k = math.prod(sizes[c] for c in k)
    size_n = math.prod(sizes[c] for c in n)
    transpose = size_k >= size_n
    fac_order = n + k if transpose else k + n
    result = m + n
    return _Gemm(
        act=act,
        act_perm=tuple(ta.index(c) for c in m + k),
        act_shape=(size_m, size_k),
        fac_perm=tuple(tf.index(c) for c in fac_order),
        fac_shape=(size_n, size_k) if transpose else (size_k, size_n),
        transpose=transpose,
        result_shape=tuple(sizes[c] for c in result),
        out_perm=tuple(result.index(c) for c in out),
    )


@lru_cache(maxsize=1024)
def _plan(equation: str, shapes: tuple[tuple[int, ...], ...], activation: int | None = None) -> tuple[_Step, ...]:
    """Pairwise steps of ``equation``, with a matrix-product description where one may be used.

    A step gets one when it joins the activation (or a result derived from it) with a factor.
    """
    if len(shapes) == 1:
        return (_Step((0,), equation, None),)
    _, info = opt_einsum.contract_path(equation, *shapes, shapes=True, optimize="auto")
    sizes = {
        c: n
        for term, shape in zip(equation.split("->")[0].split(","), shapes, strict=True)
        for c, n in zip(term, shape, strict=True)
    }
    derived = [k == activation for k in range(len(shapes))]  # which operands hold the activation
    steps = []
    for step in info.contraction_list:
        positions, step_equation = tuple(step[0]), step[2]
        flags = [derived.pop(p) for p in positions]
        gemm = None
        if len(flags) == 2 and sum(flags) == 1:
            gemm = _gemm_spec(step_equation, sizes, act=flags.index(True))
        derived.append(any(flags))
        steps.append(_Step(positions, step_equation, gemm))
    return tuple(steps)


@lru_cache(maxsize=256)
def _expression(equation: str, shapes: tuple[tuple[int, ...], ...]):
    return opt_einsum.contract_expression(equation, *shapes, optimize="auto")


def _run_gemm(spec: _Gemm, a, b):
    act, fac = (a, b) if spec.act == 0 else (b, a)
    act2d = act.permute(spec.act_perm).reshape(spec.act_shape)
    fac2d = fac.permute(spec.fac_perm).reshape(spec.fac_shape).contiguous()
    result = act2d @ (fac2d.T if spec.transpose else fac2d)
    return result.reshape(spec.result_shape).permute(spec.out_perm)


_EINSUM_LETTERS = "".join(opt_einsum.get_symbol(k) for k in range(52))  # what numpy and torch accept


@lru_cache(maxsize=1024)
def einsum_letters(equation: str) -> str:
    """``equation`` with any index outside ``a-z``/``A-Z`` renamed to a free one of those 52 letters.

    numpy's and torch's ``einsum`` accept only these letters; opt_einsum's symbols past the 52nd (which
    generated equations may use) are Unicode. Raises ValueError when the equation has more than 52
    distinct indices: no einsum of numpy or torch can run it.
    """
    used = sorted(set(equation) - set(",->"))
    if len(used) > len(_EINSUM_LETTERS):
        raise ValueError(
            f"`equation` has {len(used)} distinct indices; numpy's and torch's einsum support "
            f"{len(_EINSUM_LETTERS)} (a-z, A-Z): use a format with fewer modes."
        )
    foreign = [c for c in used if c not in _EINSUM_LETTERS]
    if not foreign:
        return equation
    free = [c for c in _EINSUM_LETTERS if c not in used]
    return equation.translate(str.maketrans(dict(zip(foreign, free, strict=False))))


def contract(equation: str, *operands, ops: Ops, activation: int | None = None):
    """Contract ``operands`` according to ``equation`` using the cached plan for their shapes.

    ``activation`` is the position of the big operand (the input ``x`` of a factored apply): the
    steps that join it, or results derived from it, with a factor run as layout-aware matrix
    products under the ``"gemm"`` executor. Without it every step is an ``einsum``. Indices outside
    ``a-z``/``A-Z`` are renamed first (:func:`einsum_letters`).
    """
    equation = einsum_letters(equation)
    shapes = tuple(tuple(op.shape) for op in operands)
    name = _current["executor"]
    if name == "einsum" and len(operands) > 1:
        return ops.einsum(equation, *operands)
    if name == "expression" and len(operands) > 1:
        return _expression(equation, shapes)(*operands, backend=ops.name)
    fast = name == "gemm" and ops.name == "torch"
    stack = list(operands)
    for step in _plan(equation, shapes, activation if fast else None):
        args = [stack.pop(p) for p in step.positions]
        if fast and step.gemm is not None:
            stack.append(_run_gemm(step.gemm, *args))
        else:
            stack.append(ops.einsum(step.equation, *args))
    (result,) = stack
    return result
