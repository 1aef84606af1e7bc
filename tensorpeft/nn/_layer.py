"""The wrapper that replaces an adapted linear layer: base output plus its slice of a stack."""

from __future__ import annotations

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from ..decomp.validate import check_fraction, normalize_index
from ._linear import is_adaptable, linear_shape

__all__ = ["BASE", "AdapterLinear"]


def _check_rows(rows, base_layer, fmt) -> tuple[int, int] | None:
    """``None``, or a ``(start, stop)`` pair of ints with ``stop - start`` the layer's ``out_features``."""
    if rows is None:
        return None
    if (
        not isinstance(rows, tuple | list)
        or len(rows) != 2
        or any(isinstance(r, bool) or not isinstance(r, int) for r in rows)
    ):
        raise TypeError(f"`rows` must be None or a pair (start, stop) of ints, got {rows!r}.")
    start, stop = int(rows[0]), int(rows[1])
    out_features, in_features = linear_shape(base_layer)
    if not 0 <= start < stop <= fmt.out_features:
        raise ValueError(
            f"`rows`=({start}, {stop}) must satisfy 0 <= start < stop <= {fmt.out_features} (the stack's out_features)."
        )
    if (out_features, in_features) != (stop - start, fmt.in_features):
        raise ValueError(
            f"`base_layer` is {out_features}×{in_features} (out × in), but rows ({start}, {stop}) of `stack` hold "
            f"updates of {stop - start}×{fmt.in_features}."
        )
    return start, stop


def _check_layer_arguments(base_layer, stack, index, dropout, rows=None):
    """The normalized ``index``, ``dropout`` and ``rows``, once the layer and the stack are known to fit."""
    from ._stack import AdapterStack

    if not is_adaptable(base_layer):
        raise TypeError(
            f"`base_layer` must be an nn.Linear or transformers Conv1D layer, got {type(base_layer).__name__}."
        )
    if not isinstance(stack, AdapterStack):
        raise TypeError(f"`stack` must be an AdapterStack, got {type(stack).__name__}.")
    fmt = stack.format
    rows = _check_rows(rows, base_layer, fmt)
    if rows is None and linear_shape(base_layer) != (fmt.out_features, fmt.in_features):
        raise ValueError(
            f"`base_layer` is {linear_shape(base_layer)[0]}×{linear_shape(base_layer)[1]} (out × in), but `stack` "
            f"holds updates of {fmt.out_features}×{fmt.in_features}."
        )
    return normalize_index(index, tuple(fmt.stack)), check_fraction(dropout, "dropout"), rows


BASE = "__base__"
"""The name that selects no adapter in ``model(..., adapter_names=[...])`` (as PEFT)."""


