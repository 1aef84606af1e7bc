"""Which modules a selector names: the ``target_modules`` / ``exclude_modules`` arguments, normalized.

Shared by the adapter configs and :func:`compress_low_rank`, which take the same two arguments; the
matching against a model is :mod:`._targets`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["ALL_LINEAR", "ModuleSelector", "module_selector"]

#: The ``target_modules`` value that takes every linear layer except the output embedding.
ALL_LINEAR = "all-linear"


def module_selector(value, name: str, allow_all_linear: bool):
    """Normalize a target/exclude selector: a tuple of suffixes or a full-match regex string.

    ``name`` is the argument named in errors; ``allow_all_linear`` lets ``"all-linear"`` through (a target
    selector may take every linear layer, an exclusion may not).
    """
    if isinstance(value, str):
        if allow_all_linear and value == ALL_LINEAR:
            return value
        if not value:
            raise ValueError(f"`{name}` must be a non-empty regex string or a list of module names, got ''.")
        try:
            re.compile(value)
        except (re.error, RecursionError, OverflowError) as exc:
            raise ValueError(f"`{name}`={value!r} is not a valid regular expression: {exc}.") from None
        return value
    if isinstance(value, bytes) or not isinstance(value, Sequence | set | frozenset):
        raise TypeError(
            f"`{name}` must be a list of module-name suffixes or a regex string, got {type(value).__name__}."
        )
    items = list(value)
    if not items:
        raise ValueError(f"`{name}` must name at least one module, got an empty list.")
    for k, item in enumerate(items):
        if not isinstance(item, str) or not item:
            raise TypeError(f"`{name}[{k}]` must be a non-empty string, got {item!r}.")
    return tuple(sorted(items) if isinstance(value, set | frozenset) else items)


@dataclass(frozen=True)
class ModuleSelector:
    """A checked pair ``(target_modules, exclude_modules)``, what :func:`find_targets` reads.

    Build it with :meth:`of`, which normalizes and checks both (a tuple of suffixes, a regex string or
    :data:`ALL_LINEAR` for the targets; ``None`` for no exclusion).
    """

    target_modules: str | tuple[str, ...]
    exclude_modules: str | tuple[str, ...] | None = None

    @classmethod
    def of(cls, target_modules, exclude_modules=None) -> ModuleSelector:
        """The selector of these arguments, each checked by :func:`module_selector` (errors name them)."""
        targets = module_selector(target_modules, "target_modules", allow_all_linear=True)
        if exclude_modules is not None:
            exclude_modules = module_selector(exclude_modules, "exclude_modules", allow_all_linear=False)
        return cls(targets, exclude_modules)
