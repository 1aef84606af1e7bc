"""Argument checks shared by every part of tensorpeft: one place for the wording of errors.

Every message names the argument in backticks, what was expected and what came. The formats of
:mod:`tensorpeft.decomp`, the PEFT layer :mod:`tensorpeft.nn`, :mod:`tensorpeft.testing` and the command
line all check their arguments with these functions, so that one kind of mistake reads the same wherever
it is made. This module needs only the standard library.

Examples
--------
>>> from tensorpeft.decomp.validate import check_fraction, check_positive_int
>>> check_positive_int(3, "rank")
3
>>> check_fraction(1.5, "dropout")
Traceback (most recent call last):
...
ValueError: `dropout` must be in [0, 1), got 1.5.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import islice
from math import prod

from ._backend import BACKENDS

__all__ = [
    "EINSUM_LETTERS",
    "MAX_FORMAT_LETTERS",
    "MAX_RANK",
    "MAX_SEED",
    "MAX_SIZE",
    "check_allocation",
    "check_at_most",
    "check_backend",
    "check_fraction",
    "check_index_letters",
    "check_int_at_least",
    "check_int_or_tuple",
    "check_modes",
    "check_n_iter_max",
    "check_positive_int",
    "check_seed",
    "check_shape_tuple",
    "check_size",
    "check_size_tuple",
    "check_tol",
    "normalize_index",
    "physical_memory_bytes",
    "prime_factors",
]


def check_positive_int(value, name: str) -> int:
    """Return ``value`` as a Python int if it is an integer >= 1; raise otherwise.

    Parameters
    ----------
    value : object
        The value to check.
    name : str
        The argument's name, shown in backticks in the error message.

    Returns
    -------
    int
        ``value`` as a Python int.

    Raises
    ------
    TypeError, ValueError
        If ``value`` has the wrong type or is out of range; the message names ``name``.

    Examples
    --------
    >>> check_positive_int(4, "rank")
    4
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be a positive integer, got {value!r} ({type(value).__name__}).")
    if value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    return int(value)