class AdapterLinear(nn.Module, BaseTunerLayer):
    """``base_layer(x) + Σ_active scaling · ΔW_a[index_a] dropout_a(x)``, each update applied factored.

    A PEFT tuner layer (``peft.tuners.tuners_utils.BaseTunerLayer``) holding one slice per adapter:
    for adapter ``a``, the stack of ``a`` that holds this layer's factors and this layer's index in it.

    Parameters
    ----------
    base_layer : nn.Linear or transformers Conv1D
        The frozen pretrained layer (registered as ``base_layer``, so its state-dict keys become
        ``<name>.base_layer.weight`` as in PEFT).
    stack : AdapterStack
        The stack holding this layer's factors for ``adapter_name``. Kept as a plain reference, not a
        submodule: the stacks are registered once, on the tuner, however many layers share them.
    index : tuple of int
        This layer's slice of the stack.
    dropout : float
        Dropout on the adapter's input only, as PEFT's ``lora_dropout``, in ``[0, 1)``.
    adapter_name : str
        The adapter this first slice belongs to (more are added by :meth:`add_slice`).
    rows : (int, int), optional
        For a member of a fused slice (``stack_by="input"``): the layer's update is rows
        ``start:stop`` of the slice's; ``stop - start`` must be the layer's ``out_features`` and the
        layer's ``in_features`` the stack's. Default: the whole slice. Kept per adapter in ``slice_rows``.

    Raises
    ------
    TypeError, ValueError
        If ``base_layer`` is not a linear layer of the stack's ``out × in`` (of ``rows`` of it),
        ``stack`` is not an :class:`AdapterStack`, ``index`` is not a tuple of in-range ints over the
        stack modes, ``rows`` is not an in-range pair of the layer's height, or ``dropout`` is outside
        ``[0, 1)``.

    Notes
    -----
    Mixed precision follows PEFT: the input is cast to the factors' dtype (fp32 with a bf16/fp16 base),
    the update is added to the base output and the sum cast back to the base output's dtype.
    ``Conv1D`` stores its weight ``(in, out)``; the stack always works with ``ΔW (out, in)``, and
    :meth:`merge` adds ``ΔWᵀ`` to such a weight.

    With per-row adapters (``row_adapters``, set by the tuner for ``model(..., adapter_names=[...])``),
    row ``i`` of the batch gets only adapter ``row_adapters[i]`` (:data:`BASE` for none), each adapter
    applied once to the rows that chose it.

    Examples
    --------
    >>> import torch, tensorpeft as tp
    >>> base = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16))
    >>> model = tp.get_peft_model(base, tp.Tucker2Config(rank=2, target_modules=["0", "2"]))
    >>> layer = model.base_model.model[0]
    >>> layer
    AdapterLinear(
      adapters={'default': (0,)}, active=['default'], merged=[], disabled=False
      (base_layer): Linear(in_features=16, out_features=16, bias=True)
      (adapter_dropout): ModuleDict(
        (default): Identity()
      )
    )
    >>> layer(torch.randn(3, 16)).shape
    torch.Size([3, 16])
    """

    adapter_layer_names = ()  # the factors live on the tuner's stacks, not in the layer
    other_param_names = ()

    def __init__(
        self,
        base_layer: nn.Module,
        stack: nn.Module,
        index: tuple[int, ...],
        dropout: float = 0.0,
        adapter_name: str = "default",
        rows: tuple[int, int] | None = None,
    ):
        super().__init__()
        index, dropout, rows = _check_layer_arguments(base_layer, stack, index, dropout, rows)
        self.base_layer = base_layer
        self.adapter_dropout = nn.ModuleDict()
        self.__dict__["slices"] = {}  # {adapter: (stack, index)}; stacks deliberately not submodules
        self.slice_rows = {}  # {adapter: (start, stop) or None}
        self.out_features, self.in_features = linear_shape(base_layer)
        self.fan_in_fan_out = not isinstance(base_layer, nn.Linear)
        self.merged_adapters = []
        self._active_adapter = adapter_name
        self._disable_adapters = False
        self.row_adapters = None
        self._add(adapter_name, stack, index, dropout, rows)

    # ------------------------------------------------------------------ adapters
    def _add(self, adapter_name, stack, index, dropout, rows) -> None:
        self.slices[adapter_name] = (stack, index)
        self.slice_rows[adapter_name] = rows
        self.adapter_dropout[adapter_name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def add_slice(
        self,
        adapter_name: str,
        stack: nn.Module,
        index: tuple[int, ...],
        dropout: float = 0.0,
        rows: tuple[int, int] | None = None,
    ) -> None:
        """Give adapter ``adapter_name`` its slice ``index`` of ``stack`` (its ``rows`` of it) in this layer."""
        index, dropout, rows = _check_layer_arguments(self.base_layer, stack, index, dropout, rows)
        if adapter_name in self.slices:
            raise ValueError(f"layer already has a slice for adapter {adapter_name!r}.")
        self._add(adapter_name, stack, index, dropout, rows)

    def delete_adapter(self, adapter_name: str) -> None:
        """Drop adapter ``adapter_name``'s slice (it must not be merged)."""
        if adapter_name in self.merged_adapters:
            raise ValueError(f"adapter {adapter_name!r} is merged into this layer; unmerge it first.")
        self.slices.pop(adapter_name, None)
        self.slice_rows.pop(adapter_name, None)
        if adapter_name in self.adapter_dropout:
            del self.adapter_dropout[adapter_name]
        active = [a for a in self.active_adapters if a != adapter_name]
        self._active_adapter = active

    def _get_available_adapters(self) -> set[str]:
        return set(self.slices)

    def _move_adapter_to_device_of_base_layer(self, adapter_name: str, device=None) -> None:
        """Nothing to move: the factors live on the tuner's stacks, created on the base layer's device."""

    @property
    def stack(self):
        """The stack of the first active adapter that has a slice here."""
        return self._first_slice()[0]

    @property
    def index(self) -> tuple[int, ...]:
        """The index of this layer in :attr:`stack`."""
        return self._first_slice()[1]

    @property
    def rows(self) -> tuple[int, int] | None:
        """The layer's rows ``(start, stop)`` of its slice of :attr:`stack` (``None``: all of them)."""
        for name in self.active_adapters:
            if name in self.slices:
                return self.slice_rows[name]
        return next(iter(self.slice_rows.values()))

    def _first_slice(self):
        for name in self.active_adapters:
            if name in self.slices:
                return self.slices[name]
        return next(iter(self.slices.values()))

    @property
    def disabled(self) -> bool:
        """Whether the adapters are disabled (PEFT's ``disable_adapters``)."""
        return self._disable_adapters

    @property
    def weight(self) -> torch.Tensor:
        """The base layer's weight (some models read ``layer.weight.dtype``)."""
        return self.base_layer.weight

    @property
    def bias(self):
        """The base layer's bias."""
        return self.base_layer.bias

    # ------------------------------------------------------------------ forward
    def _delta(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        stack, index = self.slices[adapter_name]
        dropped = self.adapter_dropout[adapter_name](x)
        # an active dropout makes a tensor no other layer reads: caching it (or a fused update) cannot pay
        return stack(dropped, index, self.slice_rows.get(adapter_name), share=dropped is x)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Base output, plus the factored update of each active adapter unless merged or disabled."""
        result = self.base_layer(x, *args, **kwargs)
        if self._disable_adapters or self.merged_adapters:
            return result
        if self.row_adapters is not None:
            return self._mixed_forward(x, result)
        out = result
        for name in self.active_adapters:
            if name in self.slices:
                out = out + self._delta(name, x)
        return out.to(result.dtype) if out is not result else result

    def _mixed_forward(self, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        rows = self.row_adapters
        if x.dim() < 2 or len(rows) != x.shape[0]:
            raise ValueError(
                f"`adapter_names` has {len(rows)} entries for a batch of {x.shape[0] if x.dim() else 0} rows."
            )
        out = result.clone()
        for name in dict.fromkeys(rows):
            if name == BASE or name not in self.slices:
                continue
            where = torch.tensor([r == name for r in rows], device=x.device).nonzero().flatten()
            out[where] = (result[where] + self._delta(name, x[where])).to(result.dtype)
        return out

    # ------------------------------------------------------------------ merge
    def _delta_for_weight(self, adapter_name: str) -> torch.Tensor:
        stack, index = self.slices[adapter_name]
        delta = stack.delta_weight(index, self.slice_rows.get(adapter_name))
        return delta.T if self.fan_in_fan_out else delta

    @torch.no_grad()
    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Add ``scaling · ΔW[index]`` of each active (or named) adapter into the base weight.

        Computed in the wider of the two dtypes; idempotent per adapter. With ``safe_merge`` the sum is
        formed in a copy first and refused (ValueError, weight unchanged) if it is not finite.
        """
        names = [n for n in (self.active_adapters if adapter_names is None else adapter_names) if n in self.slices]
        for name in names:
            if name in self.merged_adapters:
                continue
            delta = self._delta_for_weight(name)
            if safe_merge:
                w = self.base_layer.weight
                trial = w.to(torch.promote_types(w.dtype, delta.dtype)) + delta.to(w.device)
                if not bool(torch.isfinite(trial).all()):
                    raise ValueError(f"merging adapter {name!r} would write NaN/inf into the base weight.")
            self._add_to_weight(delta, sign=1.0)
            self.merged_adapters.append(name)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract what :meth:`merge` added, last merged first (W0 back up to round-off)."""
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            self._add_to_weight(self._delta_for_weight(name), sign=-1.0)

    def _add_to_weight(self, delta: torch.Tensor, sign: float) -> None:
        w = self.base_layer.weight
        wide = torch.promote_types(w.dtype, delta.dtype)
        w.copy_((w.to(wide) + sign * delta.to(device=w.device, dtype=wide)).to(w.dtype))

    def extra_repr(self) -> str:
        """Each adapter's slice index (and rows in a fused slice), the active and merged adapters, the disabled flag."""
        adapters = {name: index for name, (_, index) in self.slices.items()}
        rows = {name: r for name, r in self.slice_rows.items() if r is not None}
        return (
            f"adapters={adapters}, {f'rows={rows}, ' if rows else ''}active={self.active_adapters}, "
            f"merged={self.merged_adapters}, disabled={self._disable_adapters}"
        )
