"""Common constructor checks of the built-in formats (stack, feature sizes, rank bounds)."""

from __future__ import annotations

from ._network import TensorNetwork
from ._validate import check_size, check_size_tuple

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
    def _from_scale(cls, scale: int, **kwargs):
        """The format of this class with scalar rank ``scale`` (used by ``rank_for_budget``)."""
        return cls(rank=scale, **kwargs)

    @classmethod
    def _max_scale(cls, **kwargs) -> int | None:
        """Largest meaningful scalar rank, or None when unbounded."""
        return min(kwargs["out_features"], kwargs["in_features"])
