r"""MPO / TT-matrix: a matrix product operator per layer, each core carrying one output and one input mode.

The output features are split into modes :math:`d_\text{out} = o_1 \cdots o_n` and the input features into as many,
:math:`d_\text{in} = i_1 \cdots i_n` (row-major); each slice is a chain of :math:`n` cores
:math:`G_{l,k}` of shape :math:`r_{k-1} \times o_k \times i_k \times r_k` (:math:`r_0 = r_n = 1`, so the end
cores have three indices):

.. math::

   \Delta W_l[(o_1 \ldots o_n), (i_1 \ldots i_n)]
   = G_{l,1}[o_1, i_1]\; G_{l,2}[o_2, i_2] \cdots G_{l,n}[o_n, i_n],

a product of :math:`r_{k-1} \times r_k` matrices. For 384 × 384 the modes are :math:`(8, 8, 6)` on both sides
and the network is ``"Sadg,Sgbeh,Shcf->Sabcdef"`` (``S`` the stack, ``abc`` the output modes, ``def`` the input
modes, ``g`` and ``h`` the bonds). This differs from :class:`tensorpeft.decomp.TensorTrain` (TT-LoRA), whose train
runs over the input modes and then the output modes, one feature mode per core.

Parameters: :math:`L \sum_k r_{k-1}\, o_k\, i_k\, r_k` for :math:`L` slices. MiniLM's 6 query projections at
``rank=4``: :math:`6 (64 \cdot 4 + 4 \cdot 64 \cdot 4 + 4 \cdot 36) = 6 \cdot 1{,}424 = 8{,}544`.

The papers: Alexander Novikov, Dmitry Podoprikhin, Anton Osokin and Dmitry Vetrov (2015), "Tensorizing Neural
Networks", NeurIPS 2015, arXiv:1509.06569 (TT-matrix layers); as a fine-tuning method, Peiyu Liu, Ze-Feng Gao,
Wayne Xin Zhao, Zhi-Yuan Xie, Zhong-Yi Lu and Ji-Rong Wen (2021), "Enabling Lightweight Fine-tuning for
Pre-trained Language Model Compression based on Matrix Product Operators", ACL 2021, arXiv:2106.02205.
"""

from __future__ import annotations

import math
import numbers

from .. import decomp
from ..decomp import balanced_modes
from ._common import Letters, check_args, check_bonds, feature_modes, stack_letters

__all__ = ["mpo"]


