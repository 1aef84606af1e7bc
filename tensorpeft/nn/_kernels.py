"""Factored forward of each format, specialized where it pays, else the core's contraction.

Every kernel computes ``scale · x @ ΔW[index]ᵀ`` in two steps: ``project(x)`` — the part that does not
depend on the slice (``x·B`` for Tucker-2, ``x·in`` for CP), which a stack computes once per input when
several of its slices read the same ``x`` — and ``finish(u, index, scale)``. The scale multiplies the
narrowest intermediate (``r`` wide), not the ``d_out``-wide output.

A member of a fused ``stack_by="input"`` slice needs only rows ``start:stop`` of the update: ``finish``
is then split at the output factor, ``core(u, index, scale)`` (``r`` wide; a stack computes it once per
input and slice when q, k and v read the same ``x``) and ``expand(v, index, rows)``, which multiplies by
the rows of the output factor only. Caching the ``r``-wide ``core`` rather than the ``d_out``-wide update
keeps the backward free of full-width slice gradients: measured (2026-12-01, 1 thread, CPU time, medians
of 20 rounds; q, k, v of 12 SmolLM2-shaped layers, 576 → 576 + 192 + 192, 1,024 tokens, Tucker-2 r = 8,
forward + backward of the adapter path, ratio to ``stack_by="name"``), caching the update took 1.57,
caching ``core`` 0.95–0.98 (``stack_by="shape"``: 0.96–1.02).
The generic kernel's ``core`` is the whole update and its ``expand`` a slice.

Every ``d × r`` factor enters its matmul as a contiguous ``(r, d)`` copy (a few kB): torch computes
an operand's gradient in that operand's layout, and the ``(d, r)`` layout was measured slower (as the core's ``gemm``
executor in ``decomp/_contract.py`` found).

Measured (2026-11-22, 1 thread, CPU time, medians of 30 interleaved rounds; 12 slices of 768×768,
1,024 tokens, r = 8, forward + backward of the adapter path alone, ratio to PEFT-style
``F.linear(F.linear(x, A), B)``): LoRA kernel 0.84 (core ``apply`` 0.86); Tucker-2 kernel 0.79,
with ``x·B`` shared by q, k, v 0.44 (the same with ``F.linear(v, A)`` for the output factor: 0.66),
core 0.95; CP with heads 0.86, shared 0.48, core 0.95; LoRA² 0.88, core 0.88. Tensor trains and
custom networks use ``format.apply`` (opt_einsum's order, cached per shape); under ``torch.compile``
one ``torch.einsum`` of the same network instead, which Dynamo traces (``docs/guide/compile.rst``). A
:class:`~tensorpeft.decomp.Sum` adds its terms' kernels (eager and compiled alike).
``tests/nn/test_stack.py`` checks every kernel against ``format.apply``, and
``tests/nn/test_kernels_match_equation.py`` checks forward and every gradient against the format's
equation (``format.to_dense``) in float64. This table is the only place in ``nn`` that knows formats by
class; everything else asks the format (``docs/guide/protocol.rst``).
"""

from __future__ import annotations

import math
import string

import opt_einsum
import torch
import torch.nn.functional as F  # noqa: N812 - the universal torch alias

from .. import decomp

__all__ = ["kernel_for"]


def _in(x, factor):
    """``x @ factor`` for a ``(d, r)`` factor, through a contiguous ``(r, d)`` copy."""
    return F.linear(x, factor.t().contiguous())


def _out(v, factor):
    """``v @ factorᵀ`` for a ``(d, r)`` factor, through a contiguous ``(r, d)`` copy.

    The copy makes torch compute the factor's gradient as an ``(r, d)`` product, measured faster
    than the ``(d, r)`` one ``F.linear(v, factor)`` gives.
    """
    return v @ factor.t().contiguous()


_PLAN_TOKENS = 1024  # the token count a compiled contraction is planned for (any count runs it)


@torch.compiler.assume_constant_result
def _einsum_steps(equation: str, shapes: str) -> tuple:
    """opt_einsum's pairwise steps ``((positions, equation), ...)``, a constant to Dynamo (not traced).

    ``shapes`` is a string (``"4x5,5x6"``): Dynamo passes only plain constants to such a function.
    """
    dims = [tuple(int(n) for n in shape.split("x") if n) for shape in shapes.split(",")]  # "" is a scalar
    _, info = opt_einsum.contract_path(equation, *dims, shapes=True)
    return tuple((tuple(step[0]), step[2]) for step in info.contraction_list)


