"""The model wrapper: injection, trainable-parameter accounting, enable/disable, merge and unload."""

from __future__ import annotations

import contextlib
import os

import torch
from torch import nn

from ._config import AdapterConfig
from ._grouping import StackPlan, plan_stacks
from ._init import adapter_dtype, initial_factors, pretrained_stack
from ._layer import AdapterLinear
from ._stack import AdapterStack
from ._targets import parent_module

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
        Before anything is modified: a bad config, a target matching nothing or a non-linear module,
        a rank that does not fit a stack, factors of the wrong names or shapes.

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

    def __init__(self, base_model: nn.Module, config: AdapterConfig, *, factors=None, trainable: bool = True):
        super().__init__()
        if not isinstance(config, AdapterConfig):
            raise TypeError(f"`config` must be an AdapterConfig (e.g. Tucker2Config), got {type(config).__name__}.")
        if not isinstance(base_model, nn.Module):
            raise TypeError(f"`base_model` must be a torch.nn.Module, got {type(base_model).__name__}.")
        planned = plan_stacks(base_model, config)
        modules = dict(base_model.named_modules())
        stacks = {}
        for k, (plan, fmt) in enumerate(planned):
            layers = [(modules[n], index) for n, index in plan.members]
            weight = layers[0][0].weight
            if factors is None:
                dtype = adapter_dtype(weight)
                dense = pretrained_stack(layers, fmt.shape, dtype) if config.init == "svd" else None
                init = initial_factors(fmt, config.init, config.seed + k, dtype, weight.device, dense)
            else:
                if plan.name not in factors:
                    raise ValueError(
                        f"`factors` has no entry for stack {plan.name!r}; expected {[p.name for p, _ in planned]}."
                    )
                init = factors[plan.name]
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
        """LoRA²'s regularizer: the sum of ``OrthogonalProjection.orthogonality_penalty`` over its stacks.

        Zero (a 0-d tensor) when no stack is an orthogonal projection. Multiply by the coefficient
        (0.1 in LoRA²) and add it to the loss.
        """
        from .. import decomp

        total = None
        for stack in self.tensor_adapters.values():
            if isinstance(stack.format, decomp.OrthogonalProjection):
                terms = stack.format.orthogonality_penalty(stack.factors())
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

        See :func:`tensorpeft.nn.save_adapter`.
        """
        from ._serialization import save_adapter

        self._check_live()
        save_adapter(self, path)

    @classmethod
    def from_pretrained(
        cls, base_model: nn.Module, path: str | os.PathLike, is_trainable: bool = False
    ) -> TensorPeftModel:
        """Load an adapter saved by :meth:`save_pretrained` onto ``base_model``.

        The config, every stack's member names and shapes, and every tensor (names, shapes, checksum)
        are validated before ``base_model`` is touched; on any mismatch a ValueError names what
        differs and ``base_model`` is unchanged. With ``is_trainable=False`` (default) the factors are
        frozen and the model is put in eval mode, as PEFT.
        """
        from ._serialization import load_adapter

        return load_adapter(cls, base_model, path, is_trainable=is_trainable)

    def export_lora(self, path: str | os.PathLike, rank: int | None = None):
        """Write a standard PEFT LoRA adapter that reproduces this model; see :func:`tensorpeft.nn.export_lora`."""
        from ._export import export_lora

        self._check_live()
        return export_lora(self, path, rank=rank)


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
    return TensorPeftModel(model, config)
