"""Initial factors of a stack: the format's own init, or one fitted to the pretrained weights."""

from __future__ import annotations

import torch
from torch import nn

from ._linear import dense_weight

__all__ = ["adapter_dtype", "initial_factors", "pretrained_stack"]


def adapter_dtype(weight: torch.Tensor) -> torch.dtype:
    """fp32 factors for low-precision bases (as PEFT autocasts), else the base dtype (fp32/fp64)."""
    return weight.dtype if weight.dtype in (torch.float32, torch.float64) else torch.float32


def pretrained_stack(members: list[tuple[nn.Module, tuple[int, ...]]], shape, dtype) -> torch.Tensor:
    """The base weights of a stack, each at its index, as one tensor of the format's ``shape``.

    ``members`` are ``(layer, index)`` pairs; ``Conv1D`` weights (stored ``(in, out)``) are transposed.
    ``dtype`` is the adapter's (fp32 for low-precision bases): the fit only provides directions, and a
    float64 copy of, say, LLaMA-7B's 32 q matrices would take 4.3 GB.
    """
    first = members[0][0].weight
    dense = torch.zeros(tuple(shape), dtype=dtype, device=first.device)
    for layer, index in members:
        dense[index] = dense_weight(layer).to(dtype)
    return dense


def initial_factors(fmt, init: str, seed: int, dtype, device, weights: torch.Tensor | None = None) -> dict:
    """Factors of ``fmt`` with ΔW == 0 exactly.

    ``init="zero"``: ``fmt.init(seed)``. ``init="svd"``: ``fmt.init_from_weights(weights)`` (``weights`` the
    stack of pretrained matrices, ordered like the stack; the format's fit, with few sweeps where it is
    iterative), then the format's ``zero_factor`` set to zero and every
    other factor rescaled to the Frobenius norm it has under ``"zero"``: the directions come from the
    pretrained weights, the magnitudes (hence the effective learning rate) stay those of the default
    init. The fitted core is the least-squares ``Aᵀ W_s B`` of ``W_s ≈ A G_s Bᵀ``; the factored forward
    applies ``G_s`` (never ``G_sᵀ``) as ``(x B) G_sᵀ Aᵀ``, the orientation LoTR's reference gets wrong —
    ``tests/nn/test_stack.py`` checks it on fitted, non-zeroed factors.
    """
    base = fmt.init(seed=seed, backend="torch", dtype=dtype)
    if init == "zero":
        return {n: t.to(device) for n, t in base.items()}
    if weights is None:
        raise ValueError("`init`='svd' needs the pretrained weights of the stack.")
    fitted = fmt.init_from_weights(weights)
    out = {}
    for name, t in base.items():
        if name == fmt.zero_factor:
            out[name] = torch.zeros_like(t)
            continue
        f = fitted[name].to(torch.float64)
        norm, target = torch.linalg.vector_norm(f), torch.linalg.vector_norm(t.to(torch.float64))
        out[name] = (f * (target / norm) if norm > 0 else t.to(torch.float64)).to(dtype)
    return {n: t.to(device) for n, t in out.items()}
