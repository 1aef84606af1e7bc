"""Which layers of a model get an adapter: matching ``target_modules`` / ``exclude_modules``.

Matching follows PEFT: a list entry matches a module whose name equals it or ends with ``"." + entry``;
a string is a regex that must match the whole name; ``"all-linear"`` takes every linear layer except
the output embedding. Unlike PEFT, every list entry must match at least one layer (a typo is an error,
not a silently smaller adapter), and a matched module that is not a linear layer is an error.
"""

from __future__ import annotations

import re

from torch import nn

from ._linear import is_adaptable
from ._selector import ALL_LINEAR

__all__ = ["find_targets"]


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


def find_targets(model: nn.Module, config, named=None) -> list[tuple[str, nn.Module]]:
    """The ``(name, layer)`` pairs of ``model`` that ``config`` adapts, in module order.

    ``config`` is anything with ``target_modules`` and ``exclude_modules`` (an :class:`AdapterConfig`, a
    :class:`ModuleSelector`), already normalized. Whether ``model`` is already adapted is checked by the
    callers (:func:`check_not_adapted`), which know the wrapper class; this module knows only plain layers.
    ``named`` replaces ``model.named_modules()`` (the planner passes a view where adapted layers appear
    as their base layers, to add a second adapter). Modules named in ``config.modules_to_save`` (and
    everything inside them) are never targets, as in PEFT.

    Raises
    ------
    ValueError
        If a ``target_modules`` entry matches nothing (the message lists the linear layers that exist),
        matches a module that is not a linear layer, or nothing is left after ``exclude_modules``.
    """
    named = [(n, m) for n, m in (model.named_modules() if named is None else named) if n]
    saved = getattr(config, "modules_to_save", None) or ()
    if saved:
        named = [(n, m) for n, m in named if not any(s in n.split(".") or _matches((s,), n) for s in saved)]
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
