"""Common constructor checks of the built-in formats (stack, feature sizes, rank bounds)."""

from __future__ import annotations

from ._network import TensorNetwork
from .validate import check_size, check_size_tuple

__all__ = ["StackedFormat"]


class StackedFormat(TensorNetwork):
    """Base of the built-in formats: validated ``stack``, ``out_features``, ``in_features``.

    Subclasses build their equation from these and call :meth:`TensorNetwork.__init__`; their
    constructor arguments are readable as attributes of the same name, normalized.
    """

    _size_argument = "rank"

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
