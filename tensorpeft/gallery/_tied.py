r"""A tied basis on both sides: :math:`\Delta W_l = U\, \Sigma_l\, U^\top`, for square layers.

One basis :math:`U` (:math:`d \times r`) serves as the output and the input factor of every slice, and each slice
has its own :math:`r \times r` core:

.. math::

   \Delta W_l = U\, \Sigma_l\, U^\top, \qquad \Delta W_l[o, i] = \sum_{a, b} U[o, a]\; \Sigma_l[a, b]\; U[i, b],

the einsum network ``"oa,Sab,ib->Soi"`` with the factor names ``("U", "Sigma", "U")``: the repeated name *ties*
the two operands (one array, counted once, its gradient the sum over both uses; see
:ref:`tied-factors`). Every slice maps the subspace spanned by :math:`U` into itself (rank at most :math:`r`).

Parameters: :math:`d r + L r^2` for :math:`L` slices. MiniLM's 6 query projections (384 × 384) at :math:`r = 8`:
:math:`384 \cdot 8 + 6 \cdot 64 = 3{,}456`, against 6,528 for Tucker-2 / FacT-TT at the same rank (which has a
second basis) and 36,864 for LoRA.

The paper: no paper proposes this exact tying; it is Tucker-2 across layers (LoTR: Daniel Bershatsky, Daria
Cherniuk, Talgat Daulbaev, Aleksandr Mikhalev and Ivan Oseledets (2024), "LoTR: Low Tensor Rank Weight
Adaptation", arXiv:2402.01376) with its two shared bases made one, the form of a symmetric eigen-decomposition
:math:`U \Sigma U^\top` (symmetric when every :math:`\Sigma_l` is).
"""

from __future__ import annotations

from .. import decomp
from ..decomp import validate
from ._common import check_args, stack_letters

__all__ = ["tied"]


def tied(stack, out_features, in_features, rank):
    r"""ΔW_l = U Σ_l Uᵀ: one basis U tied on both sides, one r × r core per slice (square layers).

    Parameters
    ----------
    stack : tuple of int
        Sizes of the stack modes; every slice shares ``U``.
    out_features, in_features : int
        Shape of one slice; they must be equal (``U`` is both sides' basis).
    rank : int
        :math:`r`, the number of columns of ``U``, at most the features.

    Returns
    -------
    tensorpeft.decomp.TensorNetwork
        Factors ``U`` ``(d, r)`` (tied: on two operands) and ``Sigma`` ``(*stack, r, r)``; ``Sigma`` starts at
        zero (a tied factor cannot: ΔW is quadratic in ``U``).

    Raises
    ------
    ValueError
        If ``out_features != in_features``, or `rank` exceeds them.
    TypeError, ValueError
        Naming `rank`, `stack`, `out_features` or `in_features` when one is not a positive integer.

    Notes
    -----
    :math:`\Delta W_l = U \Sigma_l U^\top`; parameters :math:`d r + L r^2`. The factored apply is
    :math:`x \mapsto U(\Sigma_l (U^\top x))`, :math:`2 r (2 d + r)` FLOPs per token. ``fit`` updates ``Sigma``
    by least squares and ``U`` by a Levenberg-Marquardt step (ΔW is not linear in a tied factor), which solves
    a dense :math:`d r \times d r` system: fine at small :math:`d r`, slow at thousands of entries (an
    ``init="svd"`` start of a large model pays it).

    References
    ----------
    Bershatsky, Cherniuk, Daulbaev, Mikhalev and Oseledets (2024), "LoTR: Low Tensor Rank Weight Adaptation",
    arXiv:2402.01376 (Tucker-2 across layers, of which this is the tied variant).

    Examples
    --------
    >>> import numpy as np
    >>> from tensorpeft.gallery import tied
    >>> f = tied((6,), 384, 384, rank=8)
    >>> f.factor_shapes, f.tied_factors
    ({'U': (384, 8), 'Sigma': (6, 8, 8)}, {'U': 2})
    >>> f.num_params, 384 * 8 + 6 * 8**2
    (3456, 3456)
    >>> small = tied((3,), 5, 5, rank=2)
    >>> fac = small.random(seed=0)
    >>> U, S = fac["U"], fac["Sigma"]
    >>> bool(np.allclose(small.to_dense(fac)[1], U @ S[1] @ U.T))
    True
    >>> tied((6,), 384, 1536, rank=8)
    Traceback (most recent call last):
    ...
    ValueError: `out_features`=384 and `in_features`=1536 differ: U Σ_l Uᵀ uses one basis U on both sides, ...
    """
    stack, out_features, in_features = check_args(stack, out_features, in_features)
    if out_features != in_features:
        raise ValueError(
            f"`out_features`={out_features} and `in_features`={in_features} differ: U Σ_l Uᵀ uses one basis U on "
            "both sides, so it needs square layers; target only the square ones (q, k, v, o of most transformers)."
        )
    r = validate.check_size(rank, "rank", validate.MAX_RANK)
    if r > out_features:
        raise ValueError(f"`rank`={r} exceeds `out_features`={out_features}: the basis U (d × r) needs r <= d.")
    s = stack_letters(stack)
    return decomp.TensorNetwork(
        f"oa,{s}ab,ib->{s}oi",
        {**dict(zip(s, stack, strict=True)), "o": out_features, "i": in_features, "a": r, "b": r},
        stack_indices=s,
        out_indices="o",
        in_indices="i",
        factor_names=("U", "Sigma", "U"),
        zero_factor="Sigma",
    )
