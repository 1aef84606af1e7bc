"""What tensorpeft knows about a plain linear layer: which ones it adapts, their shape and weight.

A leaf: it imports torch (and transformers, lazily) only, so that matching, planning, the wrapper and the
compression all use it without importing one another.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["conv1d_class", "dense_weight", "is_adaptable", "linear_shape", "parent_module"]


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
