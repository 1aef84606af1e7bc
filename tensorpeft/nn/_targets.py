"""Which layers of a model get an adapter: matching ``target_modules`` / ``exclude_modules``.

Matching follows PEFT: a list entry matches a module whose name equals it or ends with ``"." + entry``;
a string is a regex that must match the whole name; ``"all-linear"`` takes every linear layer except
the output embedding. Unlike PEFT, every list entry must match at least one layer (a typo is an error,
not a silently smaller adapter), and a matched module that is not a linear layer is an error.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ._config import ALL_LINEAR

__all__ = ["conv1d_class", "dense_weight", "find_targets", "is_adaptable", "linear_shape", "parent_module"]


def conv1d_class():
    """The class ``transformers.pytorch_utils.Conv1D`` (GPT-2's linear, weight ``(in, out)``), or None."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is optional
        return None
    return Conv1D


def is_adaptable(module: nn.Module) -> bool:
    """True for ``nn.Linear`` and transformers' ``Conv1D``."""
    conv1d = conv1d_class()
    return isinstance(module, nn.Linear) or (conv1d is not None and isinstance(module, conv1d))


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """``(out_features, in_features)`` of an adaptable layer, whatever its storage layout."""
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    in_features, out_features = module.weight.shape  # Conv1D stores the weight transposed
    return int(out_features), int(in_features)


def dense_weight(module: nn.Module) -> torch.Tensor:
    """The detached weight of an adaptable layer as ``(out_features, in_features)`` (a view, no copy)."""
    w = module.weight.detach()
    return w if isinstance(module, nn.Linear) else w.T  # Conv1D stores it (in, out)


def parent_module(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """``(parent, attribute)`` of the submodule ``name`` of ``model``, to replace it with ``setattr``."""
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def _matches(selector, name: str) -> bool:
    if isinstance(selector, str):
        return re.fullmatch(selector, name) is not None
    return any(name == s or name.endswith("." + s) for s in selector)


def _output_embedding(model: nn.Module):
    getter = getattr(model, "get_output_embeddings", None)
    if callable(getter):
        try:
            return getter()
        except (AttributeError, NotImplementedError):
            return None
    return None


def find_targets(model: nn.Module, config) -> list[tuple[str, nn.Module]]:
    """The ``(name, layer)`` pairs of ``model`` that ``config`` adapts, in module order.

    Raises
    ------
    ValueError
        If a ``target_modules`` entry matches nothing (the message lists the linear layers that exist),
        matches a module that is not a linear layer, or nothing is left after ``exclude_modules``.
    """
    from ._layer import AdapterLinear

    if any(isinstance(m, AdapterLinear) for m in model.modules()):
        raise ValueError("`model` already contains tensorpeft adapters; pass the plain base model.")
    named = [(n, m) for n, m in model.named_modules() if n]
    linear_names = [n for n, m in named if is_adaptable(m)]
    selector = config.target_modules
    if selector == ALL_LINEAR:
        head = _output_embedding(model)
        chosen = [(n, m) for n, m in named if is_adaptable(m) and m is not head]
    else:
        chosen = [(n, m) for n, m in named if _matches(selector, n)]
        wrong = [(n, type(m).__name__) for n, m in chosen if not is_adaptable(m)]
        if wrong:
            raise ValueError(
                f"`target_modules`={_show(selector)} matches {wrong[0][0]!r} of type {wrong[0][1]}; only "
                f"nn.Linear and transformers' Conv1D layers can be adapted (linear layers: {_sample(linear_names)})."
            )
        entries = [selector] if isinstance(selector, str) else list(selector)
        for entry in entries:
            probe = entry if isinstance(selector, str) else (entry,)
            if not any(_matches(probe, n) for n, _ in chosen):
                raise ValueError(
                    f"`target_modules` entry {entry!r} matches no module of {type(model).__name__}; "
                    f"expected a suffix or full-match regex of a linear layer name such as {_sample(linear_names)}."
                )
    if config.exclude_modules is not None:
        chosen = [(n, m) for n, m in chosen if not _matches(config.exclude_modules, n)]
    if not chosen:
        raise ValueError(
            f"`target_modules`={_show(selector)} with `exclude_modules`={_show(config.exclude_modules)} "
            f"leaves no layer to adapt in {type(model).__name__}."
        )
    return chosen


def _show(selector) -> str:
    return repr(list(selector) if isinstance(selector, tuple) else selector)


def _sample(names: list[str], k: int = 6) -> str:
    if not names:
        return "(none)"
    suffixes = list(dict.fromkeys(n.rsplit(".", 1)[-1] for n in names))
    shown = ", ".join(repr(s) for s in suffixes[:k])
    return f"[{shown}{', ...' if len(suffixes) > k else ''}] (e.g. {names[0]!r})"
