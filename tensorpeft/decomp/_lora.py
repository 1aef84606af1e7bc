"""LoRA in the vocabulary of the formats: an independent rank-r product per slice."""

from __future__ import annotations

import math

from ._network import fresh_letters
from ._stacked import StackedFormat
from ._svd import truncated_svd
from ._validate import check_at_most, check_positive_int

__all__ = ["LoRA"]


class LoRA(StackedFormat):
    r"""Plain LoRA on every slice of a stack: :math:`\Delta W_s = B_s A_s`.

    Parameters
    ----------
    stack : tuple of int
        Sizes of the stacked modes (``()`` for one matrix).
    out_features, in_features : int
        Matrix shape ``d_out × d_in``.
    rank : int
        ``r <= min(d_out, d_in)``.

    Notes
    -----
    Factors ``A`` ``(*stack, r, d_in)`` and ``B`` ``(*stack, d_out, r)`` (PEFT's ``lora_A``/``lora_B``);
    ``B`` starts at zero. Parameters: :math:`\prod(\text{stack})\, r\,(d_\text{in} + d_\text{out})`;
    24 slices of 768×768 at r = 8: 294,912. ``A`` is drawn with the variance of PEFT's
    ``kaiming_uniform_(a=√5)``: :math:`1/(3 d_\text{in})`.

    References
    ----------
    Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685.

    Examples
    --------
    >>> from tensorpeft import decomp
    >>> f = decomp.LoRA(stack=(24,), out_features=768, in_features=768, rank=8)
    >>> f.num_params
    294912
    >>> f.factor_shapes
    {'A': (24, 8, 768), 'B': (24, 768, 8)}
    """

    def __init__(self, stack, out_features, in_features, rank):
        stack, out_features, in_features = self._check_common(stack, out_features, in_features)
        rank = check_positive_int(rank, "rank")
        check_at_most(rank, min(out_features, in_features), "rank", "min(out_features, in_features)")
        self.rank = rank
        s = fresh_letters(len(stack), avoid="oir")
        sizes = dict(zip(s, stack, strict=True)) | {"o": out_features, "i": in_features, "r": rank}
        super().__init__(
            f"{s}ri,{s}or->{s}oi",
            sizes,
            stack_indices=s,
            out_indices="o",
            in_indices="i",
            factor_names=("A", "B"),
            zero_factor="B",
        )

    def _args(self):
        return super()._args() | {"rank": self.rank}

    def init_std(self, name):
        """PEFT's scale for ``A`` (kaiming-uniform variance), ``1/sqrt(r)`` for ``B`` in :meth:`random`."""
        if name == "A":
            return 1.0 / math.sqrt(3 * self.in_features)
        return 1.0 / math.sqrt(self.rank)

    def fit(self, dense, **kwargs):
        """Best rank-r approximation of every slice (truncated SVD, Eckart-Young optimal).

        Returns ``(factors, rel_err)``; extra keyword arguments are accepted and ignored.
        """
        ops = self.check_dense(dense)
        d = dense.reshape((self.num_slices, self.out_features, self.in_features))
        u, s, vt = truncated_svd(d, self.rank, ops)
        root = s**0.5
        factors = {
            "A": (root[..., :, None] * vt).reshape(self.factor_shapes["A"]),
            "B": (u * root[..., None, :]).reshape(self.factor_shapes["B"]),
        }
        return factors, self.relative_error(dense, factors)
