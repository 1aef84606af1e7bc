"""Contraction execution with paths chosen once per shape and cached.

opt_einsum chooses the pairwise order (the part that matters: a bad order for a tensor train costs
orders of magnitude); the plan is cached per ``(equation, shapes)``. Execution is ours, and for torch
it is layout-aware: a pairwise step between a big operand (the activation) and a small one (a factor)
that reduces to one matrix product runs as ``act2d @ factor2d`` with the factor made contiguous as a
``(small, big)`` matrix. torch computes the gradient of a matmul operand in that operand's own memory
layout, and a gradient GEMM whose output is ``(d, r)`` with ``r`` ~ 8 ran about 2× slower here than the
same product written ``(r, d)``; copying the factor (a few kB) fixes the layout of its gradient.
Every other step (factor with factor, batched or summed indices, numpy arrays) goes to the array
library's own ``einsum``.

Executors compared by ``benchmarks/bench_apply.py`` (forward + backward of a 12-layer 768×768 stack,
1,024 tokens, every built-in format at LoRA r=8's parameter count; 2026-11-22, 2 vCPU, torch 2.13 CPU,
see ``benchmarks/README.md`` for the table): ``"gemm"`` (this layout-aware pairwise execution) was the
fastest or tied on every format and is the default; ``"pairwise"`` (each step through ``torch.einsum``,
the previous default) was 3–14% slower per step, ``"einsum"`` (one ``torch.einsum`` of the whole
equation, torch choosing the order on every call) and ``"expression"``
(``opt_einsum.contract_expression(..., backend="torch")``) were slower still. ``executor(name)``
switches for benchmarking only.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from functools import lru_cache
from typing import NamedTuple

import opt_einsum

from ._backend import Ops

__all__ = ["EXECUTORS", "contract", "contraction_plan", "executor"]

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


def _gemm_spec(equation: str, sizes: dict[str, int]) -> _Gemm | None:
    """Describe ``equation`` (two operands) as one matrix product, or None if it is not one."""
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
    numel = [math.prod(sizes[c] for c in t) for t in terms]
    act = 0 if numel[0] >= numel[1] else 1
    ta, tf = terms[act], terms[1 - act]
    m = [c for c in ta if c not in shared]
    k = [c for c in ta if c in shared]
    n = [c for c in tf if c not in shared]
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
def _plan(equation: str, shapes: tuple[tuple[int, ...], ...]) -> tuple[_Step, ...]:
    if len(shapes) == 1:
        return (_Step((0,), equation, None),)
    _, info = opt_einsum.contract_path(equation, *shapes, shapes=True, optimize="auto")
    sizes = {
        c: n
        for term, shape in zip(equation.split("->")[0].split(","), shapes, strict=True)
        for c, n in zip(term, shape, strict=True)
    }
    return tuple(_Step(tuple(step[0]), step[2], _gemm_spec(step[2], sizes)) for step in info.contraction_list)


def contraction_plan(equation: str, shapes: tuple[tuple[int, ...], ...]) -> tuple[tuple[tuple[int, ...], str], ...]:
    """Return the pairwise steps ``((positions, einsum), ...)`` for ``equation`` on ``shapes``.

    Positions index the current operand list; the result of each step is appended to its end.
    """
    return tuple((s.positions, s.equation) for s in _plan(equation, shapes))


@lru_cache(maxsize=256)
def _expression(equation: str, shapes: tuple[tuple[int, ...], ...]):
    return opt_einsum.contract_expression(equation, *shapes, optimize="auto")


def _run_gemm(spec: _Gemm, a, b):
    act, fac = (a, b) if spec.act == 0 else (b, a)
    act2d = act.permute(spec.act_perm).reshape(spec.act_shape)
    fac2d = fac.permute(spec.fac_perm).reshape(spec.fac_shape).contiguous()
    result = act2d @ (fac2d.T if spec.transpose else fac2d)
    return result.reshape(spec.result_shape).permute(spec.out_perm)


def contract(equation: str, *operands, ops: Ops):
    """Contract ``operands`` according to ``equation`` using the cached plan for their shapes."""
    shapes = tuple(tuple(op.shape) for op in operands)
    name = _current["executor"]
    if name == "einsum" and len(operands) > 1:
        return ops.einsum(equation, *operands)
    if name == "expression" and len(operands) > 1:
        return _expression(equation, shapes)(*operands, backend=ops.name)
    fast = name == "gemm" and ops.name == "torch"
    stack = list(operands)
    for step in _plan(equation, shapes):
        args = [stack.pop(p) for p in step.positions]
        if fast and step.gemm is not None:
            stack.append(_run_gemm(step.gemm, *args))
        else:
            stack.append(ops.einsum(step.equation, *args))
    (result,) = stack
    return result
