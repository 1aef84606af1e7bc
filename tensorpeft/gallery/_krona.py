r"""KronA: a Kronecker-product update per layer, :math:`\Delta W_l = A_l \otimes B_l`.

With the output features split as :math:`d_\text{out} = a\,b` and the input features as :math:`d_\text{in} = c\,d`
(row-major, as :func:`numpy.reshape`), each slice is the Kronecker product of a small :math:`a \times c` matrix and
a :math:`b \times d` one,

.. math::

   \Delta W_l[(p, q), (u, v)] = A_l[p, u]\; B_l[q, v], \qquad \Delta W_l = A_l \otimes B_l,

the einsum network ``"Spu,Sqv->Spquv"`` (``S`` the stack). Its rank is :math:`\operatorname{rank} A_l \cdot
\operatorname{rank} B_l`, up to :math:`\min(a, c) \min(b, d)`: a full-rank update from very few parameters.

Parameters: :math:`L\,(a c + b d)` for a stack of :math:`L` slices. MiniLM's 6 query projections (384 × 384) at
``rank=16`` (:math:`A_l` 16 × 16, :math:`B_l` 24 × 24): :math:`6 (256 + 576) = 4{,}992`, for an update of rank up
to 384 (LoRA pays 4,608 per unit of rank there).

The paper: Ali Edalati, Marzieh Tahaei, Ivan Kobyzev, Vahid Partovi Nia, James J. Clark and Mehdi Rezagholizadeh
(2022), "KronA: Parameter Efficient Tuning with Kronecker Adapter", arXiv:2212.10650.
"""

from __future__ import annotations

import math

from .. import decomp
from ..decomp import validate
from ._common import check_args, stack_letters

__all__ = ["krona"]


def _split(features: int, rows: int, rank_name: str, features_name: str) -> int:
    if features % rows:
        small = [k for k in range(1, math.isqrt(features) + 1) if features % k == 0]
        divisors = {*small, *(features // k for k in small)}
        below, above = max(k for k in divisors if k < rows), min((k for k in divisors if k > rows), default=None)
        near = f"{below} or {above}" if above is not None else f"{below}"
        raise ValueError(
            f"`{rank_name}`={rows} must divide `{features_name}`={features} (A ⊗ B splits the features as "
            f"{rows} × {features / rows:g}); the nearest divisors of {features} are {near}."
        )
    return features // rows


def krona(stack, out_features, in_features, rank):
    r"""KronA: ΔW_l = A_l ⊗ B_l, a Kronecker product per slice of the stack.

    Parameters
    ----------
    stack : tuple of int
        Sizes of the stack modes (``(6,)`` for six layers, ``()`` for one matrix).
    out_features, in_features : int
        Shape of one slice, :math:`d_\text{out} \times d_\text{in}`.
    rank : int or sequence of 2 int
        The shape :math:`a \times c` of :math:`A_l`: ``rank=k`` means :math:`k \times k`, ``rank=(a, c)`` any
        shape. ``a`` must divide ``out_features`` and ``c`` ``in_features``; :math:`B_l` takes the rest,
        :math:`(d_\text{out}/a) \times (d_\text{in}/c)`. The balanced choice is the divisor nearest
        :math:`\sqrt{d}`.

    Returns
    -------
    tensorpeft.decomp.TensorNetwork
        Factors ``A`` ``(*stack, a, c)`` and ``B`` ``(*stack, d_out/a, d_in/c)``; ``B`` starts at zero.

    Raises
    ------
    TypeError, ValueError
        Naming `rank` when it is not a positive int or a pair of them, or does not divide the features (the
        message lists the nearest divisors); naming `stack`, `out_features` or `in_features` when malformed.

    Notes
    -----
    :math:`\Delta W_l[(p, q), (u, v)] = A_l[p, u] B_l[q, v]`; parameters :math:`L (a c + b d)` with
    :math:`b = d_\text{out}/a`, :math:`d = d_\text{in}/c`, :math:`L` the number of slices. The factored apply
    reshapes ``x`` to :math:`(c, d)` and multiplies by :math:`B_l` and :math:`A_l` in turn (the einsum path
    opt_einsum picks): :math:`2 (d_\text{in} b + a\,b\,c)` FLOPs per token, against
    :math:`2 d_\text{out} d_\text{in}` for the dense slice.

    References
    ----------
    Edalati, Tahaei, Kobyzev, Partovi Nia, Clark and Rezagholizadeh (2022), "KronA: Parameter Efficient Tuning
    with Kronecker Adapter", arXiv:2212.10650.

    Examples
    --------
    >>> import numpy as np
    >>> from tensorpeft.gallery import krona
    >>> f = krona((6,), 384, 384, rank=16)
    >>> f.factor_shapes
    {'A': (6, 16, 16), 'B': (6, 24, 24)}
    >>> f.num_params, 6 * (16 * 16 + 24 * 24)
    (4992, 4992)
    >>> small = krona((2,), 6, 8, rank=(2, 4))
    >>> fac = small.random(seed=0)
    >>> bool(np.allclose(small.to_dense(fac)[1], np.kron(fac["A"][1], fac["B"][1])))
    True
    >>> krona((2,), 6, 8, rank=4)
    Traceback (most recent call last):
    ...
    ValueError: `rank`=4 must divide `out_features`=6 (A ⊗ B splits the features as 4 × 1.5); ... are 3 or 6.
    """
    stack, out_features, in_features = check_args(stack, out_features, in_features)
    rank = validate.check_int_or_tuple(rank, "rank", length=2, expected="a pair (rows, columns) of A")
    a, c = (rank, rank) if isinstance(rank, int) else rank
    name = "rank" if isinstance(rank, int) else "rank[0]"
    b = _split(out_features, a, name, "out_features")
    d = _split(in_features, c, "rank" if isinstance(rank, int) else "rank[1]", "in_features")
    s = stack_letters(stack)
    return decomp.TensorNetwork(
        f"{s}pu,{s}qv->{s}pquv",
        {**dict(zip(s, stack, strict=True)), "p": a, "q": b, "u": c, "v": d},
        stack_indices=s,
        out_indices="pq",
        in_indices="uv",
        factor_names=("A", "B"),
        zero_factor="B",
    )