def _einsum_apply(fmt, f, x, index):
    """``fmt.apply(f, x, index)`` as pairwise ``torch.einsum`` steps of the sliced network, for ``torch.compile``.

    The core's ``apply`` plans its contraction with ``opt_einsum`` (heaps, ``lru_cache``), which Dynamo
    cannot trace, and a path searched on the traced sizes would guard on the token count (a recompile
    per sequence length). Here the equation is built from the format's public indices, and the steps are
    planned for ``_PLAN_TOKENS`` tokens, outside the trace. ``None`` if the network needs more than 52
    letters (the caller then falls back to ``apply``).
    """
    at = dict(zip(fmt.stack_indices, index, strict=True))
    terms, arrays = [], []
    for name, term in zip(fmt.operand_names, fmt.operand_indices, strict=True):  # a tied factor once per use
        array = f[name]
        if any(c in at for c in term):
            array = array[tuple(at.get(c, slice(None)) for c in term)]
            term = "".join(c for c in term if c not in at)
        terms.append(term)
        arrays.append(array)
    used = dict.fromkeys("".join(terms) + fmt.in_indices + fmt.out_indices)
    if len(used) >= len(string.ascii_letters):
        return None
    letter = dict(zip(used, string.ascii_letters, strict=False))
    batch = string.ascii_letters[len(used)]
    rename = lambda term: "".join(letter[c] for c in term)  # noqa: E731
    lead = tuple(x.shape[:-1])
    x2 = x.reshape(math.prod(lead), *[fmt.sizes[c] for c in fmt.in_indices])
    equation = ",".join([*map(rename, terms), batch + rename(fmt.in_indices)]) + "->" + batch + rename(fmt.out_indices)
    shapes = [[fmt.sizes[c] for c in term] for term in terms] + [
        [_PLAN_TOKENS] + [fmt.sizes[c] for c in fmt.in_indices]
    ]
    operands = [*arrays, x2]
    for positions, step in _einsum_steps(equation, ",".join("x".join(map(str, shape)) for shape in shapes)):
        args = [operands.pop(p) for p in positions]
        operands.append(torch.einsum(step, *args))
    out_features = math.prod([fmt.sizes[c] for c in fmt.out_indices])  # Dynamo can't trace prod(generator)
    return operands[0].reshape(*lead, out_features)


class GenericKernel:
    """Any :class:`~tensorpeft.decomp.TensorNetwork`: the core's ``apply`` (one ``torch.einsum`` when compiled)."""

    shared_inputs: tuple[str, ...] = ()

    def project(self, fmt, f, x):
        """No slice-independent step."""
        return x

    def finish(self, fmt, f, u, index, scale):
        """``scale · format.apply``."""
        y = _einsum_apply(fmt, f, u, index) if torch.compiler.is_compiling() else None
        if y is None:
            y = fmt.apply(f, u, index)
        return y * scale if scale != 1.0 else y

    def core(self, fmt, f, u, index, scale):
        """The slice-dependent part before the output rows are chosen: here the whole update."""
        return self.finish(fmt, f, u, index, scale)

    def expand(self, fmt, f, v, index, rows):
        """Rows ``start:stop`` of the update from :meth:`core`'s result: here a slice."""
        return v[..., rows[0] : rows[1]]

    def finish_rows(self, fmt, f, u, index, scale, rows):
        """Rows ``start:stop`` of :meth:`finish`."""
        return self.expand(fmt, f, self.core(fmt, f, u, index, scale), index, rows)


class LoRAKernel(GenericKernel):
    """``(x A_sᵀ) B_sᵀ``."""

    def finish(self, fmt, f, u, index, scale):
        """Two matmuls with the slice's factors."""
        return _out(F.linear(u, f["A"][index]) * scale, f["B"][index])

    def core(self, fmt, f, u, index, scale):
        """``x A_sᵀ``, scaled."""
        return F.linear(u, f["A"][index]) * scale

    def expand(self, fmt, f, v, index, rows):
        """The rows of ``B_s``."""
        return _out(v, f["B"][index][rows[0] : rows[1]])


