"""The tuner PEFT wraps: injection, stacks per adapter, enable/disable, merge and unload.

:class:`TensorPeftModel` is tensorpeft's ``peft.tuners.tuners_utils.BaseTuner`` (what ``LoraModel`` is
for LoRA), registered for ``PeftType.TENSORPEFT`` (:mod:`._peft_registry`). ``peft.get_peft_model``
and :func:`get_peft_model` return a ``peft.PeftModel`` whose ``base_model`` is one of these; the
``PeftModel`` forwards unknown attributes to it, so ``model.orthogonality_loss()``,
``model.tensor_adapters`` or ``model.export_lora(dir)`` work on the ``PeftModel``.

Unlike LoRA, one adapter's factors are shared by many layers: they live once, on the tuner, in
``tensorpeft_stacks[adapter][stack]``, and every adapted layer (:class:`AdapterLinear`) holds a plain
reference to its stack and its index (PEFT's VB-LoRA keeps its shared vector bank on the tuner too).
Injection plans every stack first (:func:`plan_stacks`) and changes the model only once every check has
passed.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping

import torch
from peft.tuners.tuners_utils import BaseTuner
from peft.utils import set_additional_trainable_modules
from torch import nn

from ._config import AdapterConfig
from ._grouping import StackPlan, plan_stacks
from ._init import check_memory, given_factors, stack_initial_factors
from ._layer import BASE, AdapterLinear
from ._linear import parent_module
from ._peft_registry import PEFT_PREFIX
from ._stack import AdapterStack

__all__ = ["TensorPeftModel", "get_peft_model", "tuner_of"]

STACKS = "tensorpeft_stacks"
"""Attribute of the tuner holding ``{adapter: {stack: AdapterStack}}``; also the state-dict key part."""
_ADAPTER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")


class TensorPeftModel(BaseTuner):
    """Tensor-decomposition adapters injected into a model's linear layers: PEFT's tuner for tensorpeft.

    Usually built for you by :func:`get_peft_model` or ``peft.get_peft_model`` (which wrap it in a
    ``peft.PeftModel``); ``TensorPeftModel(model, config)`` builds the bare tuner (as
    ``LoraModel(model, config, "default")``). The base model is frozen; each matched layer is
    replaced by an :class:`AdapterLinear` that reads its slice of a shared :class:`AdapterStack`.
    Attributes the tuner lacks are looked up on the model (``model.config``, ``model.generate``, ...).

    Parameters
    ----------
    model : nn.Module
        Any model with ``nn.Linear`` (or transformers ``Conv1D``) layers; modified in place, only after
        every check has passed.
    peft_config : AdapterConfig or dict[str, AdapterConfig]
        What to adapt and how (PEFT passes ``{adapter_name: config}``).
    adapter_name : str
        Name of this first adapter (``"default"``).
    factors : dict[str, dict[str, torch.Tensor]], optional
        Initial factors per stack name (e.g. from a fit), checked against the plan; default from
        ``config.init``. The adapter trains unless ``config.inference_mode``.
    low_cpu_mem_usage : bool
        PEFT's argument; tensorpeft creates the (small) factors directly, so it changes nothing.
    **kwargs
        Other arguments of PEFT's ``BaseTuner`` (``state_dict``), passed on.

    Attributes
    ----------
    model : nn.Module
        The wrapped model (its adapted layers are :class:`AdapterLinear`).
    peft_config : dict[str, AdapterConfig]
        One config per adapter (PEFT's attribute).
    tensorpeft_stacks : nn.ModuleDict
        ``{adapter: {stack name: AdapterStack}}``: the only place the factors are registered.
    tensor_adapters : nn.ModuleDict
        The stacks of the active adapter.
    plans : list of StackPlan
        Members, indices and shapes of every stack of the active adapter (what a save records).

    Raises
    ------
    TypeError, ValueError
        Before anything is modified or allocated: a bad config, a target matching nothing or a
        non-linear module, a rank that does not fit a stack, factors of the wrong names, types or
        shapes, or factors (with ``init="svd"`` also the stacked pretrained weights) whose total over
        all stacks exceeds the memory of their device: the machine's physical memory, or the free
        memory of the CUDA device holding the weights.

    Notes
    -----
    Hooks for extensions: ``model.tensor_adapters[name].factors()`` gives the live parameters in the
    format's layout (``lambda`` of LoRA² for a rank pruner), ``model.tensor_adapters[name].format``
    the format, and :meth:`adapter_layers` every wrapped layer with its stack, index and rows
    (``layer.rows``: its rows of a fused ``stack_by="input"`` slice, else None).

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

    prefix: str = PEFT_PREFIX
    tuner_layer_cls = AdapterLinear
    target_module_mapping: dict = {}  # noqa: RUF012 - PEFT's class attribute; target_modules is required
    uses_shared_state = True

    def __init__(
        self, model, peft_config, adapter_name: str = "default", low_cpu_mem_usage: bool = False, factors=None, **kwargs
    ):
        config = peft_config if isinstance(peft_config, AdapterConfig) else None
        if config is None and isinstance(peft_config, Mapping) and adapter_name in peft_config:
            config = peft_config[adapter_name]
        _check_arguments(model, config, adapter_name)
        _check_plain(model)
        if factors is not None:
            if not isinstance(factors, Mapping):
                raise TypeError(
                    "`factors` must be None or a dict {stack name: {factor name: tensor}}, "
                    f"got {type(factors).__name__}."
                )
            config._tp_factors = factors
        super().__init__(model, peft_config, adapter_name, low_cpu_mem_usage=low_cpu_mem_usage, **kwargs)

    # ------------------------------------------------------------------ plumbing
    def _pre_injection_hook(self, model, config, adapter_name) -> None:
        if STACKS not in self._modules:
            self.tensorpeft_stacks = nn.ModuleDict()
            self._plans: dict[str, list[StackPlan]] = {}
            self._base_requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
            self._sharing_depth = 0
            self._unloaded = False
            self._pending: set[str] = set()  # adapters injected from a parsed config, waiting for their weights

    def _prepare_adapter_config(self, peft_config, model_config):
        return peft_config

    def _create_and_replace(self, *args, **kwargs):  # pragma: no cover - inject_adapter does it all
        raise NotImplementedError("TensorPeftModel injects whole stacks in inject_adapter.")

    @staticmethod
    def _check_target_module_exists(peft_config, key):  # pragma: no cover - matching is plan_stacks'
        raise NotImplementedError("TensorPeftModel matches targets in plan_stacks.")

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        """Nothing to cast: factors are created fp32 for half-precision bases (see ``adapter_dtype``)."""

    def _check_live(self) -> None:
        if self._unloaded:
            raise RuntimeError("this TensorPeftModel was unloaded (merge_and_unload/unload); use the returned model.")

    def inject_adapter(
        self,
        model: nn.Module,
        adapter_name: str,
        autocast_adapter_dtype: bool = True,
        low_cpu_mem_usage=False,
        **kwargs,
    ) -> None:
        """Plan, check and build every stack of ``adapter_name``, then replace the layers (PEFT's hook).

        Everything that can fail on user input (config, targets, ranks, memory, given or saved
        factors) runs before the first change to ``model``.
        """
        self._check_live()
        config = self.peft_config[adapter_name]
        _check_new_adapter(self, config, adapter_name)
        planned = getattr(config, "_tp_planned", None) or plan_stacks(model, config, adapted_ok=True)
        factors = getattr(config, "_tp_factors", None)
        source = getattr(config, "_tp_source", None)
        if factors is None and source is not None:
            from ._serialization import read_factors

            factors = read_factors(source, planned, model)
        modules = _plain_modules(model)
        check_memory(planned, modules, config)
        stacks = {}
        for k, (plan, fmt) in enumerate(planned):
            layers = [
                (modules[n], index, rows) for (n, index), rows in zip(plan.members, plan.member_rows(), strict=True)
            ]
            if factors is None:
                init = stack_initial_factors(layers, fmt, config, (config.seed + k) % 2**63)  # seeds stay in [0, 2**63)
            else:
                init = given_factors(factors, plan.name, [p.name for p, _ in planned])
            stacks[plan.name] = AdapterStack(fmt, config.scaling, init)  # validates names and shapes
        for attr in ("_tp_planned", "_tp_factors", "_tp_source"):
            config.__dict__.pop(attr, None)
        if factors is None and getattr(config, "_parsed", False):
            self._pending.add(adapter_name)  # PeftModel.from_pretrained(..., config=a config PEFT read) loads next

        # Nothing above touched the model; from here on nothing can fail on user input.
        self.tensorpeft_stacks[adapter_name] = nn.ModuleDict(stacks)
        self._plans[adapter_name] = [plan for plan, _ in planned]
        config._tp_plans = self._plans[adapter_name]  # what config.save_pretrained records
        for p in model.parameters():
            p.requires_grad_(False)
        wrapped = {name: m for name, m in model.named_modules() if isinstance(m, AdapterLinear)}
        for plan in self._plans[adapter_name]:
            stack = stacks[plan.name]
            for (name, index), rows in zip(plan.members, plan.member_rows(), strict=True):
                if name in wrapped:
                    wrapped[name].add_slice(adapter_name, stack, index, config.dropout, rows)
                    continue
                parent, child = parent_module(model, name)
                layer = AdapterLinear(modules[name], stack, index, config.dropout, adapter_name=adapter_name, rows=rows)
                layer.set_adapter(self.active_adapters)
                setattr(parent, child, layer)
                self.targeted_module_names.append(name)
        trainable = not config.inference_mode and adapter_name in self.active_adapters
        for p in self.tensorpeft_stacks[adapter_name].parameters():
            p.requires_grad_(trainable)
        set_additional_trainable_modules(
            model=model,
            peft_config=config,
            model_config=BaseTuner.get_model_config(self),
            adapter_name=adapter_name,
            activate_adapter=adapter_name in self.active_adapters,
        )

    def disable_adapter_layers(self) -> None:
        """Make every layer compute its base output only (``PeftModel.disable_adapter()`` calls this).

        Raises
        ------
        RuntimeError
            If an adapter is merged (call ``unmerge_adapter()`` first): the merged weights are not the base's.
        """
        if any(layer.merged_adapters for _, layer in self.adapter_layers()):
            raise RuntimeError("disable_adapter() on a merged model: call unmerge_adapter() first.")
        super().disable_adapter_layers()

    def _mark_only_adapters_as_trainable(self, model: nn.Module) -> None:
        """Freeze the base; the active adapters' factors train unless their config is in inference mode."""
        for p in model.parameters():
            p.requires_grad_(False)
        for name, stacks in self.tensorpeft_stacks.items():
            on = name in self.active_adapters and not self.peft_config[name].inference_mode
            for p in stacks.parameters():
                p.requires_grad_(on)

    def _checkpointing(self) -> bool:
        """Whether the model recomputes activations in backward (transformers' gradient checkpointing)."""
        # transformers sets a plain `gradient_checkpointing` attribute on the modules it checkpoints; reading
        # the instance dicts is ~10x faster than its `is_activation_checkpointing` (hasattr on every module).
        return any(m.__dict__.get("gradient_checkpointing") is True for m in self.model.modules())

    @contextlib.contextmanager
    def _shared_projections(self):
        """Share ``x·B`` across the slices that read one input during this forward.

        Off under gradient checkpointing: the recomputation in backward runs outside this context, and
        it must save exactly the tensors the forward saved (torch checks), so both compute unshared.
        """
        self._sharing_depth += 1
        if self._sharing_depth == 1 and not (self.training and self._checkpointing()):
            for stacks in self.tensorpeft_stacks.values():
                for stack in stacks.values():
                    stack.set_sharing(True)
        try:
            yield
        finally:
            self._sharing_depth -= 1
            if self._sharing_depth == 0:  # setting off is harmless if it was never turned on
                for stacks in self.tensorpeft_stacks.values():
                    for stack in stacks.values():
                        stack.set_sharing(False)

    @contextlib.contextmanager
    def _enable_peft_forward_hooks(self, *args, **kwargs):
        """PEFT's forward hook: input-projection sharing, and per-row ``adapter_names`` if given."""
        self._check_live()
        if self.training:
            self._pending.clear()  # being trained: a later failed load must not remove it
        rows = kwargs.pop("adapter_names", None)
        layers = []
        if rows is not None:
            rows = self._check_row_adapters(rows)
            layers = [layer for _, layer in self.adapter_layers()]
        for layer in layers:
            layer.row_adapters = rows
        try:
            with self._shared_projections():
                yield
        finally:
            for layer in layers:
                layer.row_adapters = None

    def _check_row_adapters(self, rows) -> list[str]:
        if isinstance(rows, str) or not isinstance(rows, list | tuple):
            raise TypeError(f"`adapter_names` must be a list of adapter names (one per row), got {rows!r}.")
        unknown = sorted({r for r in rows if r != BASE and r not in self.peft_config})
        if unknown:
            raise ValueError(
                f"`adapter_names` names unknown adapters {unknown}; expected some of {sorted(self.peft_config)} "
                f"or {BASE!r} (no adapter)."
            )
        if self.training:
            raise ValueError("`adapter_names` (one adapter per row) is for inference; call model.eval() first.")
        if any(layer.merged_adapters for _, layer in self.adapter_layers()):
            raise ValueError("`adapter_names` cannot be used while adapters are merged; unmerge_adapter() first.")
        return list(rows)

    def forward(self, *args, **kwargs):
        """The model's forward; stacks share ``x·B`` across slices that read the same input."""
        self._check_live()
        with self._enable_peft_forward_hooks(*args, **kwargs):
            kwargs.pop("adapter_names", None)
            return self.model(*args, **kwargs)

    def adapter_layers(self):
        """Iterate ``(name, AdapterLinear)`` over the adapted layers, in module order."""
        for name, module in self.model.named_modules():
            if isinstance(module, AdapterLinear):
                yield name, module

    @property
    def _active_name(self) -> str:
        active = [a for a in self.active_adapters if a in self.tensorpeft_stacks]
        if not active:
            raise ValueError("no active tensorpeft adapter; call set_adapter(name) first.")
        return active[0]

    @property
    def tensor_adapters(self) -> nn.ModuleDict:
        """``{stack name: AdapterStack}`` of the (first) active adapter."""
        return self.tensorpeft_stacks[self._active_name]

    @property
    def plans(self) -> list[StackPlan]:
        """The stack plans of the (first) active adapter."""
        return self._plans[self._active_name]

    @property
    def active_config(self) -> AdapterConfig:
        """The config of the (first) active adapter."""
        return self.peft_config[self._active_name]

    # ------------------------------------------------------------------ adapters
    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        """Make ``adapter_name`` (or a list of names) the active adapter(s); only they train."""
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        unknown = sorted(set(names) - set(self.peft_config))
        if unknown:
            raise ValueError(f"unknown adapter(s) {unknown}; this model has {sorted(self.peft_config)}.")
        for _, layer in self.adapter_layers():
            layer.set_adapter(names)
        self.active_adapter = adapter_name
        for name, stacks in self.tensorpeft_stacks.items():
            on = name in names and not inference_mode
            for p in stacks.parameters():
                p.requires_grad_(on)

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove adapter ``adapter_name``: its slices, its stacks, its config (it must not be merged)."""
        if adapter_name not in self.peft_config:
            raise ValueError(f"Adapter {adapter_name} does not exist")
        if any(adapter_name in layer.merged_adapters for _, layer in self.adapter_layers()):
            raise ValueError(f"adapter {adapter_name!r} is merged; unmerge_adapter() first.")
        del self.peft_config[adapter_name]
        for name, layer in list(self.adapter_layers()):
            layer.delete_adapter(adapter_name)
            if not layer.slices:
                parent, child = parent_module(self.model, name)
                setattr(parent, child, layer.base_layer)
        if adapter_name in self.tensorpeft_stacks:
            del self.tensorpeft_stacks[adapter_name]
        self._plans.pop(adapter_name, None)
        remaining = [a for a in self.active_adapters if a != adapter_name]
        if not remaining and self.peft_config:
            remaining = [next(iter(self.peft_config))]
        self.active_adapter = remaining[0] if len(remaining) == 1 else remaining
        if remaining:
            self.set_adapter(self.active_adapter)

    # ------------------------------------------------------------------ losses
    def orthogonality_loss(self) -> torch.Tensor:
        """LoRA²'s regularizer: the sum of every active stack's ``format.regularizer`` terms.

        Only :class:`~tensorpeft.decomp.OrthogonalProjection` (LoRA²) has terms among the built-in
        formats: its ``orthogonality_penalty``. Zero (a 0-d tensor) when no stack's format has any.
        Multiply by the coefficient (0.1 in LoRA²) and add it to the loss.
        """
        total = None
        for name in self.active_adapters:
            for stack in self.tensorpeft_stacks[name].values():
                terms = stack.format.regularizer(stack.factors())
                if terms:
                    value = sum(terms.values())
                    total = value if total is None else total + value
        if total is None:
            first = next(self.tensorpeft_stacks.parameters())
            return torch.zeros((), dtype=first.dtype, device=first.device)
        return total

    # ------------------------------------------------------------------ merge
    def merge_adapter(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        """Add ``scaling · ΔW`` of the active (or named) adapters into the base weights (idempotent)."""
        self._check_live()
        for _, layer in self.adapter_layers():
            layer.merge(safe_merge=safe_merge, adapter_names=adapter_names)

    def unmerge_adapter(self) -> None:
        """Undo :meth:`merge_adapter` (W0 back to round-off, ≤1e-6 relative in fp32)."""
        self._check_live()
        for _, layer in self.adapter_layers():
            layer.unmerge()

    def _unload_and_optionally_merge(self, merge=True, progressbar=False, safe_merge=False, adapter_names=None):
        self._check_live()
        if merge:
            self.merge_adapter(adapter_names=adapter_names, safe_merge=safe_merge)
        else:
            self.unmerge_adapter()
        model = super()._unload_and_optionally_merge(merge=False, progressbar=progressbar)
        for name, p in model.named_parameters():
            p.requires_grad_(self._base_requires_grad.get(name, p.requires_grad))
        self._unloaded = True
        return model

    # ------------------------------------------------------------------ persistence
    @classmethod
    def from_pretrained(
        cls,
        base_model: nn.Module,
        path: str | os.PathLike,
        is_trainable: bool = False,
        *,
        adapter_name: str = "default",
        trust_custom_factories: bool | list = False,
    ):
        """Load an adapter directory onto ``base_model``, strictly: see :func:`tensorpeft.nn.load_adapter`.

        Returns a ``peft.PeftModel`` (the task subclass of the saved ``task_type``), as
        ``peft.PeftModel.from_pretrained`` does, but every file, name, shape, dtype and value is
        checked before ``base_model`` changes.
        """
        from ._serialization import load_adapter

        return load_adapter(
            base_model,
            path,
            is_trainable=is_trainable,
            adapter_name=adapter_name,
            trust_custom_factories=trust_custom_factories,
        )

    def export_lora(self, path: str | os.PathLike, rank: int | None = None, **kwargs):
        """Write a standard PEFT LoRA adapter that reproduces this model; see :func:`tensorpeft.nn.export_lora`."""
        from ._export import export_lora

        self._check_live()
        return export_lora(self, path, rank=rank, **kwargs)

    # ------------------------------------------------------------------ PEFT state dict
    @classmethod
    def _get_adapter_state_dict(cls, model, config, adapter_name, state_dict, unwanted_adapter_names):
        """The adapter's factors for PEFT's ``save_pretrained``; NaN/inf or unloadable dtypes refused first.

        PEFT writes the file right after this returns, so a factor no loader would accept raises here,
        before anything is written.
        """
        from ._serialization import check_factor

        marker = f"{STACKS}.{adapter_name}."
        out = {k: v for k, v in state_dict.items() if k.startswith(marker) or f".{marker}" in k}
        for key, value in out.items():
            check_factor(key.split(marker, 1)[1], value.detach(), "the model")
        return out

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        marker = f"{STACKS}.{adapter_name}."
        if key.startswith(marker) or f".{marker}" in key:
            return key.split(marker, 1)[1]  # "<stack>.<factor>", as tensorpeft has always saved
        return super()._remove_adapter_name_from_key(key, adapter_name)

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model, config, adapter_name, state_dict):
        """Check the weights PEFT is about to load (names, shapes, dtypes, values) and map their keys.

        A bad state dict raises ValueError before ``load_state_dict`` copies anything. If the adapter was
        injected just for this load from a config PEFT parsed itself (``PeftModel.from_pretrained(base,
        dir, config=PeftConfig.from_pretrained(dir))``, the one path where the directory could not be
        checked before injection), it is removed again, so the base model is as it was.
        """
        from ._serialization import check_state_dict, is_factor_key

        tuner = model if isinstance(model, TensorPeftModel) else getattr(model, "base_model", None)
        if not isinstance(tuner, TensorPeftModel):
            raise TypeError(f"expected a model holding a TensorPeftModel, got {type(model).__name__}.")
        ours = {k: v for k, v in state_dict.items() if is_factor_key(k)}
        prefix = "" if model is tuner else "base_model."
        rest = {k: v for k, v in state_dict.items() if k not in ours}
        try:
            check_state_dict(ours, tuner.tensorpeft_stacks[adapter_name], "the state dict being loaded")
            rest = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, rest)
            _check_shapes(rest, model)
        except (TypeError, ValueError):
            if adapter_name in tuner._pending:
                tuner._roll_back(adapter_name)
            raise
        tuner._pending.discard(adapter_name)
        return {**{f"{prefix}{STACKS}.{adapter_name}.{k}": v for k, v in ours.items()}, **rest}

    def _roll_back(self, adapter_name: str) -> None:
        """Remove an adapter whose weights failed to load; with no adapter left, give the plain model back."""
        self._pending.discard(adapter_name)
        self.delete_adapter(adapter_name)
        if not self.peft_config:
            model = BaseTuner._unload_and_optionally_merge(self, merge=False)
            for name, p in model.named_parameters():
                p.requires_grad_(self._base_requires_grad.get(name, p.requires_grad))
            self._unloaded = True


def _check_shapes(tensors: dict, model) -> None:
    """Tensors PEFT loads beside the factors (``modules_to_save``) must fit the parameters they replace."""
    params = model.state_dict(keep_vars=True)
    for key, value in tensors.items():
        if key in params and tuple(params[key].shape) != tuple(value.shape):
            raise ValueError(
                f"tensor {key!r} of the state dict being loaded has shape {tuple(value.shape)}; the model's is "
                f"{tuple(params[key].shape)}."
            )


def tuner_of(model, what: str = "model") -> TensorPeftModel:
    """The :class:`TensorPeftModel` of ``model``.

    ``model`` is a ``peft.PeftModel`` of a tensorpeft adapter, the tuner itself, or either inside
    DDP/FSDP-style wrappers (which expose it as ``.module``).

    Raises
    ------
    TypeError
        Naming ``what`` if there is none.
    """
    seen = model
    for _ in range(8):
        if isinstance(seen, TensorPeftModel):
            return seen
        inner = getattr(seen, "base_model", None) if isinstance(seen, nn.Module) else None
        if isinstance(inner, TensorPeftModel):
            return inner
        seen = getattr(seen, "module", None)
        if seen is None:
            break
    raise TypeError(
        f"`{what}` must be a peft.PeftModel of a tensorpeft adapter (what tp.get_peft_model returns), its "
        f"TensorPeftModel, or a DistributedDataParallel wrapping one; got {type(model).__name__}."
    )


def _check_arguments(model, config, adapter_name) -> None:
    """Type checks of the tuner's arguments, before anything is planned or touched."""
    if not isinstance(config, AdapterConfig):
        raise TypeError(
            f"`config` must be a tensorpeft AdapterConfig (e.g. Tucker2Config), got {type(config).__name__}."
        )
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    _check_adapter_name(adapter_name)


def _check_plain(model) -> None:
    """The first adapter goes onto a plain model: not a PeftModel, a tuner, or a model with tensorpeft layers."""
    from peft import PeftModel

    if isinstance(model, PeftModel | TensorPeftModel) or any(isinstance(m, AdapterLinear) for m in model.modules()):
        raise ValueError(
            "`model` already contains tensorpeft adapters; pass the plain base model, or add another adapter "
            "with model.add_adapter(name, config)."
        )


def _check_adapter_name(adapter_name) -> None:
    if not isinstance(adapter_name, str) or not _ADAPTER_NAME.fullmatch(adapter_name) or adapter_name == BASE:
        raise ValueError(
            f"`adapter_name` must be an identifier-like name (letters, digits, _ and -, no dots) other than "
            f"{BASE!r}, got {adapter_name!r}."
        )


def _check_new_adapter(tuner, config, adapter_name) -> None:
    _check_arguments(tuner.model, config, adapter_name)
    if adapter_name in tuner.tensorpeft_stacks:
        raise ValueError(f"adapter {adapter_name!r} already exists; pick another name or delete_adapter() it first.")
    if any(layer.merged_adapters for _, layer in tuner.adapter_layers()):
        raise ValueError("cannot add an adapter while adapters are merged; unmerge_adapter() first.")


def _plain_modules(model: nn.Module) -> dict[str, nn.Module]:
    """``{name: module}`` with every :class:`AdapterLinear` seen as its base layer (its own name)."""
    modules = dict(model.named_modules())
    for name, module in list(modules.items()):
        if isinstance(module, AdapterLinear):
            modules[name] = module.base_layer
    return modules


def get_peft_model(model: nn.Module, config: AdapterConfig, adapter_name: str = "default", **kwargs):
    """Inject the adapters described by ``config`` into ``model`` and freeze the base: ``peft.get_peft_model``.

    Parameters
    ----------
    model : nn.Module
        Modified in place (adapted layers replaced by :class:`AdapterLinear`).
    config : AdapterConfig
        ``LoRAConfig``, ``Tucker2Config``, ``CPConfig``, ``TensorTrainConfig``, ``OrthogonalConfig``
        or ``CustomConfig``; with ``task_type`` set, the result is PEFT's class for that task.
    adapter_name : str
        The adapter's name (``"default"``).
    **kwargs
        Passed to ``peft.get_peft_model`` (e.g. ``autocast_adapter_dtype``).

    Returns
    -------
    peft.PeftModel
        Exactly what ``peft.get_peft_model(model, config)`` returns (``PeftModelForCausalLM``,
        ``PeftModelForSequenceClassification``, ... for a ``task_type``); its ``base_model`` is a
        :class:`TensorPeftModel`. Outputs equal the base model's exactly until the adapters are trained.

    Raises
    ------
    TypeError, ValueError
        With ``model`` unchanged; see :class:`TensorPeftModel`.

    Examples
    --------
    >>> import torch, tensorpeft as tp
    >>> base = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16))
    >>> model = tp.get_peft_model(base, tp.Tucker2Config(rank=2, target_modules=["0", "2"]))
    >>> type(model).__name__, type(model.base_model).__name__
    ('PeftModel', 'TensorPeftModel')
    >>> model.get_nb_trainable_parameters()  # A, B shared by the two layers + two 2×2 cores
    (72, 616)
    """
    import peft

    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    _check_arguments(model, config, adapter_name)
    plan_stacks(model, config)  # every check before PEFT touches anything (PEFT warns on an adapted model)
    return peft.get_peft_model(model, config, adapter_name=adapter_name, **kwargs)
