"""Factored forward of each format, specialized where it pays, else the core's contraction.

Every kernel computes ``scale · x @ ΔW[index]ᵀ`` in two steps: ``project(x)`` — the part that does not
depend on the slice (``x·B`` for Tucker-2, ``x·in`` for CP), which a stack computes once per input when
several of its slices read the same ``x`` — and ``finish(u, index, scale)``. The scale multiplies the
narrowest intermediate (``r`` wide), not the ``d_out``-wide output.

Every ``d × r`` factor enters its matmul as a contiguous ``(r, d)`` copy (a few kB): torch computes
an operand's gradient in that operand's layout, and the ``(d, r)`` layout was measured slower (as the core's ``gemm``
executor in ``decomp/_contract.py`` found).

Measured (2026-11-22, 1 thread, CPU time, medians of 30 interleaved rounds; 12 slices of 768×768,
1,024 tokens, r = 8, forward + backward of the adapter path alone, ratio to PEFT-style
``F.linear(F.linear(x, A), B)``): LoRA kernel 0.84 (core ``apply`` 0.86); Tucker-2 kernel 0.79,
with ``x·B`` shared by q, k, v 0.44 (the same with ``F.linear(v, A)`` for the output factor: 0.66),
core 0.95; CP with heads 0.86, shared 0.48, core 0.95; LoRA² 0.88, core 0.88. Tensor trains and
custom networks use ``format.apply`` (opt_einsum's order, cached per shape).
``tests/nn/test_stack.py`` checks every kernel against ``format.apply``, and
``tests/nn/test_kernels_match_equation.py`` checks forward and every gradient against the format's
equation (``format.to_dense``) in float64. This table is the only place in ``nn`` that knows formats by
class; everything else asks the format (``docs/guide/protocol.rst``).
"""

from __future__ import annotations

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


class GenericKernel:
    """Any :class:`~tensorpeft.decomp.TensorNetwork`: the core's ``apply``."""

    shared_inputs: tuple[str, ...] = ()

    def project(self, fmt, f, x):
        """No slice-independent step."""
        return x

    def finish(self, fmt, f, u, index, scale):
        """``scale · format.apply``."""
        y = fmt.apply(f, u, index)
        return y * scale if scale != 1.0 else y


class LoRAKernel(GenericKernel):
    """``(x A_sᵀ) B_sᵀ``."""

    def finish(self, fmt, f, u, index, scale):
        """Two matmuls with the slice's factors."""
        return _out(F.linear(u, f["A"][index]) * scale, f["B"][index])


class Tucker2Kernel(GenericKernel):
    """``((x B) G_sᵀ) Aᵀ``; ``x B`` is shared by every slice."""

    shared_inputs = ("B",)

    def project(self, fmt, f, x):
        """``x B``."""
        return _in(x, f["B"])

    def finish(self, fmt, f, u, index, scale):
        """Core, then the shared output factor."""
        return _out(F.linear(u, f["G"][index]) * scale, f["A"])


class CPKernel(GenericKernel):
    """``((x·in) ⊙ c_s [⊙ heads_h]) outᵀ`` with ``c_s`` the product of the stack factors' rows."""

    shared_inputs = ("in",)

    def project(self, fmt, f, x):
        """``x·in``."""
        return _in(x, f["in"])

    def finish(self, fmt, f, u, index, scale):
        """Weight the R components by the slice (and head), then the output factor."""
        c = f["stack0"][index[0]] * scale if index else None
        for k in range(1, len(index)):
            c = c * f[f"stack{k}"][index[k]]
        v = u * c if c is not None else u * scale
        if fmt.heads is None:
            return _out(v, f["out"])
        y = _out(v.unsqueeze(-2) * f["heads"], f["out"])  # (..., H, d_out / H), head-major
        return y.flatten(-2)


class OrthogonalKernel(GenericKernel):
    """``x V1ᵀ V2ᵀ diag(λ) U2ᵀ U1ᵀ`` per slice."""

    def finish(self, fmt, f, u, index, scale):
        """Five narrow steps; λ carries the scale."""
        u = F.linear(F.linear(u, f["V1"][index]), f["V2"][index]) * (f["lambda"][index] * scale)
        return _out(F.linear(u, f["U2"][index]), f["U1"][index])


_KERNELS = {
    decomp.LoRA: LoRAKernel(),
    decomp.Tucker2: Tucker2Kernel(),
    decomp.CP: CPKernel(),
    decomp.OrthogonalProjection: OrthogonalKernel(),
}


def kernel_for(fmt) -> GenericKernel:
    """The kernel of a format; exact type match, since a subclass may change the equation."""
    return _KERNELS.get(type(fmt), GenericKernel())


def eye_like(n: int, like: torch.Tensor) -> torch.Tensor:
    """Identity used to materialize one slice through a kernel (merge and export)."""
    return torch.eye(n, dtype=like.dtype, device=like.device)