class Tucker2Kernel(GenericKernel):
    """``((x B) G_sᵀ) Aᵀ``; ``x B`` is shared by every slice."""

    shared_inputs = ("B",)

    def project(self, fmt, f, x):
        """``x B``."""
        return _in(x, f["B"])

    def finish(self, fmt, f, u, index, scale):
        """Core, then the shared output factor."""
        return _out(F.linear(u, f["G"][index]) * scale, f["A"])

    def core(self, fmt, f, u, index, scale):
        """``u G_sᵀ``, scaled."""
        return F.linear(u, f["G"][index]) * scale

    def expand(self, fmt, f, v, index, rows):
        """The rows of ``A``."""
        return _out(v, f["A"][rows[0] : rows[1]])


class CPKernel(GenericKernel):
    """``((x·in) ⊙ c_s [⊙ heads_h]) outᵀ`` with ``c_s`` the product of the stack factors' rows."""

    shared_inputs = ("in",)

    def project(self, fmt, f, x):
        """``x·in``."""
        return _in(x, f["in"])

    @staticmethod
    def _weighted(f, u, index, scale):
        c = f["stack0"][index[0]] * scale if index else None
        for k in range(1, len(index)):
            c = c * f[f"stack{k}"][index[k]]
        return u * c if c is not None else u * scale

    @staticmethod
    def _head_out(f):
        """The output factor of all heads, ``(H·d_head, R)``: row ``h·d_head + d`` is ``heads[h] ⊙ out[d]``.

        One matmul with it replaces the ``(..., H, R)`` intermediate of ``(v ⊙ heads_h) outᵀ``: the same FLOPs,
        but backward keeps ``v`` (``R`` wide) instead of ``H·R`` numbers per token (CP's peak training memory on
        SmolLM2 was 23-34% above PEFT LoRA's with the intermediate), and forming it costs ``d_out·R``, not per token.
        """
        return (f["heads"].unsqueeze(1) * f["out"].unsqueeze(0)).flatten(0, 1)

    def finish(self, fmt, f, u, index, scale):
        """Weight the R components by the slice, then the output factor (of all heads, head-major)."""
        v = self._weighted(f, u, index, scale)
        return _out(v, f["out"] if fmt.heads is None else self._head_out(f))

    def core(self, fmt, f, u, index, scale):
        """The R components weighted by the slice, scaled."""
        return self._weighted(f, u, index, scale)

    def expand(self, fmt, f, v, index, rows):
        """The rows of the output factor (with heads: of all heads' factor, so any rows are exact)."""
        start, stop = rows
        return _out(v, (f["out"] if fmt.heads is None else self._head_out(f))[start:stop])


class OrthogonalKernel(GenericKernel):
    """``x V1ᵀ V2ᵀ diag(λ) U2ᵀ U1ᵀ`` per slice."""

    def finish(self, fmt, f, u, index, scale):
        """Five narrow steps; λ carries the scale."""
        u = F.linear(F.linear(u, f["V1"][index]), f["V2"][index]) * (f["lambda"][index] * scale)
        return _out(F.linear(u, f["U2"][index]), f["U1"][index])

    def core(self, fmt, f, u, index, scale):
        """Four narrow steps, up to ``U2``."""
        u = F.linear(F.linear(u, f["V1"][index]), f["V2"][index]) * (f["lambda"][index] * scale)
        return F.linear(u, f["U2"][index])

    def expand(self, fmt, f, v, index, rows):
        """The rows of ``U1``."""
        return _out(v, f["U1"][index][rows[0] : rows[1]])


class SumKernel(GenericKernel):
    """A :class:`~tensorpeft.decomp.Sum`: the sum of its terms' own kernels (each term's fast path, compiled too)."""

    def finish(self, fmt, f, u, index, scale):
        """Each term's ``project`` then ``finish``, added."""
        y = None
        for term, part in zip(fmt.terms, fmt._split(f), strict=True):
            kernel = kernel_for(term)
            t = kernel.finish(term, part, kernel.project(term, part, u), index, scale)
            y = t if y is None else y + t
        return y


_KERNELS = {
    decomp.LoRA: LoRAKernel(),
    decomp.Tucker2: Tucker2Kernel(),
    decomp.CP: CPKernel(),
    decomp.OrthogonalProjection: OrthogonalKernel(),
    decomp.Sum: SumKernel(),
}


def kernel_for(fmt) -> GenericKernel:
    """The kernel of a format; exact type match, since a subclass may change the equation."""
    return _KERNELS.get(type(fmt), GenericKernel())


def eye_like(n: int, like: torch.Tensor) -> torch.Tensor:
    """Identity used to materialize one slice through a kernel (merge and export)."""
    return torch.eye(n, dtype=like.dtype, device=like.device)
