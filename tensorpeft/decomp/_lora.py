"""LoRA in the vocabulary of the formats: an independent rank-r product per slice."""

from __future__ import annotations

import math
from typing import ClassVar

from . import _als
from ._network import fresh_letters
from ._stacked import StackedFormat
from ._svd import truncated_svd
from .validate import MAX_RANK, check_at_most, check_size, normalize_index

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

    #: The name of the format in tables (the ``compare`` and ``budget`` commands).
    label: ClassVar[str] = "LoRA"
    paper: ClassVar[str] = "LoRA"
    order: ClassVar[int] = 0

    def __init__(self, stack, out_features, in_features, rank):
        stack, out_features, in_features = self._check_common(stack, out_features, in_features)
        rank = check_size(rank, "rank", MAX_RANK)
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

    @property
    def slice_rank(self) -> int:
        """``r``: every slice is ``B_s A_s``."""
        return self.rank

    def lora_factors(self, factors, index=()):
        """``(B_s, A_s)`` of slice ``index`` (exact), as :meth:`TensorNetwork.lora_factors`."""
        self.check_factors(factors)
        index = normalize_index(index, self.stack)
        return factors["B"][index], factors["A"][index]

    def init_std(self, name):
        """PEFT's scale for ``A`` (kaiming-uniform variance), ``1/sqrt(r)`` for ``B`` in :meth:`random`."""
        if name == "A":
            return 1.0 / math.sqrt(3 * self.in_features)
        return 1.0 / math.sqrt(self.rank)

    def fit(self, dense, **kwargs):
        """Best rank-r approximation of every slice (truncated SVD, Eckart-Young optimal).

        Returns ``(factors, rel_err)``, ``rel_err`` the :meth:`relative_error` of the returned factors;
        extra keyword arguments are accepted and ignored (``n_iter_max``, ``tol``, ``seed`` and ``init``
        are checked). Any finite ``dense`` is fitted: the SVD runs on ``dense / 2**e`` (half precision
        in float32) and ``2**e`` is split between ``A`` and ``B``.
        """
        _als.check_fit_kwargs(self, kwargs)
        ops = self.check_dense(dense)
        return _als.fit_scaled(self, dense, lambda x: self._svd(x, ops), ops, carrier=("A", "B"))

    def _svd(self, dense, ops):
        """Rank-r truncated SVD of every slice of ``dense`` (of moderate scale), as factors."""
        d = dense.reshape((self.num_slices, self.out_features, self.in_features))
        u, s, vt = truncated_svd(d, self.rank, ops)
        root = s**0.5
        return {
            "A": (root[..., :, None] * vt).reshape(self.factor_shapes["A"]),
            "B": (u * root[..., None, :]).reshape(self.factor_shapes["B"]),
        }
