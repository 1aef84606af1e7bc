"""CP over the whole update tensor (LoRTA): layers × matrix type × heads × d_head × d_in."""

from __future__ import annotations

import math
from typing import ClassVar

from . import _als
from ._contract import contract
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
            if init is None:  # the first mode updated is solved from the others: its start is never read
                skip = self._sweep_order()[0] if n_iter_max else None
                start = self._svd_init(x, ops, seed, skip=skip)
            else:
                start = _als.start_from(init, x, ops)
            return self._als(x, start, n_iter_max, tol, ops)[0]

        return _als.fit_scaled(self, dense, solve, ops, carrier=self.factor_names)

    def _als(self, dense, start, n_iter_max, tol, ops):
        """CP-ALS sweeps from ``start`` on ``dense`` (of moderate scale); return ``(factors, rel_err)``.

        The sweeps of :func:`~tensorpeft.decomp._als.fit_als` (the same least-squares updates, the same
        stopping rule), arranged for CP: two passes over ``dense`` per sweep whatever the number of modes.
        The pivot mode ``k`` (the largest) is updated last; ``Y = dense ×_k F_k`` is formed once per
        sweep and every other mode's MTTKRP is contracted from ``Y``, which is ``n_k`` times smaller than
        ``dense``; the pivot's MTTKRP is one product of ``dense`` with the Khatri-Rao product of the others.
        Each Gram matrix is the Hadamard product of the factors' ``R × R`` Grams, and the error of a sweep
        comes from them (``‖T‖² − 2⟨M_k, F_k⟩ + ⟨V_k, F_kᵀF_k⟩``) while it is above ``_als._GRAM_FLOOR``,
        from the dense residual below.
        """
        letters = self._output
        by_letter = {term[0]: name for name, term in self.factor_indices.items()}
        names = [by_letter[c] for c in letters]
        sizes = [self.sizes[c] for c in letters]
        target = dense.reshape(tuple(sizes))
        factors = {n: _als.convert(v, dense, ops) for n, v in start.items()}
        ref = ops.norm(dense)
        if ref == 0:
            return {n: v * 0 for n, v in factors.items()}, 0.0
        *others, k = (letters.index(self.factor_indices[n][0]) for n in self._sweep_order())
        rest = "".join(letters[m] for m in others)
        eq_y = f"{letters},{letters[k]}R->{rest}R"
        eq_pivot = f"{letters},{rest}R->{letters[k]}R"
        grams = {m: _gram(factors[names[m]]) for m in range(len(sizes))}
        err = math.inf  # the start's error decides nothing: every fit makes a first sweep
        for _ in range(n_iter_max):
            if not all(ops.all_finite(g) for g in grams.values()):
                break  # (never seen) a non-finite Gram would stall the solver: stop at the last finite sweep
            y = contract(eq_y, target, factors[names[k]], ops=ops)
            for n in others:
                mates = [m for m in others if m != n]
                eq = f"{rest}R,{','.join(letters[m] + 'R' for m in mates)}->{letters[n]}R"
                mttkrp = ops.einsum(eq, y, *(factors[names[m]] for m in mates)) if mates else y
                factors[names[n]] = mttkrp @ ops.pinv_hermitian(_hadamard(grams, n))
                grams[n] = _gram(factors[names[n]])
            kr = factors[names[others[0]]]
            for m in others[1:]:
                kr = (kr[:, None, :] * factors[names[m]][None, :, :]).reshape((-1, self.rank))
            kr = kr.reshape((*(sizes[m] for m in others), self.rank))
            mttkrp = contract(eq_pivot, target, kr, ops=ops)
            v = _hadamard(grams, k)
            factors[names[k]] = mttkrp @ ops.pinv_hermitian(v)
            grams[k] = _gram(factors[names[k]])
            inner, norm2 = float((mttkrp * factors[names[k]]).sum()), float((v * grams[k]).sum())
            new_err = math.sqrt(max(ref * ref - 2 * inner + norm2, 0.0)) / ref
            if new_err < _als._GRAM_FLOOR or not math.isfinite(new_err):
                new_err = _als._plain_error(self, dense, factors, ref, ops)
            done = abs(err - new_err) < tol or new_err < tol
            err = new_err
            if done:
                break
        return factors, err

    def _sweep_order(self) -> list[str]:
        """Factor names in the order a sweep updates them: the largest mode (the last of equals) last, as the pivot.

        The others keep their order (stack modes first): the SVD start of the small stack modes, which the
        first update replaces unread, is the least informative one.
        """
        sizes = [self.sizes[self.factor_indices[n][0]] for n in self.factor_names]
        k = max(range(len(sizes)), key=lambda m: (sizes[m], m))
        return [n for m, n in enumerate(self.factor_names) if m != k] + [self.factor_names[k]]

    def _svd_init(self, dense, ops, seed, skip=None):
        """Leading left singular vectors of each unfolding, scaled; ``skip`` (a name) keeps its random draw."""
        target = dense.reshape(tuple(self.sizes[c] for c in self._output))
        padding = self.random(seed=seed, backend=ops.name, dtype=ops.dtype_of(dense))
        factors = {}
        for name, term in self.factor_indices.items():
            if name == skip:
                factors[name] = _als.convert(padding[name], dense, ops)
                continue
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


def _gram(f):
    """``fᵀ f`` (``R × R``)."""
    return f.T @ f


def _hadamard(grams, skip):
    """Hadamard product of every Gram matrix but ``grams[skip]``: the CP normal-equations matrix of that mode."""
    out = None
    for m, g in grams.items():
        if m != skip:
            out = g if out is None else out * g
    return out