def check_int_at_least(value, name: str, minimum: int) -> int:
    """Return ``value`` as a Python int if it is an integer >= ``minimum`` (bools refused); raise otherwise.

    Parameters
    ----------
    value : object
        The value to check.
    name : str
        The argument's name, shown in backticks in the error message.
    minimum : int
        The smallest value allowed.

    Returns
    -------
    int
        ``value`` as a Python int.

    Raises
    ------
    TypeError, ValueError
        If ``value`` has the wrong type or is out of range; the message names ``name``.

    Examples
    --------
    >>> check_int_at_least(0, "warmup_steps", 0)
    0
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an integer >= {minimum}, got {value!r} ({type(value).__name__}).")
    if value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def check_int_or_tuple(
    value,
    name: str,
    *,
    check: Callable[[object, str], int] = check_positive_int,
    length: int | None = None,
    expected: str = "a tuple of positive integers",
) -> int | tuple[int, ...]:
    """Check a rank given as one int or as a sequence of ints (``rank=8`` or ``rank=(8, 4)``).

    The one parser of "int or tuple" ranks: the formats (:class:`~tensorpeft.decomp.Tucker2`,
    :class:`~tensorpeft.decomp.TensorTrain`) and their adapter configs call it, and then give the
    int its meaning (both sides, every bond) themselves.

    Parameters
    ----------
    value : object
        The value to check: an integer (not a bool), or a non-empty sequence of them (a list or tuple;
        not a str, bytes or array).
    name : str
        The argument's name, shown in backticks in the error message; entry ``k`` is ``name[k]``.
    check : callable, optional
        ``check(value, name) -> int``, applied to the int and to every entry (default
        :func:`check_positive_int`; e.g. :func:`check_size` for an upper bound).
    length : int, optional
        The number of entries a sequence must have.
    expected : str, optional
        What a sequence should be, for the TypeError's message.

    Returns
    -------
    int or tuple of int
        An int as ``check`` returns it, or a tuple of the checked entries.

    Raises
    ------
    TypeError
        If ``value`` is neither an integer nor a sequence, or an entry has the wrong type (named ``name[k]``).
    ValueError
        If a sequence is empty or does not have ``length`` entries, or ``check`` refuses a value.

    Examples
    --------
    >>> check_int_or_tuple(8, "rank")
    8
    >>> check_int_or_tuple([8, 4], "rank", length=2)
    (8, 4)
    >>> check_int_or_tuple((8, 0), "rank")
    Traceback (most recent call last):
    ...
    ValueError: `rank[1]` must be a positive integer, got 0.
    """
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return check(value, name)
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise TypeError(f"`{name}` must be an int or {expected}, got {value!r}.")
    if length is not None and len(value) != length:
        raise ValueError(f"`{name}` must have {length} entries, got {len(value)}: {tuple(value)!r}.")
    if len(value) == 0:
        raise ValueError(f"`{name}` must not be empty.")
    return tuple(check(v, f"{name}[{k}]") for k, v in enumerate(value))


def check_fraction(value, name: str) -> float:
    """Return ``value`` as a float if it is a real number in ``[0, 1)``; raise otherwise (NaN too).

    Parameters
    ----------
    value : object
        The value to check.
    name : str
        The argument's name, shown in backticks in the error message.

    Returns
    -------
    float
        ``value`` as a float.

    Raises
    ------
    TypeError, ValueError
        If ``value`` has the wrong type or is out of range; the message names ``name``.

    Examples
    --------
    >>> check_fraction(0.25, "dropout")
    0.25
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a real number in [0, 1), got {value!r} ({type(value).__name__}).")
    value = float(value)
    if not (0.0 <= value < 1.0):  # also rejects NaN
        raise ValueError(f"`{name}` must be in [0, 1), got {value!r}.")
    return value


def check_shape_tuple(value, name: str) -> tuple[int, ...]:
    """Normalize an int or an iterable of ints to a tuple of positive ints.

    Parameters
    ----------
    value : object
        The value to check.
    name : str
        The argument's name, shown in backticks in the error message.

    Returns
    -------
    tuple of int
        The entries as Python ints (one int becomes a 1-tuple).

    Raises
    ------
    TypeError, ValueError
        If ``value`` has the wrong type or is out of range; the message names ``name``.

    Examples
    --------
    >>> check_shape_tuple(3, "stack"), check_shape_tuple([2, 3], "stack")
    ((3,), (2, 3))
    """
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, Iterable) or isinstance(value, str | bytes):
        raise TypeError(f"`{name}` must be a tuple of positive integers, got {value!r}.")
    items = tuple(value)
    return tuple(check_positive_int(v, f"{name}[{i}]") for i, v in enumerate(items))


def check_at_most(value: int, bound: int, name: str, what: str) -> None:
    """Raise ValueError if ``value`` exceeds ``bound`` (``what`` names the bound).

    Parameters
    ----------
    value : int
        The value to check.
    bound : int
        The largest value allowed.
    name : str
        The argument's name, shown in backticks in the error message.
    what : str
        What the bound is, for the message (e.g. ``"out_features"``).

    Raises
    ------
    ValueError
        If ``value > bound``.

    Examples
    --------
    >>> check_at_most(8, 16, "rank", "out_features")
    >>> check_at_most(32, 16, "rank", "out_features")
    Traceback (most recent call last):
    ...
    ValueError: `rank`=32 exceeds out_features=16; it must be <= 16.
    """
    if value > bound:
        raise ValueError(f"`{name}`={value} exceeds {what}={bound}; it must be <= {bound}.")


