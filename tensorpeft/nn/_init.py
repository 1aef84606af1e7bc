"""Initial factors of a stack: the format's own init, one fitted to the pretrained weights, or given ones.

Also the memory check that runs before any of them is allocated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from ..decomp.validate import check_allocation
from ._linear import dense_weight

__all__ = [
    "adapter_dtype",
    "check_memory",
    "given_factors",
    "initial_factors",
    "pretrained_stack",
    "stack_initial_factors",
]


def adapter_dtype(weight: torch.Tensor) -> torch.dtype:
    """fp32 factors for low-precision bases (as PEFT autocasts), else the base dtype (fp32/fp64)."""
    return weight.dtype if weight.dtype in (torch.float32, torch.float64) else torch.float32


def pretrained_stack(members: list[tuple], shape, dtype) -> torch.Tensor:
    """The base weights of a stack, each at its index, as one tensor of the format's ``shape``.

    ``members`` are ``(layer, index)`` pairs, or ``(layer, index, rows)`` triples where a member of a
    fused slice (``stack_by="input"``) fills rows ``start:stop`` of its slice (``rows`` None: all of it),
    so a fused slice is its members' weights concatenated; ``Conv1D`` weights (stored ``(in, out)``) are
    transposed.
    ``dtype`` is the adapter's (fp32 for low-precision bases): the fit only provides directions, and a
    float64 copy of, say, LLaMA-7B's 32 q matrices would take 4.3 GB.
    """
    first = members[0][0].weight
    dense = torch.zeros(tuple(shape), dtype=dtype, device=first.device)
    for layer, index, *rest in members:
        rows = rest[0] if rest else None
        if rows is None:
            dense[index] = dense_weight(layer).to(dtype)
        else:
            dense[index][rows[0] : rows[1]] = dense_weight(layer).to(dtype)
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

    Frozen factors (``fmt.frozen_names``) keep the values ``fmt.init(seed)`` draws under either init; with
    ``"svd"`` the trainable ones are fitted around them (``fmt.fit(weights, init=fmt.random(seed))``, as
    many sweeps as :meth:`~tensorpeft.decomp.TensorNetwork.init_from_weights` takes).
    """
    base = fmt.init(seed=seed, backend="torch", dtype=dtype)
    if init == "zero":
        return {n: t.to(device) for n, t in base.items()}
    if weights is None:
        raise ValueError("`init`='svd' needs the pretrained weights of the stack.")
    frozen = getattr(fmt, "frozen_names", ())
    if frozen:  # fit the trainable factors around the very constants the stack keeps (those of `base`)
        start = fmt.random(seed=seed, backend="torch", dtype=dtype)
        fitted = fmt.fit(weights, init=start, n_iter_max=getattr(fmt, "init_sweeps", 50))[0]
    else:
        fitted = fmt.init_from_weights(weights)
    out = {}
    for name, t in base.items():
        if name in getattr(fmt, "zero_factors", (fmt.zero_factor,)):  # a decomp.Sum: one per term
            out[name] = torch.zeros_like(t)
            continue
        if name in frozen:
            out[name] = t
            continue
        f = fitted[name].to(torch.float64)
        norm, target = torch.linalg.vector_norm(f), torch.linalg.vector_norm(t.to(torch.float64))
        out[name] = (f * (target / norm) if norm > 0 else t.to(torch.float64)).to(dtype)
    return {n: t.to(device) for n, t in out.items()}


def given_factors(factors: Mapping, name: str, names: list[str]) -> dict:
    """The factors of stack ``name`` from the ``factors`` argument, checked to be a dict of tensors."""
    extra = sorted(str(n) for n in factors if n not in names)
    if extra:
        raise ValueError(f"`factors` has entries {extra} for no stack of this model; expected {names}.")
    if name not in factors:
        raise ValueError(f"`factors` has no entry for stack {name!r}; expected {names}.")
    entry = factors[name]
    if not isinstance(entry, Mapping):
        raise TypeError(f"`factors[{name!r}]` must be a dict of tensors, got {type(entry).__name__}.")
    for key, value in entry.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"`factors[{name!r}][{key!r}]` must be a torch.Tensor, got {type(value).__name__}.")
    return dict(entry)


def stack_initial_factors(layers, fmt, config, seed: int) -> dict:
    """``config.init``'s factors of one stack, on its weights' device (SVD needs finite weights).

    ``layers`` as the ``members`` of :func:`pretrained_stack`.
    """
    weight = layers[0][0].weight
    dtype = adapter_dtype(weight)
    dense = None
    if config.init == "svd":
        dense = pretrained_stack(layers, fmt.shape, dtype)
        if not bool(torch.isfinite(dense).all()):
            raise ValueError(
                f"`init`='svd' needs finite pretrained weights, but a layer like {layers[0][0]!r} holds NaN or "
                "infinite values; use `init`='zero'."
            )
    return initial_factors(fmt, config.init, seed, dtype, weight.device, dense)


def _device_memory(device: torch.device) -> int | None:
    """Free bytes of a CUDA device (``torch.cuda.mem_get_info``); ``None`` (host memory) otherwise."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return None


def check_memory(planned, modules: dict, config) -> None:
    """Refuse, before any allocation, stacks whose factors (and SVD inputs) exceed their device's memory.

    Summed over all stacks per device, at the largest adapter itemsize of that device (an upper bound).
    """
    needed: dict[torch.device, list[int]] = {}
    for plan, fmt in planned:
        weight = modules[plan.members[0][0]].weight
        if weight.device.type == "meta":
            continue
        n = fmt.num_params + getattr(fmt, "num_frozen", 0) + (math.prod(fmt.shape) if config.init == "svd" else 0)
        entry = needed.setdefault(weight.device, [0, 1])
        entry[0] += n
        entry[1] = max(entry[1], adapter_dtype(weight).itemsize)
    for device, (n_scalars, itemsize) in needed.items():
        check_allocation(n_scalars, itemsize, "rank", available=_device_memory(device))