def mpo(stack, out_features, in_features, rank):
    r"""MPO (TT-matrix) per slice: a chain of cores, core k carrying output mode o_k and input mode i_k.

    Parameters
    ----------
    stack : tuple of int
        Sizes of the stack modes; every slice has its own chain.
    out_features, in_features : int
        Shape of one slice. Both are split into :math:`n` modes by
        :func:`tensorpeft.decomp.balanced_modes` (:math:`n` the larger of their default numbers of modes, the
        other side padded with modes of size 1): 384 → (8, 8, 6), 768 → (12, 8, 8).
    rank : int or sequence of int
        The bonds :math:`r_1, \ldots, r_{n-1}`: one int for every bond (each capped at the largest useful
        size, :math:`\min(\prod_{j \le k} o_j i_j, \prod_{j > k} o_j i_j)`), or :math:`n - 1` ints, each at
        most that bound.

    Returns
    -------
    tensorpeft.decomp.TensorNetwork
        Factors ``G1`` ... ``Gn``, ``Gk`` of shape ``(*stack, r_{k-1}, o_k, i_k, r_k)`` (no bond axis at the
        ends); the last core starts at zero.

    Raises
    ------
    ValueError
        If neither feature size has two modes (both prime or 1: the chain would be a single dense core), or an
        entry of `rank` exceeds its bound, or `rank` has the wrong number of entries.
    TypeError, ValueError
        Naming `rank`, `stack`, `out_features` or `in_features` when one is not a positive integer (a tuple of
        them for `stack` and `rank`).

    Notes
    -----
    :math:`\Delta W_l = G_{l,1}[o_1, i_1] \cdots G_{l,n}[o_n, i_n]`; parameters
    :math:`L \sum_k r_{k-1} o_k i_k r_k` with :math:`r_0 = r_n = 1`.

    References
    ----------
    Novikov, Podoprikhin, Osokin and Vetrov (2015), "Tensorizing Neural Networks", NeurIPS 2015,
    arXiv:1509.06569. Liu, Gao, Zhao, Xie, Lu and Wen (2021), "Enabling Lightweight Fine-tuning for Pre-trained
    Language Model Compression based on Matrix Product Operators", ACL 2021, arXiv:2106.02205.

    Examples
    --------
    >>> from tensorpeft.gallery import mpo
    >>> f = mpo((6,), 384, 384, rank=4)
    >>> f.equation
    'Sadg,Sgbeh,Shcf->Sabcdef'
    >>> f.factor_shapes
    {'G1': (6, 8, 8, 4), 'G2': (6, 4, 8, 8, 4), 'G3': (6, 4, 6, 6)}
    >>> f.num_params, 6 * (64 * 4 + 4 * 64 * 4 + 4 * 36)
    (8544, 8544)
    >>> mpo((), 7, 5, rank=2)
    Traceback (most recent call last):
    ...
    ValueError: `out_features`=7 and `in_features`=5 do not factor: neither splits into 2 or more modes, ...
    """
    stack, out_features, in_features = check_args(stack, out_features, in_features)
    n = max(len(balanced_modes(out_features)), len(balanced_modes(in_features)))
    if n < 2:
        n = max(len(balanced_modes(out_features, 2)), len(balanced_modes(in_features, 2)))
    if n < 2:
        raise ValueError(
            f"`out_features`={out_features} and `in_features`={in_features} do not factor: neither splits into 2 "
            "or more modes, so an MPO of them is one dense core; use LoRA or a dense update."
        )
    outs, ins = feature_modes(out_features, n), feature_modes(in_features, n)
    sites = [o * i for o, i in zip(outs, ins, strict=True)]
    bounds = [min(math.prod(sites[: k + 1]), math.prod(sites[k + 1 :])) for k in range(n - 1)]
    bonds = check_bonds(rank, n - 1, "one per bond between the cores")
    if isinstance(rank, numbers.Integral):  # one int: every bond, capped
        bonds = tuple(min(r, b) for r, b in zip(bonds, bounds, strict=True))
    for k, (r, b) in enumerate(zip(bonds, bounds, strict=True)):
        if r > b:
            raise ValueError(
                f"`rank[{k}]`={r} exceeds {b}, the largest useful bond between cores {k + 1} and {k + 2} of modes "
                f"out {outs}, in {ins} (the smaller side's number of entries); it must be <= {b}."
            )
    s = stack_letters(stack)
    letters = Letters(avoid=s)
    o_letters, i_letters, b_letters = letters.take(n), letters.take(n), letters.take(n - 1)
    terms = []
    for k in range(n):
        left = b_letters[k - 1] if k > 0 else ""
        right = b_letters[k] if k < n - 1 else ""
        terms.append(f"{s}{left}{o_letters[k]}{i_letters[k]}{right}")
    sizes = {
        **dict(zip(s, stack, strict=True)),
        **dict(zip(o_letters, outs, strict=True)),
        **dict(zip(i_letters, ins, strict=True)),
        **dict(zip(b_letters, bonds, strict=True)),
    }
    return decomp.TensorNetwork(
        f"{','.join(terms)}->{s}{o_letters}{i_letters}",
        sizes,
        stack_indices=s,
        out_indices=o_letters,
        in_indices=i_letters,
        factor_names=tuple(f"G{k + 1}" for k in range(n)),
    )
