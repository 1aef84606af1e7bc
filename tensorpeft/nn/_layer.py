"""The wrapper that replaces an adapted linear layer: base output plus its slice of a stack."""

from __future__ import annotations

import torch
from torch import nn

from ..decomp.validate import check_fraction, normalize_index
from ._linear import is_adaptable, linear_shape

__all__ = ["AdapterLinear"]


def _check_layer_arguments(base_layer, stack, index, dropout) -> tuple[tuple[int, ...], float]:
    """The normalized ``index`` and ``dropout``, once the layer and the stack are known to fit."""
    from ._stack import AdapterStack

    if not is_adaptable(base_layer):
        raise TypeError(
            f"`base_layer` must be an nn.Linear or transformers Conv1D layer, got {type(base_layer).__name__}."
        )
    if not isinstance(stack, AdapterStack):
        raise TypeError(f"`stack` must be an AdapterStack, got {type(stack).__name__}.")
    fmt = stack.format
    if linear_shape(base_layer) != (fmt.out_features, fmt.in_features):
        raise ValueError(
            f"`base_layer` is {linear_shape(base_layer)[0]}×{linear_shape(base_layer)[1]} (out × in), but `stack` "
            f"holds updates of {fmt.out_features}×{fmt.in_features}."
        )
    return normalize_index(index, tuple(fmt.stack)), check_fraction(dropout, "dropout")


class AdapterLinear(nn.Module):
    """``base_layer(x) + scaling · ΔW[index] dropout(x)``, the update applied factored.

    Parameters
    ----------
    base_layer : nn.Linear or transformers Conv1D
        The frozen pretrained layer (registered as ``base_layer``, so its state-dict keys become
        ``<name>.base_layer.weight`` as in PEFT).
    stack : AdapterStack
        The stack holding this layer's factors. Kept as a plain attribute, not a submodule: the stack
        is registered once, by the :class:`TensorPeftModel`, however many layers share it.
    index : tuple of int
        This layer's slice of the stack.
    dropout : float
        Dropout on the adapter's input only, as PEFT's ``lora_dropout``, in ``[0, 1)``.

    Raises
    ------
    TypeError, ValueError
        If ``base_layer`` is not a linear layer of the stack's ``out × in``, ``stack`` is not an
        :class:`AdapterStack`, ``index`` is not a tuple of in-range ints over the stack modes, or
        ``dropout`` is outside ``[0, 1)``.

    Notes
    -----
    Mixed precision follows PEFT: the input is cast to the factors' dtype (fp32 with a bf16/fp16 base),
    the update is added to the base output and the sum cast back to the base output's dtype.
    ``Conv1D`` stores its weight ``(in, out)``; the stack always works with ``ΔW (out, in)``, and
    :meth:`merge` adds ``ΔWᵀ`` to such a weight.

    Examples
    --------
    >>> import torch, tensorpeft as tp
    >>> base = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16))
    >>> model = tp.get_peft_model(base, tp.Tucker2Config(rank=2, target_modules=["0", "2"]))
    >>> layer = model.base_model[0]
    >>> layer
    AdapterLinear(
      index=(0,), merged=False, disabled=False
      (base_layer): Linear(in_features=16, out_features=16, bias=True)
      (adapter_dropout): Identity()
    )
    >>> layer(torch.randn(3, 16)).shape
    torch.Size([3, 16])
    """

    def __init__(self, base_layer: nn.Module, stack: nn.Module, index: tuple[int, ...], dropout: float = 0.0):
        super().__init__()
        index, dropout = _check_layer_arguments(base_layer, stack, index, dropout)
        self.base_layer = base_layer
        self.adapter_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.__dict__["stack"] = stack  # deliberately not a submodule (see the class docstring)
        self.index = index
        self.out_features, self.in_features = linear_shape(base_layer)
        self.fan_in_fan_out = not isinstance(base_layer, nn.Linear)
        self.merged = False
        self.disabled = False

    @property
    def weight(self) -> torch.Tensor:
        """The base layer's weight (some models read ``layer.weight.dtype``)."""
        return self.base_layer.weight

    @property
    def bias(self):
        """The base layer's bias."""
        return self.base_layer.bias

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Base output, plus the factored update unless merged or disabled."""
        result = self.base_layer(x, *args, **kwargs)
        if self.merged or self.disabled:
            return result
        delta = self.stack(self.adapter_dropout(x), self.index)
        return (result + delta).to(result.dtype)

    def _delta_for_weight(self) -> torch.Tensor:
        delta = self.stack.delta_weight(self.index)
        return delta.T if self.fan_in_fan_out else delta

    @torch.no_grad()
    def merge(self) -> None:
        """Add ``scaling · ΔW[index]`` into the base weight (computed in the wider of the two dtypes)."""
        if self.merged:
            return
        self._add_to_weight(self._delta_for_weight(), sign=1.0)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract what :meth:`merge` added (W0 back up to round-off: ~1e-7 relative in fp32)."""
        if not self.merged:
            return
        self._add_to_weight(self._delta_for_weight(), sign=-1.0)
        self.merged = False

    def _add_to_weight(self, delta: torch.Tensor, sign: float) -> None:
        w = self.base_layer.weight
        wide = torch.promote_types(w.dtype, delta.dtype)
        w.copy_((w.to(wide) + sign * delta.to(device=w.device, dtype=wide)).to(w.dtype))

    def extra_repr(self) -> str:
        """The slice index and the merged/disabled state, shown in the module's repr."""
        return f"index={self.index}, merged={self.merged}, disabled={self.disabled}"
