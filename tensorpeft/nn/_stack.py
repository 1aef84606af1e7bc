"""The module that owns the factors of one stack and applies its slices."""

from __future__ import annotations

import math
import numbers
import weakref

import torch
from torch import nn

from .. import decomp
from ._fields import MAX_ALPHA
from ._kernels import eye_like, kernel_for

__all__ = ["AdapterStack"]


def _check_stack_arguments(fmt, scaling, factors) -> None:
    """A format, a finite real scaling within the configs' bound, and a dict of its torch factors."""
    if not isinstance(fmt, decomp.TensorNetwork):
        raise TypeError(f"`fmt` must be a tensorpeft.decomp format (TensorNetwork), got {type(fmt).__name__}.")
    if isinstance(scaling, bool) or not isinstance(scaling, numbers.Real) or not math.isfinite(scaling):
        raise TypeError(f"`scaling` must be a finite real number, got {scaling!r} ({type(scaling).__name__}).")
    if abs(scaling) > MAX_ALPHA:
        raise ValueError(f"`scaling` must be in [-{MAX_ALPHA:g}, {MAX_ALPHA:g}], got {scaling!r}.")
    fmt.check_factors(factors)
    for name in fmt.factor_names:
        if not isinstance(factors[name], torch.Tensor):
            raise TypeError(f"`factors[{name!r}]` must be a torch.Tensor, got {type(factors[name]).__name__}.")


class AdapterStack(nn.Module):
    r"""Factors of one format as ``nn.Parameter``\ s, named as the format names them.

    A stack is shared by every layer of its group: each :class:`AdapterLinear` keeps a plain
    reference to it and its own ``index``; only the :class:`TensorPeftModel` registers it, so
    ``parameters()`` and ``state_dict()`` see each factor once.

    Parameters
    ----------
    fmt : decomp.TensorNetwork
        The format of the stack (shape ``(*stack, out_features, in_features)``).
    scaling : float
        Multiplies every slice's update; finite, ``|scaling| <= 1e6`` (see ``AdapterConfig.alpha``).
    factors : dict[str, torch.Tensor]
        Initial factors (checked against the format).

    Raises
    ------
    TypeError, ValueError
        If ``fmt`` is not a format, ``scaling`` not a bounded finite real, or the factors do not fit ``fmt``.

    Notes
    -----
    ``forward(x, index)`` returns ``scaling · x @ ΔW[index]ᵀ`` in the factors' dtype (the input is cast
    to it, as PEFT casts to ``lora_A``'s dtype). While :meth:`sharing` is on, the slice-independent
    projection of a format (``x·B`` for Tucker-2, ``x·in`` for CP) is computed once per input tensor
    and reused by the other slices that read the very same tensor (q, k and v of one layer); the cache
    is keyed by the tensor's identity and version counters and emptied when sharing ends. Under
    ``torch.compile`` the cache is bypassed, so it causes no graph break (``docs/guide/compile.rst``).

    Examples
    --------
    >>> import torch, tensorpeft as tp
    >>> base = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16))
    >>> model = tp.get_peft_model(base, tp.Tucker2Config(rank=2, target_modules=["0", "2"]))
    >>> model.tensor_adapters["stack"]
    AdapterStack(Tucker2, shape=(2, 16, 16), params=72, scaling=4)
    """

    def __init__(self, fmt, scaling: float, factors: dict):
        super().__init__()
        _check_stack_arguments(fmt, scaling, factors)
        self.format = fmt
        self.scaling = float(scaling)
        for name in fmt.factor_names:
            if hasattr(self, name):
                raise ValueError(f"factor name {name!r} clashes with an attribute of nn.Module; rename the factor.")
            # an owned, row-major copy: QR/SVD results are column-major, and a different layout means
            # different matmul kernels, so save -> load would not be bit-exact
            data = factors[name].detach().clone(memory_format=torch.contiguous_format)
            self.register_parameter(name, nn.Parameter(data))
        self._kernel = kernel_for(fmt)
        self._sharing = False
        self._cache = None

    def factors(self) -> dict:
        """``{name: parameter}`` in the format's layout (a fresh dict of the live parameters)."""
        return {n: getattr(self, n) for n in self.format.factor_names}

    @property
    def dtype(self) -> torch.dtype:
        """The factors' dtype."""
        return getattr(self, self.format.factor_names[0]).dtype

    def _project(self, x, f):
        kernel = self._kernel
        # Under torch.compile the cache is bypassed (weakrefs, ``_version`` and ``is_inference`` break
        # the graph); the compiler sees the same ``x·B`` in q, k and v and computes it once itself.
        if torch.compiler.is_compiling() or not (self._sharing and kernel.shared_inputs) or x.is_inference():
            return kernel.project(self.format, f, x.to(self.dtype))
        key = (
            x._version,
            tuple(f[n]._version for n in kernel.shared_inputs),
            torch.is_grad_enabled(),
        )
        if self._cache is not None:
            ref, cached_key, u = self._cache
            if ref() is x and cached_key == key:
                return u
        u = kernel.project(self.format, f, x.to(self.dtype))
        self._cache = (weakref.ref(x), key, u)
        return u

    def forward(self, x: torch.Tensor, index: tuple[int, ...]) -> torch.Tensor:
        """``scaling · x @ ΔW[index]ᵀ`` for ``x (..., in_features)``; never forms ΔW."""
        f = self.factors()
        return self._kernel.finish(self.format, f, self._project(x, f), index, self.scaling)

    def set_sharing(self, on: bool) -> None:
        """Turn input-projection sharing on or off (off also empties the cache)."""
        self._sharing = bool(on)
        if not on:
            self._cache = None

    @torch.no_grad()
    def delta_weight(self, index: tuple[int, ...]) -> torch.Tensor:
        """``scaling · ΔW[index]`` as a dense ``(out_features, in_features)`` tensor (for merge and export)."""
        f = self.factors()
        eye = eye_like(self.format.in_features, getattr(self, self.format.factor_names[0]))
        u = self._kernel.project(self.format, f, eye)
        return self._kernel.finish(self.format, f, u, index, self.scaling).T

    def extra_repr(self) -> str:
        """The format's class, shape, parameter count and the scaling, shown in the module's repr."""
        fmt = self.format
        return f"{type(fmt).__name__}, shape={fmt.shape}, params={fmt.num_params}, scaling={self.scaling:g}"
