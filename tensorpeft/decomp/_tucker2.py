"""Tucker-2 across a stack (LoTR): shared outer factors, one small core per slice."""

from __future__ import annotations

import numbers
from functools import partial
from typing import ClassVar

from . import _als
from ._network import fresh_letters
from ._stacked import StackedFormat
from ._svd import leading_left_vectors
from .validate import (
    MAX_RANK,
    check_at_most,
    check_int_or_tuple,
    check_n_iter_max,
    check_size,
    check_tol,
    normalize_index,
)

__all__ = ["Tucker2"]


class Tucker2(StackedFormat):
    r"""Tucker-2 update of a stack (LoTR): :math:`\Delta W_s = A\, G_s\, B^\top`.

    Parameters
    ----------
    stack : tuple of int
        Sizes of the stacked modes, e.g. ``(layers,)``.
    out_features, in_features : int
        Matrix shape ``d_out × d_in``.
    rank : int or (int, int)
        ``r`` or ``(r_out, r_in)``, with ``r_out <= d_out`` and ``r_in <= d_in``.

    Notes
    -----
    ``A`` ``(d_out, r_out)`` and ``B`` ``(d_in, r_in)`` are shared by every slice; the core
    ``G`` ``(*stack, r_out, r_in)`` starts at zero. Parameters:
    :math:`r_\text{out} d_\text{out} + r_\text{in} d_\text{in} + \prod(\text{stack})\, r_\text{out} r_\text{in}`.
    Stack (24,), 768×768: 1,560 / 3,168 / 6,528 / 13,824 / 30,720 / 73,728 for r = 1, 2, 4, 8, 16, 32.
    Forward per token: ``x·B`` (2 d_in r_in flops), ``·G_sᵀ`` (2 r_out r_in), ``·Aᵀ`` (2 r_out d_out).
    ``A`` and ``B`` are drawn with std ``1/sqrt(d)`` (columns of unit norm): unit-variance factors
    would make the effective learning rate of ``G`` about ``d`` times LoRA's.

    References
    ----------
    Bershatsky et al., "LoTR: Low Tensor Rank Weight Adaptation", arXiv:2402.01376.

    Examples
    --------
    >>> from tensorpeft import decomp
    >>> f = decomp.Tucker2(stack=(24,), out_features=768, in_features=768, rank=8)
    >>> f.shape, f.num_params
    ((24, 768, 768), 13824)
    >>> f.rank
    (8, 8)
    """

    #: The name of the format in tables (the ``compare`` and ``budget`` commands).
    label: ClassVar[str] = "Tucker-2 (LoTR)"
    paper: ClassVar[str] = "LoTR"
    order: ClassVar[int] = 1

    def __init__(self, stack, out_features, in_features, rank):
        stack, out_features, in_features = self._check_common(stack, out_features, in_features)
        if isinstance(rank, numbers.Integral) and not isinstance(rank, bool):
            rank = (rank, rank)  # one int: both sides, checked as rank[0] and rank[1]
        expected = "a pair (r_out, r_in)"
        if isinstance(rank, tuple | list) and len(rank) != 2:
            raise TypeError(f"`rank` must be an int or {expected}, got {rank!r}.")
        r_out, r_in = check_int_or_tuple(rank, "rank", check=partial(check_size, bound=MAX_RANK), expected=expected)
        check_at_most(r_out, out_features, "rank[0]", "`out_features`")
        check_at_most(r_in, in_features, "rank[1]", "`in_features`")
        self.rank = (r_out, r_in)
        s = fresh_letters(len(stack), avoid="oirq")
        sizes = dict(zip(s, stack, strict=True)) | {
            "o": out_features,
            "i": in_features,
            "r": r_out,
            "q": r_in,
        }
        super().__init__(
            f"or,{s}rq,iq->{s}oi",
            sizes,
            stack_indices=s,
            out_indices="o",
            in_indices="i",
            factor_names=("A", "G", "B"),
            zero_factor="G",
        )

    def _args(self):
        return super()._args() | {"rank": self.rank}

    @property
    def slice_rank(self) -> int:
        """``min(r_out, r_in)``: the narrower side of ``A G_s Bᵀ``."""
        return min(self.rank)

    def lora_factors(self, factors, index=()):
        """``(A G_s, Bᵀ)`` if ``r_in <= r_out``, else ``(A, G_s Bᵀ)`` (exact), as the generic method."""
        ops = self.check_factors(factors)
        index = normalize_index(index, self.stack)
        A, G, Bt = factors["A"], factors["G"][index], ops.swapaxes(factors["B"], 0, 1)
        r_out, r_in = self.rank
        if r_in <= r_out:
            return A @ G, Bt
        return A, G @ Bt

    @classmethod
    def from_scale(cls, scale, rank_out=None, rank_in=None, **kwargs):
        """Rank ``(scale, scale)``, or ``scale`` on the side that ``rank_out``/``rank_in`` leaves free."""
        # `is None`, not `or`: a fixed rank_out=0 must reach the constructor's check, not become `scale`.
        if rank_out is not None and rank_in is not None:
            raise ValueError("`rank_out` and `rank_in` are both fixed: no rank is left to choose; fix at most one.")
        rank = (scale if rank_out is None else rank_out, scale if rank_in is None else rank_in)
        return cls(rank=rank, **kwargs)

    @classmethod
    def max_scale(cls, rank_out=None, rank_in=None, **kwargs):
        """The feature size of each side left free (the smaller one when both are)."""
        bounds = [
            kwargs["out_features"] if rank_out is None else None,
            kwargs["in_features"] if rank_in is None else None,
        ]
        return min(b for b in bounds if b is not None)

    def fit(self, dense, *, n_iter_max: int = 100, tol: float = 1e-10, **kwargs):
        """HOSVD initialization, then HOOI sweeps on the two matrix modes until the error stalls.

        The algorithm of ``tensorly.decomposition.partial_tucker`` (modes 1 and 2; HOSVD start, the
        mode-1 factor of the start being recomputed by the first sweep, so only ``B`` is computed
        there) with a stricter default stopping rule, written for the stack: each sweep makes two
        passes over ``dense`` (``W_s B`` and ``Aᵀ W_s``; the core reuses the second) and two float64
        eigendecompositions of ``S r × S r`` Gram matrices (or ``d × d`` when smaller), never an SVD
        of an unfolding of the whole stack. ``n_iter_max`` is the maximum number of sweeps (at least
        one is made); stop when a sweep improves the relative error by less than ``tol``. Other keyword
        arguments (``seed``, ``init``) are checked and ignored. Any finite ``dense`` is fitted (the sweeps
        run on ``dense / 2**e``, half precision in float32); the scale goes back on ``G`` (``A`` and ``B``
        keep orthonormal columns) unless ``G`` would leave the range of the dtype, then on all three.

        Returns ``(factors, rel_err)``, ``rel_err`` the :meth:`relative_error` of the returned factors.
        """
        n_iter_max, tol = check_n_iter_max(n_iter_max), check_tol(tol)
        _als.check_fit_kwargs(self, kwargs)
        ops = self.check_dense(dense)
        return _als.fit_scaled(self, dense, lambda x: self._hooi(x, n_iter_max, tol, ops), ops, carrier=("G",))

    def _hooi(self, dense, n_iter_max, tol, ops):
        """HOSVD start and HOOI sweeps on ``dense`` (of moderate scale); return the factors."""
        r_out, r_in = self.rank
        S, m, n = self.num_slices, self.out_features, self.in_features
        W = dense.reshape((S, m, n))
        total = ops.norm(W) ** 2
        if total == 0:
            return {n: ops.zeros(s, ops.dtype_of(dense), like=dense) for n, s in self.factor_shapes.items()}

        # HOSVD start: leading subspace of Σ_s W_sᵀ W_s, the right vectors of the (S·m × n) unfolding.
        B = leading_left_vectors(W.reshape((S * m, n)).T, r_in, ops)
        err = None
        for _ in range(max(n_iter_max, 1)):
            A = leading_left_vectors(_cat(W @ B, ops), r_out, ops)
            P = A.T @ W  # (S, r_out, n): Aᵀ W_s
            B = leading_left_vectors(P.reshape((S * r_out, n)).T, r_in, ops)
            G = P @ B  # Aᵀ W_s B
            new_err = max(total - ops.norm(G) ** 2, 0.0) ** 0.5 / total**0.5
            # HOOI never increases the error in exact arithmetic: a rise is round-off (float32 reaches
            # it long before a float64 `tol`), so stop on an improvement below `tol`, not a change.
            if err is not None and err - new_err < tol:
                err = new_err
                break
            err = new_err
        return {"A": A, "G": G.reshape(self.factor_shapes["G"]), "B": B}


def _cat(Y, ops):
    """``(S, m, k)`` → ``(m, S·k)``: the slices side by side."""
    S, m, k = Y.shape
    return ops.swapaxes(Y, 0, 1).reshape((m, S * k))
