r"""FacT-TT and FacT-TK: factors shared by every slice of the stack, a small core per slice.

FacT (Factor-Tuning) stacks the updates of a whole ViT into one tensor and decomposes it with factors
:math:`V` (:math:`d_\text{out} \times r`) and :math:`U` (:math:`r \times d_\text{in}`) shared across all slices
(the paper's ``FacTv`` and ``FacTu``), and a per-slice core:

.. math::

   \text{FacT-TT:}\quad \Delta W_l = V\, \Sigma_l\, U, \qquad
   \text{FacT-TK:}\quad \Delta W_l = V\, \big(C \times_3 P_l\big)\, U
   = \sum_{a, b, k} V[o, a]\, C[a, b, k]\, P[l, k]\, U[b, i],

with :math:`\Sigma_l` (:math:`r \times r`) free per slice (a tensor train of the stacked update with the slice
index on the middle core), or mixed from a shared core :math:`C` (:math:`r \times r \times k`) by the row
:math:`P_l` (a Tucker decomposition of the stacked update). The einsum networks are ``"oa,Sab,bi->Soi"`` and
``"oa,abk,Sk,bi->Soi"``; a stack of several modes (``(layers, kinds)``) indexes :math:`\Sigma` and :math:`P` by
all of them.

Parameters, for :math:`L` slices: FacT-TT :math:`(d_\text{out} + d_\text{in}) r + L r^2`; FacT-TK
:math:`(d_\text{out} + d_\text{in}) r + r^2 k + L k` (the paper's :math:`2dr + 144r + r^3` at :math:`k = r`).
The paper's ViT-B case, 144 slices of 768 × 768 at :math:`r = 4`: FacT-TT :math:`2 \cdot 768 \cdot 4 + 144 \cdot 16
= 8{,}448`; FacT-TK at :math:`r = k = 8`: :math:`12{,}288 + 512 + 1{,}152 = 13{,}952`.

FacT-TT is Tucker-2 (:class:`tensorpeft.decomp.Tucker2`, LoTR) under another name: written here as a network it
shows the equation, and a test checks that the two give the same update.

The paper: Shibo Jie and Zhi-Hong Deng (2023), "FacT: Factor-Tuning for Lightweight Adaptation on Vision
Transformer", AAAI 2023, arXiv:2212.03145 (code: JieShibo/PETL-ViT).
"""

from __future__ import annotations

from .. import decomp
from ..decomp import validate
from ._common import check_args, stack_letters

__all__ = ["fact_tk", "fact_tt"]


def fact_tt(stack, out_features, in_features, rank):
    r"""FacT-TT: ΔW_l = V Σ_l U, shared V and U, one r × r core per slice.

    Parameters
    ----------
    stack : tuple of int
        Sizes of the stack modes; every slice of all of them shares ``V`` and ``U``.
    out_features, in_features : int
        Shape of one slice.
    rank : int
        :math:`r`, the width of the shared factors.

    Returns
    -------
    tensorpeft.decomp.TensorNetwork
        Factors ``V`` ``(d_out, r)``, ``Sigma`` ``(*stack, r, r)``, ``U`` ``(r, d_in)``. ``V`` starts at zero,
        as the paper's ``FacTv``.

    Raises
    ------
    TypeError, ValueError
        Naming `rank`, `stack`, `out_features` or `in_features` when one is not a positive integer (a tuple
        of them for `stack`).

    Notes
    -----
    :math:`\Delta W_l = V \Sigma_l U`; parameters :math:`(d_\text{out} + d_\text{in}) r + L r^2`. The factored
    apply is :math:`x \mapsto V(\Sigma_l (U x))`: :math:`2 r (d_\text{in} + r + d_\text{out})` FLOPs per token.

    References
    ----------
    Jie and Deng (2023), "FacT: Factor-Tuning for Lightweight Adaptation on Vision Transformer", AAAI 2023,
    arXiv:2212.03145.

    Examples
    --------
    >>> from tensorpeft.gallery import fact_tt
    >>> f = fact_tt((144,), 768, 768, rank=4)
    >>> f.factor_shapes
    {'V': (768, 4), 'Sigma': (144, 4, 4), 'U': (4, 768)}
    >>> f.num_params, 2 * 768 * 4 + 144 * 4**2
    (8448, 8448)
    """
    stack, out_features, in_features = check_args(stack, out_features, in_features)
    r = validate.check_size(rank, "rank", validate.MAX_RANK)
    s = stack_letters(stack)
    return decomp.TensorNetwork(
        f"oa,{s}ab,bi->{s}oi",
        {**dict(zip(s, stack, strict=True)), "o": out_features, "i": in_features, "a": r, "b": r},
        stack_indices=s,
        out_indices="o",
        in_indices="i",
        factor_names=("V", "Sigma", "U"),
        zero_factor="V",
    )


