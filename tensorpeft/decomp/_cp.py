"""CP over the whole update tensor (LoRTA): layers × matrix type × heads × d_head × d_in."""

from __future__ import annotations

import math
from typing import ClassVar

from . import _als
from ._network import fresh_letters
from ._stacked import StackedFormat
from ._svd import leading_left_vectors
from .validate import MAX_RANK, check_n_iter_max, check_seed, check_size, check_tol, normalize_index

__all__ = ["CP"]


class CP(StackedFormat):
    r"""One CP decomposition of the whole stacked update (LoRTA).

    Parameters
    ----------
    stack : tuple of int
        Sizes of the stacked modes, e.g. ``(layers, 4)`` for q, k, v, o of every layer.
    out_features, in_features : int
        Matrix shape ``d_out × d_in``.
    rank : int
        CP rank ``R`` (no upper bound).
    heads : int, optional
        Split the output mode into ``(heads, out_features // heads)``; the output index is head-major
        (``o = h·d_head + j``, row-major as :func:`numpy.reshape`), so head ``h`` owns rows
        ``h·d_head … (h+1)·d_head − 1`` — the layout of a fused attention projection.

    Notes
    -----
    Factors: ``stack{k}`` ``(n_k, R)`` per stack mode, ``heads`` ``(H, R)`` when split, ``out``
    ``(d_out / H, R)`` and ``in`` ``(d_in, R)``. For slice ``s`` and head ``h``:
    :math:`\Delta W_{s}[h] = \text{out}\,\operatorname{diag}(c_s \odot \text{heads}_h)\,\text{in}^\top`,
    :math:`c_s = \odot_k \text{stack}_k[s_k]`. ``out`` starts at zero (LoRTA's ``B = 0``).
    Parameters: :math:`R(\sum \text{stack} + d_\text{out} + d_\text{in})`, or with heads
    :math:`R(\sum \text{stack} + H + d_\text{out}/H + d_\text{in})`; stack (12, 4), 768×768, 12 heads: 860 R.
    Stack and head factors are drawn with unit variance, ``in`` and ``out`` with ``1/sqrt(d)``.

    References
    ----------
    Hounie et al., "LoRTA: Low Rank Tensor Adaptation of Large Language Models", arXiv:2410.04060.

    Examples
    --------
    >>> from tensorpeft import decomp
    >>> f = decomp.CP(stack=(12, 4), out_features=768, in_features=768, rank=8, heads=12)
    >>> f.num_params
    6880
    >>> f.factor_shapes["heads"], f.factor_shapes["out"]
    ((12, 8), (64, 8))
    """

    #: The name of the format in tables (the ``compare`` and ``budget`` commands).
    label: ClassVar[str] = "CP (LoRTA)"
    paper: ClassVar[str] = "LoRTA"
    order: ClassVar[int] = 2

    def __init__(self, stack, out_features, in_features, rank, heads=None):
        stack, out_features, in_features = self._check_common(stack, out_features, in_features)
        self.rank = check_size(rank, "rank", MAX_RANK)
        if heads is not None:
            heads = check_size(heads, "heads")
            if out_features % heads:
                raise ValueError(f"`heads`={heads} must divide `out_features`={out_features}.")
        self.heads = heads
        s = fresh_letters(len(stack), avoid="hoiR")
        sizes = dict(zip(s, stack, strict=True)) | {"o": out_features, "i": in_features, "R": self.rank}
        terms = [f"{c}R" for c in s]
        names = [f"stack{k}" for k in range(len(stack))]
        out = "o"
        if heads is not None:
            sizes |= {"h": heads, "o": out_features // heads}
            terms.append("hR")
            names.append("heads")
            out = "ho"
        terms += ["oR", "iR"]
        names += ["out", "in"]
        super().__init__(
            f"{','.join(terms)}->{s}{out}i",
            sizes,
            stack_indices=s,
            out_indices=out,
            in_indices="i",
            factor_names=tuple(names),
            zero_factor="out",
        )

    def _args(self):
        return super()._args() | {"rank": self.rank, "heads": self.heads}

    @classmethod
    def max_scale(cls, **kwargs):
        """None: the CP rank has no upper bound."""
        return None

    @property
    def slice_rank(self) -> int:
        """``min(R, d_out, d_in)``: each slice (and head block) is ``out·diag(·)·inᵀ``."""
        return min(self.rank, self.out_features, self.in_features)

    def lora_factors(self, factors, index=()):
        """``(out ⊙ heads ⊙ c_s, inᵀ)``, exact with all ``R`` components, as :meth:`TensorNetwork.lora_factors`.

        ``B`` keeps the ``R`` columns even when ``R`` exceeds :attr:`slice_rank`.
        """
        ops = self.check_factors(factors)
        index = normalize_index(index, self.stack)
        out = factors["out"]
        if self.heads is not None:
            out = (factors["heads"][:, None, :] * out[None]).reshape((self.out_features, self.rank))
        for k, i in enumerate(index):
            out = out * factors[f"stack{k}"][i]
        return out, ops.swapaxes(factors["in"], 0, 1)

    def init_from_weights(self, dense) -> dict:
        """CP-ALS of ``dense``, stopped after :attr:`init_sweeps` sweeps (directions are all an init needs)."""
        return self.fit(dense, n_iter_max=self.init_sweeps)[0]

    def init_std(self, name):
        """Unit variance for stack and head factors, ``1/sqrt(size)`` for ``out`` and ``in``."""
        if name == "out":
            return 1.0 / math.sqrt(self.sizes["o"])
        if name == "in":
            return 1.0 / math.sqrt(self.in_features)
        return 1.0

    def fit(self, dense, *, init=None, n_iter_max: int = 500, tol: float = 1e-12, seed: int = 0):
        """CP-ALS from an SVD initialization (leading left singular vectors of each unfolding).

        Random columns pad the modes smaller than the rank. Returns ``(factors, rel_err)``; scale,
        dtypes and errors as :meth:`TensorNetwork.fit` (the scale is balanced over all factors).
        """
        n_iter_max, tol, seed = check_n_iter_max(n_iter_max), check_tol(tol), check_seed(seed)
        ops = self.check_dense(dense)
        init = _als.check_init(self, init)

        def solve(x):
            start = self._svd_init(x, ops, seed) if init is None else _als.start_from(init, x, ops)
            return _als.fit_als(self, x, start, n_iter_max=n_iter_max, tol=tol, ops=ops)[0]

        return _als.fit_scaled(self, dense, solve, ops, carrier=self.factor_names)

    def _svd_init(self, dense, ops, seed):
        target = dense.reshape(tuple(self.sizes[c] for c in self._output))
        padding = self.random(seed=seed, backend=ops.name, dtype=ops.dtype_of(dense))
        factors = {}
        for name, term in self.factor_indices.items():
            letter = term[0]
            axis = self._output.index(letter)
            n = self.sizes[letter]
            unfolding = ops.swapaxes(target, 0, axis).reshape((n, -1))
            # Only k singular pairs are used: from the smaller Gram, not a full SVD of the unfolding.
            k = min(self.rank, *unfolding.shape)
            u, s = leading_left_vectors(unfolding, k, ops, with_values=True)
            columns = u * s ** (1.0 / len(self.factor_names))
            if k < self.rank:
                factors[name] = ops.concatenate([columns, _als.convert(padding[name][:, k:], columns, ops)], axis=1)
            else:
                factors[name] = columns
        return factors
