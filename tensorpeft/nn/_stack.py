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
    r"""Factors of one format as ``nn.Parameter``\ s, named as the format names them; frozen ones as buffers.

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
    A frozen factor of the format (``fmt.frozen_names``, e.g. VeRA's random projections) is a persistent
    buffer: no gradient, not in ``parameters()`` (so not in an optimizer, nor in PEFT's trainable count),
    but in ``state_dict()`` and :meth:`factors`, hence saved in the adapter file, merged and exported
    like any factor; ``.to()`` moves and casts it with the parameters.

    ``forward(x, index)`` returns ``scaling · x @ ΔW[index]ᵀ`` in the factors' dtype (the input is cast
    to it, as PEFT casts to ``lora_A``'s dtype). While :meth:`sharing` is on, the slice-independent
    projection of a format (``x·B`` for Tucker-2, ``x·in`` for CP) is computed once per input tensor
    and reused by the other slices that read the very same tensor (q, k and v of one layer); the cache
    is keyed by the tensor's identity and version counters and emptied when sharing ends. Under
    ``torch.compile`` the cache is bypassed, so it causes no graph break (``docs/guide/compile.rst``).

    ``forward(x, index, rows=(start, stop))`` returns rows ``start:stop`` of the update only: a member of
    a fused slice (``stack_by="input"``). While sharing is on, everything up to the output factor
    (``x·B`` and the core, ``r`` wide) is computed once per input tensor and index and each member
    multiplies by its rows of the output factor; otherwise each member computes its own chain, still with
    only its rows of the output factor (see :mod:`._kernels`).

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
        frozen = getattr(fmt, "frozen_names", ())
        for name in fmt.factor_names:
            if hasattr(self, name):
                raise ValueError(f"factor name {name!r} clashes with an attribute of nn.Module; rename the factor.")
            # an owned, row-major copy: QR/SVD results are column-major, and a different layout means
            # different matmul kernels, so save -> load would not be bit-exact
            data = factors[name].detach().clone(memory_format=torch.contiguous_format)
            if name in frozen:  # a constant: a (persistent) buffer, saved with the factors, never trained
                self.register_buffer(name, data)
            else:
                self.register_parameter(name, nn.Parameter(data))
        self._kernel = kernel_for(fmt)
        self._sharing = False
        self._cache = None
        self._delta_cache = None

    def factors(self) -> dict:
        """``{name: tensor}`` in the format's layout: the live parameters, and the buffers of frozen factors."""
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

    def _shared_core(self, x, f, index):
        """The kernel's ``core`` for the members of a fused slice, computed once per (input, index)."""
        key = (
            x._version,
            tuple(index),
            tuple(p._version for p in f.values()),
            torch.is_grad_enabled(),
        )
        if self._delta_cache is not None:
            ref, cached_key, y = self._delta_cache
            if ref() is x and cached_key == key:
                return y
        y = self._kernel.core(self.format, f, self._project(x, f), index, self.scaling)
        self._delta_cache = (weakref.ref(x), key, y)
        return y

    def forward(
        self, x: torch.Tensor, index: tuple[int, ...], rows: tuple[int, int] | None = None, *, share: bool = True
    ) -> torch.Tensor:
        """``scaling · x @ ΔW[index]ᵀ`` for ``x (..., in_features)``, or its rows ``start:stop``; never forms ΔW.

        ``share=False`` says that no other slice reads ``x`` (a fresh dropout output): nothing is cached,
        and a member of a fused slice computes its own chain.
        """
        f = self.factors()
        kernel = self._kernel
        if not share:
            u = kernel.project(self.format, f, x.to(self.dtype))
        elif rows is not None and self._sharing and not torch.compiler.is_compiling() and not x.is_inference():
            return kernel.expand(self.format, f, self._shared_core(x, f, index), index, rows)
        else:
            u = self._project(x, f)
        if rows is None:
            return kernel.finish(self.format, f, u, index, self.scaling)
        return kernel.finish_rows(self.format, f, u, index, self.scaling, rows)

    def set_sharing(self, on: bool) -> None:
        """Turn input-projection sharing on or off (off also empties the caches)."""
        self._sharing = bool(on)
        if not on:
            self._cache = None
            self._delta_cache = None

    @torch.no_grad()
    def delta_weight(self, index: tuple[int, ...], rows: tuple[int, int] | None = None) -> torch.Tensor:
        """``scaling · ΔW[index]`` as a dense ``(out_features, in_features)`` tensor (for merge and export).

        With ``rows=(start, stop)``, only those rows (a member of a fused slice).
        """
        f = self.factors()
        eye = eye_like(self.format.in_features, getattr(self, self.format.factor_names[0]))
        u = self._kernel.project(self.format, f, eye)
        delta = self._kernel.finish(self.format, f, u, index, self.scaling).T
        return delta if rows is None else delta[rows[0] : rows[1]]

    def extra_repr(self) -> str:
        """The format's class, shape, parameter count and the scaling, shown in the module's repr."""
        fmt = self.format
        frozen = getattr(fmt, "num_frozen", 0)
        extra = f", frozen={frozen}" if frozen else ""
        return f"{type(fmt).__name__}, shape={fmt.shape}, params={fmt.num_params}{extra}, scaling={self.scaling:g}"
