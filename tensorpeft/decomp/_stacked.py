"""Common constructor checks of the built-in formats (stack, feature sizes, rank bounds)."""

from __future__ import annotations

import inspect
from typing import ClassVar

from ._network import TensorNetwork
from .validate import check_size, check_size_tuple

__all__ = ["StackedFormat", "builtin_formats"]

_BUILTIN: list[type[StackedFormat]] = []


def builtin_formats() -> tuple[tuple[type[StackedFormat], str, tuple[str, ...]], ...]:
    """The built-in formats in table order: ``(class, paper's name, compare options)``.

    A format of :mod:`tensorpeft.decomp` that sets ``paper`` registers itself (``__init_subclass__``);
    ``order`` sorts the table; the options of :func:`~tensorpeft.decomp.compare` it takes are the
    constructor arguments beyond ``stack``, ``out_features``, ``in_features`` and ``rank``.
    """
    out = []
    for cls in sorted(_BUILTIN, key=lambda c: (c.order, c.__name__)):
        params = inspect.signature(cls.__init__).parameters
        options = tuple(n for n in params if n not in {"self", "stack", "out_features", "in_features", "rank"})
        out.append((cls, cls.paper, options))
    return tuple(out)


class StackedFormat(TensorNetwork):
    """Base of the built-in formats: validated ``stack``, ``out_features``, ``in_features``.

    Subclasses build their equation from these and call :meth:`TensorNetwork.__init__`; their
    constructor arguments are readable as attributes of the same name, normalized.
    """

    _size_argument = "rank"
    paper: ClassVar[str] = ""
    """The name of the method in its paper (``"LoTR"``); set by the built-in formats, shown by ``compare``."""
    order: ClassVar[int] = 100
    """Position of a built-in format in tables (``compare``, the budget page)."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.paper and cls.__module__.startswith("tensorpeft.decomp.") and "paper" in cls.__dict__:
            _BUILTIN.append(cls)

    def _check_common(self, stack, out_features, in_features):
        """Stack sizes and feature sizes as Python ints in ``[1, 2**31]`` (at most 51 stack modes)."""
        stack = check_size_tuple(stack, "stack")
        out_features = check_size(out_features, "out_features")
        in_features = check_size(in_features, "in_features")
        return stack, out_features, in_features

    def _args(self) -> dict:  # constructor arguments, for repr/eq
        return {"stack": self.stack, "out_features": self.out_features, "in_features": self.in_features}

    @classmethod
    def from_scale(cls, scale: int, **kwargs):
        """The format of this class at scalar rank ``scale`` (the budget search's build step).

        Parameters
        ----------
        scale : int
            The scalar rank, at least 1.
        **kwargs
            The constructor's other arguments (never ``rank``).

        Returns
        -------
        StackedFormat
            ``cls(rank=scale, **kwargs)`` here; formats with several ranks say how ``scale`` spreads.
        """
        return cls(rank=scale, **kwargs)

    @classmethod
    def max_scale(cls, **kwargs) -> int | None:
        """The largest meaningful scalar rank for these constructor arguments, or None when unbounded.

        Parameters
        ----------
        **kwargs
            The constructor's other arguments, as :meth:`from_scale` takes them.

        Returns
        -------
        int or None
            Here ``min(out_features, in_features)``.
        """
        return min(kwargs["out_features"], kwargs["in_features"])

    def init_from_weights(self, dense) -> dict:
        """:meth:`fit`'s factors of ``dense`` with the format's default settings (a closed-form fit).

        Parameters
        ----------
        dense : array of :attr:`shape`
            The weights to fit (numpy or torch).

        Returns
        -------
        dict
            Factors in ``dense``'s backend and dtype.
        """
        return self.fit(dense)[0]
