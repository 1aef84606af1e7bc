"""The model wrapper: injection, trainable-parameter accounting, enable/disable, merge and unload."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Mapping

import torch
from torch import nn

from ..decomp.validate import check_allocation
from ._config import AdapterConfig
from ._grouping import StackPlan, plan_stacks
from ._init import adapter_dtype, initial_factors, pretrained_stack
from ._layer import AdapterLinear
from ._linear import parent_module
from ._stack import AdapterStack

__all__ = ["TensorPeftModel", "get_peft_model"]


class TensorPeftModel(nn.Module):
    """A base model with tensor-decomposition adapters injected into its linear layers.

    Build it with :func:`get_peft_model` (or ``TensorPeftModel(base_model, config)``) or
    :meth:`from_pretrained`. The base model is frozen; each matched layer is replaced by an
    :class:`AdapterLinear` that reads its slice of a shared :class:`AdapterStack`. Attributes the
    wrapper lacks are looked up on the base model (``model.config``, ``model.generate``, ...), as PEFT.

    Parameters
    ----------
    base_model : nn.Module
        Any model with ``nn.Linear`` (or transformers ``Conv1D``) layers; modified in place.
    config : AdapterConfig
        What to adapt and how.
    factors : dict[str, dict[str, torch.Tensor]], optional
        Initial factors per stack name (used when loading); default from ``config.init``.
    trainable : bool
        Whether the adapter factors require gradients.
    _planned : list of (StackPlan, format), optional
        Internal: the result of :func:`plan_stacks` for ``base_model`` and ``config`` when the caller has
        already computed it (:func:`load_adapter` does, to compare with the file), so that a model is
        planned once. Not checked again; leave it out.

    Attributes
    ----------
    base_model : nn.Module
        The wrapped model (its adapted layers are :class:`AdapterLinear`).
    peft_config : AdapterConfig
    tensor_adapters : nn.ModuleDict
        ``{stack name: AdapterStack}``: the only place the factors are registered.
    plans : list of StackPlan
        Members, indices and shapes of every stack (what :meth:`save_pretrained` records).

    Raises
    ------
    TypeError, ValueError
        Before anything is modified or allocated: a bad config, a target matching nothing or a
        non-linear module, a rank that does not fit a stack, factors of the wrong names, types or
        shapes, a ``trainable`` that is not a bool, or factors (with ``init="svd"`` also the stacked
        pretrained weights) whose total over all stacks exceeds the memory of their device: the
        machine's physical memory, or the free memory of the CUDA device holding the weights.

    Notes
    -----
    Hooks for extensions: ``model.tensor_adapters[name].factors()`` gives the live parameters in the
    format's layout (``lambda`` of LoRA² for a rank pruner), ``model.tensor_adapters[name].format``
    the format, and :meth:`adapter_layers` every wrapped layer with its stack and index.

    Examples
    --------
    >>> import torch, tensorpeft as tp
    >>> base = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16))
    >>> model = tp.nn.TensorPeftModel(base, tp.Tucker2Config(rank=2, target_modules=["0", "2"]))
    >>> [(name, layer.index) for name, layer in model.adapter_layers()]
    [('0', (0,)), ('2', (1,))]
    >>> model(torch.randn(3, 16)).shape
    torch.Size([3, 16])
    >>> type(model.merge_and_unload()[0]).__name__
    'Linear'
    """

    def __init__(
        self, base_model: nn.Module, config: AdapterConfig, *, factors=None, trainable: bool = True, _planned=None
    ):
        super().__init__()
        _check_arguments(base_model, config, factors, trainable)
        planned = plan_stacks(base_model, config) if _planned is None else _planned
        modules = dict(base_model.named_modules())
        _check_memory(planned, modules, config)
        stacks = {}
        for k, (plan, fmt) in enumerate(planned):
            layers = [(modules[n], index) for n, index in plan.members]
            if factors is None:
                init = _initial_factors(layers, fmt, config, (config.seed + k) % 2**63)  # seeds stay in [0, 2**63)
            else:
                init = _given_factors(factors, plan.name, [p.name for p, _ in planned])
            stacks[plan.name] = AdapterStack(fmt, config.scaling, init)  # validates names and shapes

        # Nothing above touched the base model; from here on nothing can fail on user input.
        self.base_model = base_model
        self.peft_config = config
        self.plans: list[StackPlan] = [plan for plan, _ in planned]
        self.tensor_adapters = nn.ModuleDict(stacks)
        self._base_requires_grad = {n: p.requires_grad for n, p in base_model.named_parameters()}
        self._sharing_depth = 0
        self._unloaded = False
        for p in base_model.parameters():
            p.requires_grad_(False)
        for plan in self.plans:
            stack = stacks[plan.name]
            for name, index in plan.members:
                parent, child = parent_module(base_model, name)
                setattr(parent, child, AdapterLinear(modules[name], stack, index, config.dropout))
        for p in self.tensor_adapters.parameters():
            p.requires_grad_(trainable)

    # ------------------------------------------------------------------ plumbing
    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in {"base_model", "tensor_adapters"}:
                raise
            return getattr(self.base_model, name)

    def _check_live(self) -> None:
        if self._unloaded:
            raise RuntimeError("this TensorPeftModel was unloaded (merge_and_unload/unload); use the returned model.")

    @contextlib.contextmanager
    def _shared_projections(self):
        self._sharing_depth += 1
        if self._sharing_depth == 1:
            for stack in self.tensor_adapters.values():
                stack.set_sharing(True)
        try:
            yield
        finally:
            self._sharing_depth -= 1
            if self._sharing_depth == 0:
                for stack in self.tensor_adapters.values():
                    stack.set_sharing(False)

    def forward(self, *args, **kwargs):
        """The base model's forward; stacks share ``x·B`` across slices that read the same input."""
        self._check_live()
        with self._shared_projections():
            return self.base_model(*args, **kwargs)

    def adapter_layers(self):
        """Iterate ``(name, AdapterLinear)`` over the adapted layers, in module order."""
        for name, module in self.base_model.named_modules():
            if isinstance(module, AdapterLinear):
                yield name, module

    # ------------------------------------------------------------------ accounting
    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """``(trainable, total)`` parameter counts; a factor shared by many layers counts once."""
        params = list(self.parameters())  # nn.Module.parameters() yields each tensor once
        return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

    def print_trainable_parameters(self) -> None:
        """Print ``trainable params: X || all params: Y || trainable%: Z`` (PEFT's line)."""
        trainable, total = self.get_nb_trainable_parameters()
        print(
            f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"
        )

    def orthogonality_loss(self) -> torch.Tensor:
        """LoRA²'s regularizer: the sum of every stack's ``format.regularizer`` terms.

        Only :class:`~tensorpeft.decomp.OrthogonalProjection` (LoRA²) has terms among the built-in
        formats: its ``orthogonality_penalty``. Zero (a 0-d tensor) when no stack's format has any.
        Multiply by the coefficient (0.1 in LoRA²) and add it to the loss.
        """
        total = None
        for stack in self.tensor_adapters.values():
            terms = stack.format.regularizer(stack.factors())
            if terms:
                value = sum(terms.values())
                total = value if total is None else total + value
        if total is None:
            first = next(self.tensor_adapters.parameters())
            return torch.zeros((), dtype=first.dtype, device=first.device)
        return total

    # ------------------------------------------------------------------ enable / merge
    @contextlib.contextmanager
    def disable_adapter(self):
        """Context manager: inside, the model computes exactly the base model's function.

        Raises
        ------
        RuntimeError
            If the adapter is merged (call :meth:`unmerge_adapter` first).
        """
        self._check_live()
        layers = [layer for _, layer in self.adapter_layers()]
        if any(layer.merged for layer in layers):
            raise RuntimeError("disable_adapter() on a merged model: call unmerge_adapter() first.")
        previous = [layer.disabled for layer in layers]
        for layer in layers:
            layer.disabled = True
        try:
            yield
        finally:
            for layer, flag in zip(layers, previous, strict=True):
                layer.disabled = flag

    def merge_adapter(self) -> None:
        """Add ``scaling · ΔW`` into every adapted base weight (idempotent); forward is then the base cost."""
        self._check_live()
        for _, layer in self.adapter_layers():
            layer.merge()

    def unmerge_adapter(self) -> None:
        """Undo :meth:`merge_adapter` (W0 back to round-off, ≤1e-6 relative in fp32)."""
        self._check_live()
        for _, layer in self.adapter_layers():
            layer.unmerge()

    def _replace_wrappers(self) -> nn.Module:
        for name, layer in list(self.adapter_layers()):
            parent, child = parent_module(self.base_model, name)
            setattr(parent, child, layer.base_layer)
        for name, p in self.base_model.named_parameters():
            p.requires_grad_(self._base_requires_grad.get(name, p.requires_grad))
        self._unloaded = True
        return self.base_model

    def merge_and_unload(self) -> nn.Module:
        """Merge, then return the base model (its own class) with the merged weights and no adapter modules."""
        self.merge_adapter()
        return self._replace_wrappers()

    def unload(self) -> nn.Module:
        """Return the base model with the adapters removed (unmerged first): the pretrained model back."""
        self.unmerge_adapter()
        return self._replace_wrappers()

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write ``adapter_config.json`` and ``adapter_model.safetensors`` into ``path`` (atomically).

        Both files go into a fresh hidden sibling directory that then takes ``path``'s place in one
        step (with any other files ``path`` held), so ``path`` always holds the complete old adapter or
        the complete new one, even if the process is killed; the next save removes what a killed save
        left. Factors with NaN/inf values are refused before anything is written. See
        :func:`tensorpeft.nn.save_adapter`.
        """
        from ._serialization import save_adapter

        self._check_live()
        save_adapter(self, path)

    @classmethod
    def from_pretrained(
        cls,
        base_model: nn.Module,
        path: str | os.PathLike,
        is_trainable: bool = False,
        *,
        trust_custom_factories: bool | list = False,
    ) -> TensorPeftModel:
        """Load an adapter saved by :meth:`save_pretrained` onto ``base_model``.

        Parameters
        ----------
        base_model : nn.Module
            A model of the architecture the adapter was saved for; modified in place, and only after
            every check has passed.
        path : str or PathLike
            The adapter directory (untrusted: nothing it names is imported without the opt-in below).
        is_trainable : bool
            ``False`` (default): the factors are frozen and the model is put in eval mode, as PEFT.
        trust_custom_factories : bool or list of (callable or str)
            Only for a :class:`CustomConfig` adapter, whose config names a factory to import and call.
            Refused by default (nothing is imported); ``True`` trusts whatever the file names, a list
            such as ``[my_formats.fact_tk]`` or ``["my_formats:fact_tk"]`` allows only those factories.
            Built-in formats never need it and are never imported from a path in the file.

        Returns
        -------
        TensorPeftModel
            The base model with the saved adapter.

        Raises
        ------
        TypeError, ValueError
            Naming the argument, file or field, with ``base_model`` unchanged (same state_dict keys,
            bytes and ``requires_grad`` flags): a bad argument (``is_trainable`` must be a bool), a
            file that is not a regular file or is too large, JSON that is not strict (NaN, ``1e999``,
            too deep), an untrusted factory, stacks that do not match ``base_model``, tensors of wrong
            names, shapes or checksum, a dtype the forward cannot run, NaN or inf values.

        Notes
        -----
        Dtypes: every factor keeps the dtype stored in the file when it is float16, bfloat16, float32
        or float64 (the factors of one stack must share it); any other dtype (float8, integers, ...)
        is a ValueError naming the tensor and its dtype, never a silent conversion. Factors are moved
        to the device of their stack's first layer.
        """
        from ._serialization import load_adapter

        return load_adapter(
            cls, base_model, path, is_trainable=is_trainable, trust_custom_factories=trust_custom_factories
        )

    def export_lora(self, path: str | os.PathLike, rank: int | None = None):
        """Write a standard PEFT LoRA adapter that reproduces this model; see :func:`tensorpeft.nn.export_lora`."""
        from ._export import export_lora

        self._check_live()
        return export_lora(self, path, rank=rank)


def _check_arguments(base_model, config, factors, trainable) -> None:
    """Type checks of :class:`TensorPeftModel`'s arguments, before anything is planned or touched."""
    if not isinstance(config, AdapterConfig):
        raise TypeError(f"`config` must be an AdapterConfig (e.g. Tucker2Config), got {type(config).__name__}.")
    if not isinstance(base_model, nn.Module):
        raise TypeError(f"`base_model` must be a torch.nn.Module, got {type(base_model).__name__}.")
    if not isinstance(trainable, bool):
        raise TypeError(f"`trainable` must be a bool, got {trainable!r} ({type(trainable).__name__}).")
    if factors is not None and not isinstance(factors, Mapping):
        raise TypeError(
            f"`factors` must be None or a dict {{stack name: {{factor name: tensor}}}}, got {type(factors).__name__}."
        )