def fact_tk(stack, out_features, in_features, rank):
    r"""FacT-TK: ΔW_l = V (C ×₃ P_l) U, shared V, U and core C, one row of P per slice.

    Parameters
    ----------
    stack : tuple of int
        Sizes of the stack modes; ``P`` has one row per slice, ``(*stack, k)``.
    out_features, in_features : int
        Shape of one slice.
    rank : int or sequence of 2 int
        ``r`` (then :math:`k = r`, as in the paper) or ``(r, k)``: the width of ``V`` and ``U``, and the
        number of columns of ``P``.

    Returns
    -------
    tensorpeft.decomp.TensorNetwork
        Factors ``V`` ``(d_out, r)``, ``C`` ``(r, r, k)``, ``P`` ``(*stack, k)``, ``U`` ``(r, d_in)``; ``V``
        starts at zero.

    Raises
    ------
    TypeError, ValueError
        Naming `rank` when it is not a positive int or a pair of them; naming `stack`, `out_features` or
        `in_features` when malformed.

    Notes
    -----
    :math:`\Delta W_l[o, i] = \sum_{a, b, k} V[o, a] C[a, b, k] P[l, k] U[b, i]`; parameters
    :math:`(d_\text{out} + d_\text{in}) r + r^2 k + L k`. The apply folds :math:`P_l` into :math:`C` (an
    :math:`r \times r` matrix per slice), then runs as FacT-TT.

    References
    ----------
    Jie and Deng (2023), "FacT: Factor-Tuning for Lightweight Adaptation on Vision Transformer", AAAI 2023,
    arXiv:2212.03145.

    Examples
    --------
    >>> from tensorpeft.gallery import fact_tk
    >>> f = fact_tk((144,), 768, 768, rank=8)
    >>> f.factor_shapes
    {'V': (768, 8), 'C': (8, 8, 8), 'P': (144, 8), 'U': (8, 768)}
    >>> f.num_params, 2 * 768 * 8 + 144 * 8 + 8**3
    (13952, 13952)
    >>> fact_tk((6, 2), 384, 384, rank=(4, 3)).factor_shapes["P"]
    (6, 2, 3)
    """
    stack, out_features, in_features = check_args(stack, out_features, in_features)
    rank = validate.check_int_or_tuple(
        rank,
        "rank",
        check=lambda v, name: validate.check_size(v, name, validate.MAX_RANK),
        length=2,
        expected="a pair (r, k)",
    )
    r, k = (rank, rank) if isinstance(rank, int) else rank
    s = stack_letters(stack)
    return decomp.TensorNetwork(
        f"oa,abk,{s}k,bi->{s}oi",
        {**dict(zip(s, stack, strict=True)), "o": out_features, "i": in_features, "a": r, "b": r, "k": k},
        stack_indices=s,
        out_indices="o",
        in_indices="i",
        factor_names=("V", "C", "P", "U"),
        zero_factor="V",
    )
