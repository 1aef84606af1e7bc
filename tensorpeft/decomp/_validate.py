"""Argument checks shared by every format: one place for the wording of errors.

Every message names the argument in backticks, what was expected and what came.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from math import prod

__all__ = [
    "check_at_most",
    "check_modes",
    "check_positive_int",
    "check_shape_tuple",
    "normalize_index",
]


def check_positive_int(value, name: str) -> int:
    """Return ``value`` as a Python int if it is an integer >= 1; raise otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be a positive integer, got {value!r} ({type(value).__name__}).")
    if value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    return int(value)


def check_fraction(value, name: str) -> float:
    """Return ``value`` as a float if it is a real number in ``[0, 1)``; raise otherwise (NaN too)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a real number in [0, 1), got {value!r} ({type(value).__name__}).")
    value = float(value)
    if not (0.0 <= value < 1.0):  # also rejects NaN
        raise ValueError(f"`{name}` must be in [0, 1), got {value!r}.")
    return value


def check_shape_tuple(value, name: str) -> tuple[int, ...]:
    """Normalize an int or an iterable of ints to a tuple of positive ints."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, Iterable) or isinstance(value, str | bytes):
        raise TypeError(f"`{name}` must be a tuple of positive integers, got {value!r}.")
    items = tuple(value)
    return tuple(check_positive_int(v, f"{name}[{i}]") for i, v in enumerate(items))


def check_at_most(value: int, bound: int, name: str, what: str) -> None:
    """Raise ValueError if ``value`` exceeds ``bound`` (``what`` names the bound)."""
    if value > bound:
        raise ValueError(f"`{name}`={value} exceeds {what}={bound}; it must be <= {bound}.")


def check_modes(modes, features: int, name: str, features_name: str) -> tuple[int, ...]:
    """Validate a factorization of ``features`` into modes (product must match exactly)."""
    modes = check_shape_tuple(modes, name)
    if not modes:
        raise ValueError(f"`{name}` must have at least one mode, got ().")
    if prod(modes) != features:
        raise ValueError(
            f"`{name}`={modes} has product {prod(modes)}, but `{features_name}`={features}; "
            "the product of the modes must equal the feature size."
        )
    return modes


def normalize_index(index, stack: tuple[int, ...]) -> tuple[int, ...]:
    """Check a stack index (a tuple over the stack modes, or a plain int for one mode)."""
    if isinstance(index, numbers.Integral) and not isinstance(index, bool):
        index = (index,)
    if not isinstance(index, tuple):
        raise TypeError(f"`index` must be a tuple of ints over the stack modes {stack}, got {index!r}.")
    if len(index) != len(stack):
        raise ValueError(f"`index` must have {len(stack)} entries for stack {stack}, got {index!r}.")
    out = []
    for k, (i, n) in enumerate(zip(index, stack, strict=True)):
        if isinstance(i, bool) or not isinstance(i, numbers.Integral):
            raise TypeError(f"`index[{k}]` must be an int, got {i!r}.")
        if not -n <= i < n:
            raise ValueError(f"`index[{k}]`={i} is out of range for stack mode of size {n}.")
        out.append(int(i) % n)
    return tuple(out)
