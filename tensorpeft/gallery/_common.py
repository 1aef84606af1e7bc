"""What the gallery's factories share: checking their arguments, naming einsum letters, splitting features."""

from __future__ import annotations

import string

from ..decomp import balanced_modes, validate

# Stack modes get upper-case letters, the structure of a format lower-case ones (and the rest if it needs more).
_STACK_POOL = "STUVWXYZ" + "".join(c for c in string.ascii_uppercase if c not in "STUVWXYZ")


def check_args(stack, out_features, in_features) -> tuple[tuple[int, ...], int, int]:
    """The factory arguments as ``(stack, out_features, in_features)`` of Python ints, or an error naming them."""
    stack = validate.check_size_tuple(stack, "stack")
    return stack, validate.check_size(out_features, "out_features"), validate.check_size(in_features, "in_features")


def stack_letters(stack: tuple[int, ...]) -> str:
    """One upper-case einsum letter per stack mode (``S``, ``T``, ... ); the structure uses lower case."""
    validate.check_index_letters(len(stack), "stack")
    return _STACK_POOL[: len(stack)]


class Letters:
    """Hands out einsum letters not used yet: lower case first, then upper case, never a stack letter."""

    def __init__(self, avoid: str = ""):
        pool = string.ascii_lowercase + string.ascii_uppercase
        self._free = [c for c in pool if c not in avoid]

    def take(self, count: int, name: str = "rank") -> str:
        """``count`` fresh letters; a ValueError naming ``name`` when the 52 einsum letters run out."""
        if count > len(self._free):
            raise ValueError(
                f"`{name}` asks for more modes than einsum has letters: {count} more letters needed, "
                f"{len(self._free)} left of a-z, A-Z; use fewer modes."
            )
        out, self._free = "".join(self._free[:count]), self._free[count:]
        return out


def feature_modes(n: int, n_modes: int | None = None) -> tuple[int, ...]:
    """Modes of ``n`` features, descending, product ``n`` (:func:`tensorpeft.decomp.balanced_modes`).

    With ``n_modes`` the result has exactly that many entries, padded with 1 (a prime ``n`` gives ``(n, 1, ...)``)
    so that two sides can be paired mode by mode.
    """
    modes = balanced_modes(n) if n_modes is None else balanced_modes(n, n_modes)
    if n_modes is not None:
        modes = (*modes, *(1,) * (n_modes - len(modes)))
    return modes


def check_bonds(rank, count: int, what: str) -> tuple[int, ...]:
    """``rank`` as ``count`` bond sizes: one int for every bond, or a sequence of ``count`` ints."""
    rank = validate.check_int_or_tuple(
        rank,
        "rank",
        check=lambda v, name: validate.check_size(v, name, validate.MAX_RANK),
        length=count,
        expected=f"a sequence of {count} positive integers ({what})",
    )
    return (rank,) * count if isinstance(rank, int) else rank
