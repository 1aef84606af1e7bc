"""Tensor-train updates (TT-LoRA), optionally with the stack modes in the train (MetaTT)."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from . import _als
from ._network import fresh_letters
from ._stacked import StackedFormat
from .validate import (
    MAX_RANK,
    check_index_letters,
    check_int_or_tuple,
    check_modes,
    check_n_iter_max,
    check_positive_int,
    check_seed,
    check_size,
    check_tol,
    prime_factors,
)

__all__ = ["TensorTrain", "balanced_modes"]


def balanced_modes(n: int, n_modes: int | None = None) -> tuple[int, ...]:
    """Factor ``n`` into about ``n_modes`` near-equal integer modes (descending).

    Prime factors are dealt, largest first, to the currently smallest mode; modes left at 1 are
    dropped (a prime ``n`` gives ``(n,)``). Default ``n_modes``: ``ceil(log(n) / log(12))``, so that
    768 → (12, 8, 8).

    Parameters
    ----------
    n : int
        The positive integer to factor, at most ``2**31`` (the largest feature size of a format).
    n_modes : int, optional
        Number of modes to aim for, a positive integer (fewer when ``n`` has too few prime factors).

    Raises
    ------
    TypeError, ValueError
        Naming `n` or `n_modes` when one is not a positive integer, or `n` is above ``2**31``.

    Returns
    -------
    tuple of int
        The modes, descending, whose product is ``n``.

    Examples
    --------
    >>> balanced_modes(768)
    (12, 8, 8)
    >>> balanced_modes(3072, 2)
    (64, 48)
    """
    n = check_size(n, "n")
    if n_modes is None:
        n_modes = max(1, math.ceil(math.log(n) / math.log(12))) if n > 1 else 1
    n_modes = check_positive_int(n_modes, "n_modes")
    primes = prime_factors(n)
    modes = [1] * min(n_modes, max(len(primes), 1))  # more modes than prime factors would stay at 1
    for q in sorted(primes, reverse=True):
        modes[modes.index(min(modes))] *= q
    return tuple(sorted((x for x in modes if x > 1), reverse=True)) or (1,)


class TensorTrain(StackedFormat):
    r"""Tensor-train update (TT-LoRA); with ``share_stack`` one train runs over the stack too.

    Parameters
    ----------
    stack : tuple of int
        Sizes of the stacked modes.
    out_features, in_features : int
        Matrix shape ``d_out × d_in``.
    rank : int or tuple of int
        Bond ranks. An int is used for every bond, capped at that bond's bound (and at ``2**63 - 1``); a
        tuple gives each of the ``K − 1`` inner bonds explicitly and must respect the bounds: bond ``k``
        is at most ``min(prod of the modes left of it, prod of the modes right of it)``.
    in_modes, out_modes : tuple of int, optional
        Factorizations of ``in_features`` and ``out_features`` (products must match); default
        :func:`balanced_modes`, descending for the input and ascending for the output so that the big
        modes sit at the ends of the train. Row-major: ``i = i_1·(n_2 n_3) + i_2·n_3 + i_3``.
    share_stack : bool
        True: one train over ``(*stack, *in_modes, *out_modes)``. False: every slice has its own
        train over ``(*in_modes, *out_modes)``.

    Notes
    -----
    Cores ``core{k}`` ``(r_{k-1}, n_k, r_k)`` with ``r_0 = r_K = 1`` (prefixed by the stack modes
    when not shared); the last core starts at zero. Parameters :math:`\sum_k r_{k-1} n_k r_k`
    (times ``prod(stack)`` when not shared). 768×768, in (64, 4, 3), out (3, 4, 64), rank 5: 990.
    Each core is drawn with std ``1/sqrt(r_{k-1} n_k)`` for input modes and ``1/sqrt(r_{k-1})``
    otherwise, so every step of the contraction with ``x`` keeps unit scale.

    References
    ----------
    Anjum et al., "Tensor Train Low-rank Approximation (TT-LoRA)", arXiv:2408.01008.

    Examples
    --------
    >>> from tensorpeft import decomp
    >>> f = decomp.TensorTrain((), 768, 768, rank=5, in_modes=(64, 4, 3), out_modes=(3, 4, 64))
    >>> f.num_params, f.rank
    (990, (5, 5, 5, 5, 5))
    """

    #: The name of the format in tables (the ``compare`` and ``budget`` commands).
    label: ClassVar[str] = "TT (TT-LoRA)"
    paper: ClassVar[str] = "TT-LoRA"
    order: ClassVar[int] = 3

    def __init__(self, stack, out_features, in_features, rank, in_modes=None, out_modes=None, share_stack=True):
        stack, out_features, in_features = self._check_common(stack, out_features, in_features)
        if in_modes is None:
            in_modes = balanced_modes(in_features)
        if out_modes is None:
            out_modes = tuple(reversed(balanced_modes(out_features)))
        self.in_modes = check_modes(in_modes, in_features, "in_modes", "in_features")
        self.out_modes = check_modes(out_modes, out_features, "out_modes", "out_features")
        if not isinstance(share_stack, bool | np.bool_):
            raise TypeError(f"`share_stack` must be True or False, got {share_stack!r} ({type(share_stack).__name__}).")
        self.share_stack = bool(share_stack)
        train = (*stack, *self.in_modes, *self.out_modes) if self.share_stack else (*self.in_modes, *self.out_modes)
        # letters: the stack, the input and output modes, and the len(train) + 1 bonds
        letters = len(stack) + len(self.in_modes) + len(self.out_modes) + len(train) + 1
        check_index_letters(letters, "stack` + `in_modes` + `out_modes")
        bounds = [min(math.prod(train[: k + 1]), math.prod(train[k + 1 :]), MAX_RANK) for k in range(len(train) - 1)]
        self.rank = self._check_rank(rank, bounds)

        s = fresh_letters(len(stack), avoid="")
        i = fresh_letters(len(self.in_modes), avoid=s)
        o = fresh_letters(len(self.out_modes), avoid=s + i)
        b = fresh_letters(len(train) + 1, avoid=s + i + o)
        sizes = dict(zip(s + i + o, (*stack, *self.in_modes, *self.out_modes), strict=True))
        sizes |= dict(zip(b, (1, *self.rank, 1), strict=True))
        mode_letters = (s if self.share_stack else "") + i + o
        prefix = "" if self.share_stack else s
        terms = [f"{prefix}{b[k]}{mode_letters[k]}{b[k + 1]}" for k in range(len(train))]
        self._input_letters = i
        super().__init__(
            f"{','.join(terms)}->{s}{o}{i}",
            sizes,
            stack_indices=s,
            out_indices=o,
            in_indices=i,
            factor_names=tuple(f"core{k}" for k in range(len(train))),
            zero_factor=f"core{len(train) - 1}",
        )

    @staticmethod
    def _check_rank(rank, bounds):
        # entries are bounded by their bond's bound (at most a feature size) below, not by MAX_RANK
        rank = check_int_or_tuple(rank, "rank", expected=f"a tuple of {len(bounds)} bond ranks")
        if isinstance(rank, int):
            return tuple(min(rank, bound) for bound in bounds)
        if len(rank) != len(bounds):
            raise ValueError(f"`rank` must have {len(bounds)} bond ranks (one per inner bond), got {len(rank)}.")
        out = []
        for k, (r, bound) in enumerate(zip(rank, bounds, strict=True)):
            if r > bound:
                raise ValueError(
                    f"`rank[{k}]`={r} exceeds the bound {bound} of bond {k} "
                    "(min of the products of the modes on either side); it must be <= that."
                )
            out.append(r)
        return tuple(out)

    def _args(self):
        return super()._args() | {
            "rank": self.rank,
            "in_modes": self.in_modes,
            "out_modes": self.out_modes,
            "share_stack": self.share_stack,
        }

    @classmethod
    def max_scale(cls, **kwargs):
        """The largest bond bound: past it, a larger scalar rank changes no bond."""
        return cls(rank=MAX_RANK, **kwargs)._max_rank()

    @property
    def slice_rank(self) -> int:
        """The bond between the last input core and the first output core (capped at ``min(d_out, d_in)``)."""
        offset = len(self.stack) if self.share_stack else 0
        return min(self.rank[offset + len(self.in_modes) - 1], self.out_features, self.in_features)

    def _max_rank(self) -> int:
        return max(self.rank)

    def init_std(self, name):
        """``1/sqrt(r_{k-1} n_k)`` on input-mode cores, ``1/sqrt(r_{k-1})`` on the others."""
        term = self.factor_indices[name]
        offset = 0 if self.share_stack else len(self.stack_indices)
        left, mode = term[offset], term[offset + 1]
        fan = self.sizes[left] * (self.sizes[mode] if mode in self._input_letters else 1)
        return 1.0 / math.sqrt(fan)

    def fit(self, dense, *, init=None, n_iter_max: int = 0, tol: float = 1e-12, seed: int = 0):
        """TT-SVD (TensorLy's ``tensor_train``) per train, then ``n_iter_max`` optional ALS sweeps.

        Returns ``(factors, rel_err)``, ``rel_err`` the :meth:`relative_error` of the returned factors.
        Any finite ``dense`` is fitted: the TT-SVD (in float64) and the sweeps run on ``dense / 2**e`` and
        the scale goes back on the last core (where TT-SVD leaves the norm; the others stay
        left-orthonormal) unless that core would leave the range of the dtype, then on all cores. Half
        precision is computed in float32. With ``init`` and ``n_iter_max=0``, ``init`` is returned as it
        is (in ``dense``'s backend and dtype).
        """
        n_iter_max, tol, seed = check_n_iter_max(n_iter_max), check_tol(tol), check_seed(seed)
        ops = self.check_dense(dense)
        init = _als.check_init(self, init)
        if init is not None and n_iter_max == 0:
            like = _als.detach(dense, ops)
            factors = {n: _als.convert(v, like, ops) for n, v in init.items()}
            return factors, self.relative_error(dense, factors)

        def solve(x):
            start = self._tt_svd(x, ops) if init is None else _als.start_from(init, x, ops)
            if n_iter_max == 0:
                return start
            return _als.fit_als(self, x, start, n_iter_max=n_iter_max, tol=tol, ops=ops)[0]

        return _als.fit_scaled(self, dense, solve, ops, carrier=(self.factor_names[-1],))

    def _tt_svd(self, dense, ops):
        """TT-SVD of every train of ``dense`` (of moderate scale), in float64; cores like ``dense``."""
        from tensorly.decomposition import tensor_train

        p = len(self.stack)
        out_modes, in_modes = len(self.out_modes), len(self.in_modes)
        target = ops.to_numpy(dense).astype(np.float64)
        target = target.reshape((*self.stack, *self.out_modes, *self.in_modes))
        feature_order = [p + out_modes + k for k in range(in_modes)] + [p + k for k in range(out_modes)]
        target = target.transpose([*range(p), *feature_order])
        ranks = [1, *self.rank, 1]
        if self.share_stack:
            cores = list(tensor_train(target, rank=ranks).factors)
        else:
            trains = [tensor_train(t, rank=ranks).factors for t in target.reshape((-1, *target.shape[p:]))]
            cores = [
                np.stack([tr[k] for tr in trains]).reshape((*self.stack, *trains[0][k].shape))
                for k in range(len(ranks) - 1)
            ]
        # TT-SVD caps a bond at r_{k-1}·n_k, which may be below a valid requested rank: zero-pad.
        cores = [_pad(c, shape) for c, shape in zip(cores, self.factor_shapes.values(), strict=True)]
        return {n: ops.asarray(c, like=dense) for n, c in zip(self.factor_names, cores, strict=True)}


def _pad(core, shape):
    """``core`` zero-padded at the end of each axis to ``shape``."""
    padded = np.zeros(shape, dtype=core.dtype)
    padded[tuple(slice(0, n) for n in core.shape)] = core
    return padded