def check_modes(modes, features: int, name: str, features_name: str) -> tuple[int, ...]:
    """Validate a factorization of ``features`` into modes (product must match exactly).

    Parameters
    ----------
    modes : int or iterable of int
        The modes.
    features : int
        The size they must multiply to.
    name : str
        The argument's name, shown in backticks in the error message.
    features_name : str
        The name of ``features``, for the message.

    Returns
    -------
    tuple of int
        The modes as Python ints.

    Raises
    ------
    TypeError, ValueError
        If a mode is not a size, there are none, or their product is not ``features``.

    Examples
    --------
    >>> check_modes([4, 4], 16, "in_modes", "in_features")
    (4, 4)
    """
    modes = check_size_tuple(modes, name)
    if not modes:
        raise ValueError(f"`{name}` must have at least one mode, got ().")
    if prod(modes) != features:
        raise ValueError(
            f"`{name}`={modes} has product {prod(modes)}, but `{features_name}`={features}; "
            "the product of the modes must equal the feature size."
        )
    return modes


def normalize_index(index, stack: tuple[int, ...]) -> tuple[int, ...]:
    """Check a stack index (a tuple over the stack modes, or a plain int for one mode).

    Parameters
    ----------
    index : int or tuple of int
        The index; negative entries count from the end.
    stack : tuple of int
        Sizes of the stack modes.

    Returns
    -------
    tuple of int
        The index with every entry in ``[0, size)``.

    Raises
    ------
    TypeError, ValueError
        If ``index`` is not a tuple of ints of the stack's length, or an entry is out of range.

    Examples
    --------
    >>> normalize_index((1, -1), (2, 3))
    (1, 2)
    """
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


def physical_memory_bytes() -> int | None:
    """Bytes of physical memory of this machine, or ``None`` where the OS does not say.

    Returns
    -------
    int or None
        ``SC_PAGE_SIZE · SC_PHYS_PAGES``, or None off POSIX.

    Examples
    --------
    >>> physical_memory_bytes() is None or physical_memory_bytes() > 0
    True
    """
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):  # pragma: no cover - non-POSIX
        return None


def check_allocation(n_scalars: int, itemsize: int, name: str, available: int | None = None) -> None:
    """Raise ValueError if ``n_scalars`` elements of ``itemsize`` bytes cannot fit in memory.

    Called before anything is allocated, so that a huge rank or size is a clear error naming the argument
    (``name``), not an allocator failure, an overflow or a machine that starts swapping. ``available``
    defaults to this machine's physical memory (pass a device's memory for an accelerator).

    Parameters
    ----------
    n_scalars : int
        Number of elements to allocate.
    itemsize : int
        Bytes per element.
    name : str
        The argument's name, shown in backticks in the error message.
    available : int, optional
        Bytes available; default: this machine's physical memory.

    Raises
    ------
    ValueError
        If the allocation needs more than ``available`` bytes.

    Examples
    --------
    >>> check_allocation(10, 4, "rank", available=100)
    >>> check_allocation(10**12, 4, "rank", available=2**30)
    Traceback (most recent call last):
    ...
    ValueError: `rank` asks for 1,000,000,000,000 scalars (3,725.3 GiB), more than the 1.0 GiB ...
    """
    limit = physical_memory_bytes() if available is None else available
    if limit is None:
        limit = 2**62
    needed = int(n_scalars) * int(itemsize)
    if needed > limit:
        raise ValueError(
            f"`{name}` asks for {n_scalars:,} scalars ({needed / 2**30:,.1f} GiB), more than the "
            f"{limit / 2**30:,.1f} GiB of memory available; choose a smaller value."
        )


#: Largest size of one index (a stack mode, a feature size, a rank, a mode of a tensor train): every
#: size of every format is at most this, so that sizes fit a 32-bit index and factorizations (trial
#: division) and parameter counts stay fast.
MAX_SIZE = 2**31

#: Largest rank (any index of a format other than a stack or feature index): an array dimension is a
#: signed 64-bit int. A rank this large cannot be allocated; ``random`` says so (``check_allocation``).
MAX_RANK = 2**63 - 1

