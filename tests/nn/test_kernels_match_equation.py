"""Every specialized torch kernel equals its format's equation: forward and every gradient, float64.

The kernels in ``nn/_kernels.py`` are hand-written contractions; ``format.to_dense`` contracts the
format's einsum equation. Both are written down independently, so a change to either side (a transposed
core, a dropped head factor, a scale on the wrong operand) fails here. Factors are random (no zero
factor), several slices are checked, and the gradient is taken with respect to ``x`` and every factor.
"""

import itertools

import pytest
import torch

from tensorpeft import decomp
from tensorpeft.nn import _kernels

SPECIALIZED = {
    "lora": decomp.LoRA(stack=(3,), out_features=6, in_features=5, rank=2),
    "lora_2d_stack": decomp.LoRA(stack=(2, 2), out_features=4, in_features=7, rank=3),
    "tucker2": decomp.Tucker2(stack=(2, 3), out_features=6, in_features=5, rank=(2, 3)),
    "tucker2_wide_out": decomp.Tucker2(stack=(3,), out_features=7, in_features=4, rank=(4, 2)),
    "cp": decomp.CP(stack=(3,), out_features=6, in_features=5, rank=4),
    "cp_heads": decomp.CP(stack=(2, 3), out_features=6, in_features=5, rank=4, heads=3),
    "cp_no_stack": decomp.CP(stack=(), out_features=6, in_features=5, rank=3),
    "orthogonal": decomp.OrthogonalProjection(stack=(2,), out_features=6, in_features=5, rank=2, inner=3),
}

SCALE = 0.75


def _indices(fmt):
    """Up to four slices: the first, the last and two in between."""
    every = list(itertools.product(*(range(n) for n in fmt.stack)))
    return sorted({every[0], every[-1], every[len(every) // 2], every[len(every) // 3]})


def _leaves(fmt, seed):
    factors = fmt.random(seed=seed, backend="torch", dtype=torch.float64)
    return {n: t.clone().requires_grad_(True) for n, t in factors.items()}


def _kernel_output(fmt, factors, x, index):
    kernel = _kernels.kernel_for(fmt)
    return kernel.finish(fmt, factors, kernel.project(fmt, factors, x), index, SCALE)


def _equation_output(fmt, factors, x, index):
    return SCALE * x @ fmt.to_dense(factors)[index].T


def _value_and_grads(output, fmt, factors, x, index, cotangent):
    y = output(fmt, factors, x, index)
    grads = torch.autograd.grad((y * cotangent).sum(), [x, *factors.values()])
    return y, dict(zip(["x", *factors], grads, strict=True))


@pytest.mark.parametrize("name", list(SPECIALIZED))
def test_specialized_kernel_is_not_the_generic_one(name):
    assert type(_kernels.kernel_for(SPECIALIZED[name])) is not _kernels.GenericKernel


@pytest.mark.parametrize("name", list(SPECIALIZED))
@pytest.mark.parametrize("seed", [0, 1])
def test_kernel_forward_and_gradients_match_the_equation(name, seed):
    fmt = SPECIALIZED[name]
    factors = _leaves(fmt, seed)
    assert all(float(t.detach().abs().max()) > 0 for t in factors.values())  # no zero factor hides a term
    gen = torch.Generator().manual_seed(100 + seed)
    for index in _indices(fmt):
        x = torch.randn(2, 3, fmt.in_features, generator=gen, dtype=torch.float64, requires_grad=True)
        cotangent = torch.randn(2, 3, fmt.out_features, generator=gen, dtype=torch.float64)
        got, got_grads = _value_and_grads(_kernel_output, fmt, factors, x, index, cotangent)
        want, want_grads = _value_and_grads(_equation_output, fmt, factors, x, index, cotangent)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        for key, grad in want_grads.items():
            torch.testing.assert_close(got_grads[key], grad, rtol=1e-12, atol=1e-12, msg=f"d/d{key} at {index}")


def test_the_check_sees_a_transposed_core():
    """The Tucker-2 orientation LoTR's reference gets wrong (``G_s`` for ``G_sᵀ``) is caught."""
    fmt = decomp.Tucker2(stack=(2,), out_features=5, in_features=5, rank=3)
    factors = {n: t.detach() for n, t in _leaves(fmt, 0).items()}
    x = torch.randn(4, 5, dtype=torch.float64)
    transposed = dict(factors, G=factors["G"].transpose(-1, -2).contiguous())
    got = _kernel_output(fmt, transposed, x, (1,))
    assert not torch.allclose(got, _equation_output(fmt, factors, x, (1,)), rtol=1e-6, atol=1e-8)
