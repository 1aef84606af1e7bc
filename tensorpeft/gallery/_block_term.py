r"""Block-term decomposition with blocks of different structures: a Tucker-2 block plus a CP block.

A block-term decomposition writes a tensor as a sum of low-multilinear-rank blocks. With one shared einsum
letter for the block index, every block must have the same structure; :class:`tensorpeft.decomp.Sum` lifts
that limit. Here the stacked update of :math:`L` slices is a Tucker-2 block (shared bases, a core per slice)
plus a CP block (rank-one components weighted per slice):

.. math::

   \Delta W_l = A\, G_l\, B^\top + \sum_{k=1}^{r} c_l[k]\; u_k v_k^\top ,

``decomp.Sum(decomp.Tucker2(stack, d_out, d_in, rank=r), decomp.CP(stack, d_out, d_in, rank=r))``. Every
slice has rank at most :math:`2r` (:math:`r` from each block).

Parameters, for one stack mode of :math:`L` slices: Tucker-2 :math:`r (d_\text{out} + d_\text{in}) + L r^2`,
CP :math:`r (L + d_\text{out} + d_\text{in})`; together :math:`r (2 d_\text{out} + 2 d_\text{in} + L + L r)`
(with several stack modes, :math:`L` is their product in the Tucker-2 count and their sum in the CP count).
MiniLM's 6 query projections (384 × 384) at ``rank=8``: :math:`8 (4 \cdot 384 + 6 + 48) = 12{,}720`.

The papers: Lieven De Lathauwer (2008), "Decompositions of a Higher-Order Tensor in Block Terms — Part II:
Definitions and Uniqueness", SIAM J. Matrix Anal. Appl. 30(3); the blocks as adapters: Bershatsky et al.
(2024), "LoTR: Low Tensor Rank Weight Adaptation", arXiv:2402.01376 (Tucker-2) and Hounie et al. (2024),
"LoRTA: Low Rank Tensor Adaptation of Large Language Models", arXiv:2410.04060 (CP).
"""

from __future__ import annotations

from .. import decomp
from ._common import check_args

__all__ = ["block_term"]


def block_term(stack, out_features, in_features, rank):
    r"""Tucker-2 block + CP block, rank ``rank``: :math:`\Delta W_l = A G_l B^\top + \sum_k c_l[k] u_k v_k^\top`.

    Parameters
    ----------
    stack : tuple of int
        Sizes of the stack modes (``(6,)`` for six layers, ``()`` for one matrix).
    out_features, in_features : int
        Shape of one slice.
    rank : int
        ``r``: the Tucker-2 ranks ``(r, r)`` and the CP rank.

    Returns
    -------
    tensorpeft.decomp.Sum
        Factors ``t0_A``, ``t0_G``, ``t0_B`` (Tucker-2) and ``t1_*`` (CP: ``stack0``..., ``out``, ``in``).

    Raises
    ------
    TypeError, ValueError
        Naming the argument, as :class:`~tensorpeft.decomp.Tucker2` and :class:`~tensorpeft.decomp.CP` do.

    Examples
    --------
    >>> from tensorpeft.gallery._block_term import block_term
    >>> f = block_term((6,), 384, 384, rank=8)
    >>> f.num_params, 8 * (4 * 384 + 6 + 6 * 8)
    (12720, 12720)
    >>> f.slice_rank
    16
    """
    stack, out_features, in_features = check_args(stack, out_features, in_features)
    return decomp.Sum(
        decomp.Tucker2(stack, out_features, in_features, rank=rank),
        decomp.CP(stack, out_features, in_features, rank=rank),
    )
