"""Method specs of a comparison (``family:budget``) and their resolution to adapter configs.

A spec names a family and where its size comes from:

- ``head``: frozen encoder, only the classification head trains;
- ``lora:rN``: LoRA of rank N;
- ``tucker2:B``, ``cp:B``, ``tt:B``, ``lora2:B``: the largest rank whose adapter fits budget B, where
  B is ``rN`` (the parameter count of LoRA rank N on the same target modules), ``tiny`` (a quarter of
  LoRA r=1's count, below anything LoRA can do) or a plain integer.

Ranks are found with the model's real stacks (:func:`tensorpeft.nn.plan_stacks`), never over budget.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported only when a model is planned on
    from torch import nn

__all__ = [
    "DEFAULT_METHODS",
    "FAMILIES",
    "MethodSpec",
    "adapter_params",
    "at_format_max",
    "parse_methods",
    "resolve_budget",
    "resolve_method",
]

FAMILIES = {
    "lora": ("LoRAConfig", "LoRA"),
    "tucker2": ("Tucker2Config", "Tucker-2 (LoTR)"),
    "cp": ("CPConfig", "CP (LoRTA)"),
    "tt": ("TensorTrainConfig", "TT (TT-LoRA)"),
    "lora2": ("OrthogonalConfig", "LoRA² (orthogonal)"),
}
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


@dataclass(frozen=True)
class MethodSpec:
    """One parsed ``family:budget`` spec."""

    family: str
    budget: str | None = None

    @property
    def label(self) -> str:
        """The spec as written (``tucker2:r1``)."""
        return self.family if self.budget is None else f"{self.family}:{self.budget}"


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
        if family == "head":
            if budget:
                raise ValueError(f"method 'head' takes no budget, got {spec!r}.")
            parsed.append(MethodSpec("head"))
            continue
        if family not in FAMILIES:
            raise ValueError(f"unknown method {family!r} in {spec!r}; choose from head, {', '.join(FAMILIES)}.")
        words = [budget] if budget else ["r1"]
        if budgets is not None and family != "lora":
            words = list(budgets)
        for word in words:
            _check_budget_word(word, spec)
            if family == "lora" and not word.startswith("r"):
                raise ValueError(f"method 'lora' takes a rank rN, got {spec!r}.")
            parsed.append(MethodSpec(family, word))
    labels = [m.label for m in parsed]
    return [m for k, m in enumerate(parsed) if m.label not in labels[:k]]


def adapter_params(model: nn.Module, config) -> int:
    """Adapter parameters ``config`` would add to ``model`` (shared factors counted once)."""
    from ..nn._grouping import plan_stacks

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


def _check_lora_rank(rank: int, model: nn.Module, target_modules, what: str) -> None:
    """Raise a ValueError naming ``what`` if LoRA of ``rank`` does not fit the target modules."""
    from ..nn import LoRAConfig

    found = _largest_rank(model, lambda r: LoRAConfig(rank=r, target_modules=target_modules), math.inf)
    if found is None:  # even rank 1 is refused: let LoRAConfig say why
        adapter_params(model, LoRAConfig(rank=1, target_modules=target_modules))
    elif rank > found[0].rank:
        raise ValueError(
            f"{what} asks for LoRA rank {rank}, but the largest LoRA rank on these modules is {found[0].rank}."
        )


# More doublings than any rank a format accepts: the search ends even if a format never stops growing.
_MAX_DOUBLINGS = 128


def _count(model, make):
    """Memoized ``rank -> adapter parameters``; None past a layer dimension (or any rank the format refuses)."""
    cache: dict[int, int | None] = {}

    def params(rank: int) -> int | None:
        if rank not in cache:
            try:
                cache[rank] = adapter_params(model, make(rank))
            except ValueError:
                cache[rank] = None
        return cache[rank]

    return params


def _last_true(pred, lo: int, hi: int) -> int:
    """The largest ``r`` in ``[lo, hi)`` with ``pred(r)``, given ``pred(lo)`` and a monotone ``pred``."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if pred(mid) else (lo, mid)
    return lo


def _largest_rank(model, make, budget: float) -> tuple[object, int, bool] | None:
    """The config with the largest scalar rank whose adapter fits ``budget``, and whether it is the format's maximum.

    An exponential then binary search over the rank, bounded: it stops at a rank the format refuses
    (past a layer dimension), at one over budget, or where the count stops growing (a tensor train caps
    its bond ranks, so its count reaches a maximum). At the maximum, the smallest rank reaching it is
    returned. Returns ``(config, params, at_max)``, or None if rank 1 is over budget.
    """
    params = _count(model, make)
    first = params(1)
    if first is None or first > budget:
        return None
    lo, hi = 1, 2
    for _ in range(_MAX_DOUBLINGS):
        p = params(hi)
        if p is None or p > budget or p == params(lo):
            break
        lo, hi = hi, hi * 2
    if params(hi) is None or params(hi) > budget:

        def fits(rank):
            p = params(rank)
            return p is not None and p <= budget

        lo = _last_true(fits, lo, hi)
    top = params(lo)
    nxt = params(lo + 1)
    at_max = nxt is None or nxt == top
    if at_max and params(1) < top:
        # the smallest rank with the same count: one past the last rank whose count is still below it
        lo = _last_true(lambda r: params(r) < top, 1, lo) + 1
    elif at_max:
        lo = 1
    return make(lo), params(lo), at_max


def at_format_max(model: nn.Module, config) -> bool:
    """Whether ``config``'s adapter on ``model`` is its format's largest (one more rank adds nothing or is refused)."""
    params = _count(model, lambda r: dataclasses.replace(config, rank=r))
    nxt = params(config.rank + 1)
    return nxt is None or nxt == params(config.rank)


def resolve_method(spec: MethodSpec, model: nn.Module, target_modules, **config_kwargs):
    """The adapter config of ``spec`` on ``model``, its parameter count and budget.

    Returns ``(config, adapter_params, budget)``; ``config`` is None for ``head``.

    Raises
    ------
    ValueError
        If the budget is below the family's smallest adapter on this model.
    """
    from .. import nn as tpnn

    if spec.family == "head":
        return None, 0, 0
    cls = getattr(tpnn, FAMILIES[spec.family][0])
    if spec.family == "lora":
        rank = int(spec.budget[1:])
        _check_lora_rank(rank, model, target_modules, f"method {spec.label!r}")
        cfg = cls(rank=rank, alpha=2.0 * rank, target_modules=target_modules, **config_kwargs)
        return cfg, adapter_params(model, cfg), None
    budget = resolve_budget(spec.budget, model, target_modules)
    base = cls(rank=1, target_modules=target_modules, **config_kwargs)
    found = _largest_rank(model, lambda r: dataclasses.replace(base, rank=r), budget)
    if found is None:
        smallest = adapter_params(model, base)
        raise ValueError(
            f"budget {spec.budget!r} = {budget} parameters is below the smallest {FAMILIES[spec.family][1]} "
            f"adapter on these modules ({smallest} parameters at rank 1)."
        )
    cfg, params, _ = found
    return cfg, params, budget