def _given_factors(factors: Mapping, name: str, names: list[str]) -> dict:
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


def _initial_factors(layers, fmt, config: AdapterConfig, seed: int) -> dict:
    """``config.init``'s factors of one stack, on its weights' device (SVD needs finite weights)."""
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


def _check_memory(planned, modules: dict, config: AdapterConfig) -> None:
    """Refuse, before any allocation, stacks whose factors (and SVD inputs) exceed their device's memory.

    Summed over all stacks per device, at the largest adapter itemsize of that device (an upper bound).
    """
    needed: dict[torch.device, list[int]] = {}
    for plan, fmt in planned:
        weight = modules[plan.members[0][0]].weight
        if weight.device.type == "meta":
            continue
        n = fmt.num_params + (math.prod(fmt.shape) if config.init == "svd" else 0)
        entry = needed.setdefault(weight.device, [0, 1])
        entry[0] += n
        entry[1] = max(entry[1], adapter_dtype(weight).itemsize)
    for device, (n_scalars, itemsize) in needed.items():
        check_allocation(n_scalars, itemsize, "rank", available=_device_memory(device))


def get_peft_model(model: nn.Module, config: AdapterConfig) -> TensorPeftModel:
    """Inject the adapters described by ``config`` into ``model`` and freeze the base.

    Parameters
    ----------
    model : nn.Module
        Modified in place (adapted layers replaced by :class:`AdapterLinear`).
    config : AdapterConfig
        ``LoRAConfig``, ``Tucker2Config``, ``CPConfig``, ``TensorTrainConfig``, ``OrthogonalConfig``
        or ``CustomConfig``.

    Returns
    -------
    TensorPeftModel
        Whose outputs equal the base model's exactly until the adapters are trained.

    Raises
    ------
    TypeError, ValueError
        With ``model`` unchanged; see :class:`TensorPeftModel`.

    Examples
    --------
    >>> import torch, tensorpeft as tp
    >>> base = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16))
    >>> model = tp.get_peft_model(base, tp.Tucker2Config(rank=2, target_modules=["0", "2"]))
    >>> model.get_nb_trainable_parameters()  # A, B shared by the two layers + two 2×2 cores
    (72, 616)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    return TensorPeftModel(model, config)