#: Largest seed of ``random``/``init``: seeds are the non-negative integers of a signed 64-bit int.
MAX_SEED = 2**63 - 1

#: Index letters numpy's and torch's ``einsum`` support (``a-z``, ``A-Z``); a format may use one fewer,
#: because its factored ``apply`` adds a letter for the batch of ``x``.
EINSUM_LETTERS = 52
MAX_FORMAT_LETTERS = EINSUM_LETTERS - 1


def check_size(value, name: str, bound: int = MAX_SIZE) -> int:
    """Return ``value`` as a Python int if it is an integer in ``[1, bound]``; raise otherwise.

    Parameters
    ----------
    value : object
        The value to check.
    name : str
        The argument's name, shown in backticks in the error message.
    bound : int
        The largest value allowed (default :data:`MAX_SIZE`).

    Returns
    -------
    int
        ``value`` as a Python int.

    Raises
    ------
    TypeError, ValueError
        If ``value`` has the wrong type or is out of range; the message names ``name``.

    Examples
    --------
    >>> check_size(768, "in_features")
    768
    """
    value = check_positive_int(value, name)
    if value > bound:
        raise ValueError(f"`{name}` must be at most {bound:,}, got {value:,}.")
    return value


def check_size_tuple(value, name: str, max_len: int = MAX_FORMAT_LETTERS) -> tuple[int, ...]:
    """Normalize an int or an iterable of at most ``max_len`` ints to a tuple of sizes in ``[1, MAX_SIZE]``.

    Never consumes more than ``max_len + 1`` items of an iterator, so an endless one is an error, not a hang.

    Parameters
    ----------
    value : object
        The value to check.
    name : str
        The argument's name, shown in backticks in the error message.
    max_len : int
        The most entries allowed (default :data:`MAX_FORMAT_LETTERS`).

    Returns
    -------
    tuple of int
        The sizes as Python ints.

    Raises
    ------
    TypeError, ValueError
        If ``value`` has the wrong type or is out of range; the message names ``name``.

    Examples
    --------
    >>> check_size_tuple(iter([12, 8, 8]), "in_modes")
    (12, 8, 8)
    """
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, Iterable) or isinstance(value, str | bytes) or isinstance(value, Mapping):
        raise TypeError(f"`{name}` must be a tuple of positive integers, got {value!r}.")
    try:
        items = tuple(islice(value, max_len + 1))
    except TypeError as err:  # e.g. a 0-d numpy array, which claims to be iterable
        raise TypeError(f"`{name}` must be a tuple of positive integers, got {value!r}.") from err
    if len(items) > max_len:
        raise ValueError(f"`{name}` must have at most {max_len} entries, got more.")
    return tuple(check_size(v, f"{name}[{i}]") for i, v in enumerate(items))


