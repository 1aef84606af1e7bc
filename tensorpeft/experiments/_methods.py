"""Method specs of a comparison (``family:budget``) and their resolution to adapter configs.

A spec names a family and where its size comes from:

- ``head``: frozen encoder, only the classification head trains (the encoder job's baseline);
- ``zero-shot``: the decoder LLM as it is, prompted the same way, nothing trained (the decoder job's baseline);
- ``lora:rN``: LoRA of rank N;
- ``tucker2:B``, ``cp:B``, ``tt:B``, ``lora2:B``: the largest rank whose adapter fits budget B, where
  B is ``rN`` (the parameter count of LoRA rank N on the same target modules), ``tiny`` (a quarter of
  LoRA r=1's count, below anything LoRA can do) or a plain integer.

A family may name its grouping after a slash, ``tucker2/input:r1``: the config's ``stack_by`` (``name``,
``shape``, ``module`` or ``input``: projections reading the same input share the input factor); without it
the config's default grouping is used.

Ranks are found with the model's real stacks (:func:`tensorpeft.nn.plan_stacks`, planned once), never over
budget, by one :func:`tensorpeft.decomp.rank_for_budget` over all of them (one scale, the counts summed).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import decomp  # torch-free: the command line's parser reads DEFAULT_METHODS from here

if TYPE_CHECKING:  # torch is imported only when a model is planned on
    from torch import nn

__all__ = [
    "BASELINES",
    "DEFAULT_LLM_METHODS",
    "DEFAULT_METHODS",
    "FAMILIES",
    "MethodSpec",
    "adapter_params",
    "at_format_max",
    "parse_methods",
    "resolve_budget",
    "resolve_formats",
    "resolve_method",
]

# CLI family word -> (adapter config class in tensorpeft.nn, label). The label is the format's own
# (``decomp.<Format>.label``, the format of the config's ``format_name``), never written here.
FAMILIES = {
    "lora": ("LoRAConfig", decomp.LoRA.label),
    "tucker2": ("Tucker2Config", decomp.Tucker2.label),
    "cp": ("CPConfig", decomp.CP.label),
    "tt": ("TensorTrainConfig", decomp.TensorTrain.label),
    "lora2": ("OrthogonalConfig", decomp.OrthogonalProjection.label),
}
BASELINES = {"head": "head only (frozen encoder)", "zero-shot": "zero-shot (no training)"}
"""The methods that train no adapter, and their row names."""
DEFAULT_METHODS = (
    "head",
    "lora:r8",
    "lora:r1",
    "tucker2:r1",
    "tucker2:tiny",
    "cp:r1",
    "cp:tiny",
    "tt:r1",
    "tt:tiny",
    "lora2:r8",
)
DEFAULT_LLM_METHODS = ("zero-shot", *DEFAULT_METHODS[1:])
"""The decoder job's methods (``tensorpeft compare --model smollm2``). LoRA² runs at LoRA r=8's budget only: its
smallest adapter on SmolLM2's q, k, v, o (rank 1: 115,560 parameters) is above LoRA r=1's count (115,200)."""


@dataclass(frozen=True)
class MethodSpec:
    """One parsed ``family:budget`` spec."""

    family: str
    budget: str | None = None
    stack_by: str | None = None

    @property
    def label(self) -> str:
        """The spec as written (``tucker2:r1``, ``tucker2/input:r1``)."""
        family = self.family if self.stack_by is None else f"{self.family}/{self.stack_by}"
        return family if self.budget is None else f"{family}:{self.budget}"

    @property
    def name(self) -> str:
        """The row name: the format's label (and its grouping), or the baseline's name."""
        if self.family in BASELINES:
            return BASELINES[self.family]
        name = FAMILIES[self.family][1]
        return name if self.stack_by is None else f"{name}, stack_by={self.stack_by}"


def _check_budget_word(word: str, spec: str) -> None:
    if word == "tiny" or (word.isdigit() and int(word) > 0):
        return
    if word.startswith("r") and word[1:].isdigit() and int(word[1:]) > 0:
        return
    raise ValueError(f"budget {word!r} in method {spec!r} must be rN (LoRA rank N's count), 'tiny' or an integer > 0.")


def parse_methods(specs, budgets=None) -> list[MethodSpec]:
    """Parse ``family:budget`` strings; ``budgets`` replaces the budgets of the tensor families.

    Raises
    ------
    ValueError
        For an unknown family, a malformed budget, or ``lora`` with anything but ``rN``.
    """
    parsed: list[MethodSpec] = []
    for spec in specs:
        family, _, budget = spec.strip().partition(":")
        family, _, stack_by = family.partition("/")
        if family in BASELINES:
            if budget or stack_by:
                raise ValueError(f"method {family!r} takes no budget or grouping, got {spec!r}.")
            parsed.append(MethodSpec(family))
            continue
        if family not in FAMILIES:
            raise ValueError(
                f"unknown method {family!r} in {spec!r}; choose from {', '.join(BASELINES)}, {', '.join(FAMILIES)}."
            )
        if "/" in spec.partition(":")[0] and not stack_by.isidentifier():  # the config checks the word itself
            raise ValueError(f"grouping {stack_by!r} in method {spec!r} must be a word such as 'input'.")
        words = [budget] if budget else ["r1"]
        if budgets is not None and family != "lora":
            words = list(budgets)
        for word in words:
            _check_budget_word(word, spec)
            if family == "lora" and not word.startswith("r"):
                raise ValueError(f"method 'lora' takes a rank rN, got {spec!r}.")
            parsed.append(MethodSpec(family, word, stack_by or None))
    labels = [m.label for m in parsed]
    return [m for k, m in enumerate(parsed) if m.label not in labels[:k]]


def adapter_params(model: nn.Module, config) -> int:
    """Adapter parameters ``config`` would add to ``model`` (shared factors counted once)."""
    from ..nn import plan_stacks

    return sum(fmt.num_params for _, fmt in plan_stacks(model, config))


def resolve_budget(word: str, model: nn.Module, target_modules) -> int:
    """Turn a budget word (``rN``, ``tiny``, integer) into a parameter count on ``model``."""
    from ..nn import LoRAConfig

    if word.isdigit():
        return int(word)
    if word == "tiny":
        return adapter_params(model, LoRAConfig(rank=1, target_modules=target_modules)) // 4
    rank = int(word[1:])
    _check_lora_rank(rank, model, target_modules, f"budget {word!r}")
    return adapter_params(model, LoRAConfig(rank=rank, target_modules=target_modules))


def _check_lora_rank(rank: int, model: nn.Module, target_modules, what: str) -> int:
    """The largest LoRA rank on the target modules; a ValueError naming ``what`` if ``rank`` is above it."""
    from ..nn import LoRAConfig

    largest, _, _ = _largest(model, LoRAConfig(rank=1, target_modules=target_modules), _UNBOUNDED)
    if rank > largest.rank:
        raise ValueError(
            f"{what} asks for LoRA rank {rank}, but the largest LoRA rank on these modules is {largest.rank}."
        )
    return largest.rank


# A budget above any adapter: the search then stops at the format's own bound.
_UNBOUNDED = 2**63 - 1


def _stacks_of(model: nn.Module, config) -> tuple[type, list[dict]]:
    """The format class of ``config`` and its stacks on ``model`` as constructor arguments without ``rank``.

    The model is planned once (:func:`tensorpeft.nn.plan_stacks`, which raises its ValueError when
    ``config`` does not fit a stack); every count after this uses the formats alone.
    """
    from ..nn import plan_stacks

    plans = plan_stacks(model, config)
    stacks = []
    for plan, _ in plans:
        kwargs = config.format_kwargs(plan.out_features, plan.in_features, plan.heads)
        kwargs.pop("rank", None)
        shape = {"stack": plan.stack, "out_features": plan.out_features, "in_features": plan.in_features}
        stacks.append(shape | kwargs)
    return type(plans[0][1]), stacks


def _largest(model: nn.Module, config, budget: int):
    """``config`` at the largest shared scalar rank whose adapter fits ``budget``: ``(config, formats, at_max)``.

    One :func:`tensorpeft.decomp.rank_for_budget` over the model's stacks (planned once at ``config``'s
    rank). At the formats' maximum (one more rank adds nothing or is refused by a stack) the smallest rank
    reaching it is returned. Returns None when rank 1 is over budget.
    """
    from ..decomp.validate import MAX_SIZE

    cls, stacks = _stacks_of(model, config)
    try:
        plan = decomp.rank_for_budget(cls, budget, stacks=stacks)
    except decomp.BudgetError:
        return None
    if plan.scale > MAX_SIZE:  # a config's rank stops at MAX_SIZE (2**31), an unbounded format's (CP) does not
        top = sum(cls.from_scale(MAX_SIZE, **kwargs).num_params for kwargs in stacks)
        plan = dataclasses.replace(decomp.rank_for_budget(cls, top, stacks=stacks), at_max=True)
    return dataclasses.replace(config, rank=plan.scale), plan.formats, plan.at_max


def at_format_max(model: nn.Module, config) -> bool:
    """Whether ``config``'s adapter on ``model`` is its format's largest (one more rank adds nothing or is refused)."""
    from ..decomp.validate import MAX_SIZE

    if config.rank >= MAX_SIZE:  # a config takes no larger rank
        return True
    cls, stacks = _stacks_of(model, config)
    try:
        bigger = sum(cls.from_scale(config.rank + 1, **kwargs).num_params for kwargs in stacks)
    except ValueError:
        return True
    return bigger == sum(cls.from_scale(config.rank, **kwargs).num_params for kwargs in stacks)


def resolve_method(spec: MethodSpec, model: nn.Module, target_modules, **config_kwargs):
    """The adapter config of ``spec`` on ``model``, its parameter count and budget.

    Returns ``(config, adapter_params, budget)``; ``config`` is None for ``head``.

    Raises
    ------
    ValueError
        If the budget is below the family's smallest adapter on this model.
    """
    config, formats, budget, _ = resolve_formats(spec, model, target_modules, **config_kwargs)
    return config, sum(f.num_params for f in formats), budget


def resolve_formats(spec: MethodSpec, model: nn.Module, target_modules, **config_kwargs):
    """:func:`resolve_method` with the formats of the stacks: ``(config, formats, budget, at_max)``.

    ``formats`` holds one :mod:`tensorpeft.decomp` format per stack (empty for ``head``); ``at_max``
    says whether the config is its format's largest on these modules (one more rank adds nothing or is
    refused).

    Raises
    ------
    ValueError
        If the budget is below the family's smallest adapter on this model.
    """
    from .. import nn as tpnn
    from ..nn import plan_stacks

    if spec.family in BASELINES:
        return None, (), 0, False
    cls = getattr(tpnn, FAMILIES[spec.family][0])
    if spec.stack_by is not None:
        config_kwargs = {**config_kwargs, "stack_by": spec.stack_by}
    if spec.family == "lora":
        rank = int(spec.budget[1:])
        largest = _check_lora_rank(rank, model, target_modules, f"method {spec.label!r}")
        cfg = cls(rank=rank, alpha=2.0 * rank, target_modules=target_modules, **config_kwargs)
        return cfg, tuple(f for _, f in plan_stacks(model, cfg)), None, rank == largest
    budget = resolve_budget(spec.budget, model, target_modules)
    base = cls(rank=1, target_modules=target_modules, **config_kwargs)
    found = _largest(model, base, budget)
    if found is None:
        smallest = adapter_params(model, base)
        raise ValueError(
            f"budget {spec.budget!r} = {budget} parameters is below the smallest {FAMILIES[spec.family][1]} "
            f"adapter on these modules ({smallest} parameters at rank 1)."
        )
    cfg, formats, at_max = found
    return cfg, formats, budget, at_max
