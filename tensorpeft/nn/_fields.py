"""Checks of config fields: each returns the normalized value or raises naming the field.

Shared by the configs of :mod:`._config` (ours and PEFT's fields); no config class lives here.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

from ..decomp.validate import MAX_SIZE, check_at_most, check_positive_int

__all__ = ["MAX_ALPHA", "MAX_SIZE"]

# Bounds of the numeric fields, see the AdapterConfig docstring (sizes: the core's MAX_SIZE, 2**31).
MAX_ALPHA = 1e6


def _size(value, name: str) -> int:
    """A positive int no larger than :data:`MAX_SIZE` (a rank, a mode, a head count)."""
    value = check_positive_int(value, name)
    check_at_most(value, MAX_SIZE, name, "the largest supported size")
    return value


def _choice(value, choices: tuple[str, ...], name: str) -> str:
    """One of ``choices`` (a string; anything else is a TypeError, never an ambiguous comparison)."""
    if not isinstance(value, str):
        raise TypeError(f"`{name}` must be one of {choices}, got {value!r} ({type(value).__name__}).")
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}.")
    return value


def _int_tuple(value, name: str) -> tuple[int, ...]:
    """A non-empty tuple of sizes (see :func:`_size`); an int rank or a tuple: ``check_int_or_tuple``."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise TypeError(f"`{name}` must be a sequence of positive integers, got {value!r}.")
    if len(value) == 0:
        raise ValueError(f"`{name}` must not be empty.")
    return tuple(_size(v, f"{name}[{k}]") for k, v in enumerate(value))


def _json_data(value, name: str, depth: int = 0):
    """``value`` if it is plain JSON data (str, finite number, bool, None, lists, str-keyed dicts)."""
    if depth > 32:
        raise ValueError(f"`{name}` is nested too deeply.")
    if value is None or isinstance(value, str | bool):
        return value
    if type(value) in (int, float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"`{name}` must hold finite numbers, got {value!r}.")
        return value
    if isinstance(value, list | tuple):
        return [_json_data(v, f"{name}[{k}]", depth + 1) for k, v in enumerate(value)]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _json_data(v, f"{name}[{k!r}]", depth + 1) for k, v in value.items()}
    raise TypeError(
        f"`{name}` must be JSON data (str, int, float, bool, None, list, dict), got {type(value).__name__}."
    )


def _check_peft_fields(config) -> None:
    """PEFT's fields of a config, checked as ours are: each names itself when wrong."""
    from peft.utils.peft_types import TaskType

    task = config.task_type
    if task is not None and (not isinstance(task, str) or task not in set(TaskType)):
        raise ValueError(f"`task_type` must be None or one of {sorted(t.value for t in TaskType)}, got {task!r}.")
    if task is not None:
        config.task_type = TaskType(task).value
    for name in ("peft_version", "base_model_name_or_path", "revision"):
        value = getattr(config, name)
        if value is not None and not isinstance(value, str):
            raise TypeError(f"`{name}` must be a str or None, got {value!r} ({type(value).__name__}).")
    if not isinstance(config.inference_mode, bool):
        raise TypeError(
            f"`inference_mode` must be a bool, got {config.inference_mode!r} ({type(config.inference_mode).__name__})."
        )
    for name in ("auto_mapping", "tensorpeft"):
        value = getattr(config, name)
        if value is not None and not isinstance(value, dict):
            raise TypeError(f"`{name}` must be a dict or None, got {type(value).__name__}.")
        setattr(config, name, _json_data(value, name))


def _names(value, name: str) -> list[str]:
    """A list of module names (PEFT's ``modules_to_save``)."""
    if isinstance(value, str) or not isinstance(value, Sequence | set):
        raise TypeError(f"`{name}` must be a list of module names, got {value!r} ({type(value).__name__}).")
    out = list(value)
    for k, item in enumerate(out):
        if not isinstance(item, str) or not item:
            raise TypeError(f"`{name}[{k}]` must be a non-empty module name, got {item!r}.")
    return out


def _alpha(value) -> float:
    """A finite real with ``|alpha| <= MAX_ALPHA``, as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TypeError(f"`alpha` must be a finite real number, got {value!r} ({type(value).__name__}).")
    value = float(value)
    if abs(value) > MAX_ALPHA:
        raise ValueError(
            f"`alpha` must be in [-{MAX_ALPHA:g}, {MAX_ALPHA:g}], got {value!r}: beyond, merge_adapter() followed "
            "by unmerge_adapter() no longer gives the pretrained weights back."
        )
    return value


def _refuse_constant(name: str):
    raise ValueError(f"the constant {name} is not allowed; numbers must be finite")


_MAX_RANK_DEPTH = 16


def _json_rank(value, name: str, depth: int = 0):
    """Check a CustomConfig ``rank``: JSON data whose numbers are all positive, finite sizes.

    Bools, zero or negative numbers, non-finite floats and ints above :data:`MAX_SIZE` are refused
    anywhere in it; tuples become lists and dict keys must be strings, so the JSON round trip is exact.
    """
    if depth > _MAX_RANK_DEPTH:
        raise ValueError(f"`{name}` is nested more than {_MAX_RANK_DEPTH} levels deep.")
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        raise TypeError(f"`{name}` must be a positive number, got the bool {value!r}.")
    if isinstance(value, numbers.Integral):
        return _size(value, name)
    if isinstance(value, numbers.Real):
        if not math.isfinite(value) or not 0 < value <= MAX_SIZE:
            raise ValueError(f"`{name}` must be a positive finite number <= {MAX_SIZE}, got {value!r}.")
        return float(value)
    if isinstance(value, list | tuple):
        return [_json_rank(v, f"{name}[{k}]", depth + 1) for k, v in enumerate(value)]
    if isinstance(value, dict):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise TypeError(f"`{name}` must have string keys (it is stored as JSON), got keys {bad!r}.")
        return {k: _json_rank(v, f"{name}[{k!r}]", depth + 1) for k, v in value.items()}
    raise TypeError(
        f"`{name}` must be JSON data (numbers, strings, lists, dicts) for CustomConfig, "
        f"got {value!r} ({type(value).__name__})."
    )