def check_seed(seed, name: str = "seed") -> int:
    """Return ``seed`` as a Python int if it is an integer in ``[0, MAX_SEED]`` (bools refused); raise otherwise.

    Parameters
    ----------
    seed : object
        The value to check.
    name : str
        The argument's name, shown in backticks in the error message.

    Returns
    -------
    int
        ``seed`` as a Python int.

    Raises
    ------
    TypeError, ValueError
        If ``seed`` is not an int (bools refused) or out of range.

    Examples
    --------
    >>> check_seed(0)
    0
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"`{name}` must be a non-negative integer, got {seed!r} ({type(seed).__name__}).")
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"`{name}` must be an integer in [0, 2**63 - 1], got {seed!r}.")
    return int(seed)


def check_backend(backend, name: str = "backend") -> str:
    """Return ``backend`` as a plain str if it is ``"numpy"``, ``"torch"`` or ``"jax"``; raise otherwise.

    Parameters
    ----------
    backend : object
        The value to check.
    name : str
        The argument's name, shown in backticks in the error message.

    Returns
    -------
    str
        ``backend``.

    Raises
    ------
    TypeError, ValueError
        If ``backend`` is not a str, or not one of the three names.

    Examples
    --------
    >>> check_backend("numpy")
    'numpy'
    """
    if not isinstance(backend, str):
        raise TypeError(f"`{name}` must be one of {BACKENDS} (a str), got {backend!r} ({type(backend).__name__}).")
    if backend not in BACKENDS:
        raise ValueError(f"`{name}` must be one of {BACKENDS}, got {backend!r}.")
    return str(backend)


def check_index_letters(count: int, name: str) -> None:
    """Raise ValueError if a format needs more than :data:`MAX_FORMAT_LETTERS` einsum index letters.

    Parameters
    ----------
    count : int
        The number of distinct einsum indices the format needs.
    name : str
        The argument's name, shown in backticks in the error message.

    Raises
    ------
    ValueError
        If ``count > MAX_FORMAT_LETTERS``.

    Examples
    --------
    >>> check_index_letters(MAX_FORMAT_LETTERS, "stack")
    """
    if count > MAX_FORMAT_LETTERS:
        raise ValueError(
            f"`{name}` asks for a format with {count} einsum index letters; numpy's and torch's einsum have "
            f"{EINSUM_LETTERS} (a-z, A-Z), one of which `apply` needs for the batch, so a format may use at most "
            f"{MAX_FORMAT_LETTERS}."
        )


def check_n_iter_max(value, name: str = "n_iter_max") -> int:
    """Return ``value`` as a Python int if it is an integer >= 0 (bools refused); raise otherwise.

    Parameters
    ----------
    value : object
        The value to check.
    name : str
        The argument's name, shown in backticks in the error message.

    Returns
    -------
    int
        ``value`` as a Python int.

    Raises
    ------
    TypeError, ValueError
        If ``value`` has the wrong type or is out of range; the message names ``name``.

    Examples
    --------
    >>> check_n_iter_max(0)
    0
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be a non-negative integer, got {value!r} ({type(value).__name__}).")
    if value < 0:
        raise ValueError(f"`{name}` must be a non-negative integer, got {value!r}.")
    return int(value)


def check_tol(value, name: str = "tol") -> float:
    """Return ``value`` as a float if it is a finite real number >= 0 (bools refused); raise otherwise (NaN too).

    Parameters
    ----------
    value : object
        The value to check.
    name : str
        The argument's name, shown in backticks in the error message.

    Returns
    -------
    float
        ``value`` as a float.

    Raises
    ------
    TypeError, ValueError
        If ``value`` has the wrong type or is out of range; the message names ``name``.

    Examples
    --------
    >>> check_tol(1e-8)
    1e-08
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a finite real number >= 0, got {value!r} ({type(value).__name__}).")
    value = float(value)
    if not 0.0 <= value < float("inf"):  # also rejects NaN
        raise ValueError(f"`{name}` must be a finite real number >= 0, got {value!r}.")
    return value


def prime_factors(n: int) -> list[int]:
    """The prime factors of ``n >= 1`` in increasing order, with multiplicity (``[]`` for 1).

    Trial division: the sizes factorized here are feature dimensions, at most ``MAX_SIZE`` (2**31), so at
    most ~46,000 trial divisors; ``n`` is checked against that bound (a ValueError naming `n`).

    Parameters
    ----------
    n : int
        The number to factor, in ``[1, MAX_SIZE]``.

    Returns
    -------
    list of int
        The prime factors, smallest first.

    Raises
    ------
    TypeError, ValueError
        If ``n`` is not an int in ``[1, MAX_SIZE]`` (the message names `n`).

    Examples
    --------
    >>> prime_factors(768), prime_factors(1)
    ([2, 2, 2, 2, 2, 2, 2, 2, 3], [])
    """
    n = check_size(n, "n")
    primes, m, p = [], n, 2
    while p * p <= m:
        while m % p == 0:
            primes.append(p)
            m //= p
        p += 1
    if m > 1:
        primes.append(m)
    return primes
