r"""Tensor ring (TR) of each layer's reshaped update: a closed chain of three-index cores.

The output features are split into modes :math:`d_\text{out} = n_1 \cdots n_p` and the input features into
:math:`d_\text{in} = n_{p+1} \cdots n_K` (row-major); each slice, seen as a :math:`K`-way tensor, is the trace of a
product of :math:`K` cores :math:`G_{l,k}` of shape :math:`r_k \times n_k \times r_{k+1}`, the last bond closing the
ring (:math:`r_{K+1} = r_1`):

.. math::

   \Delta W_l[(n_1 \ldots n_p), (n_{p+1} \ldots n_K)]
   = \operatorname{Tr}\big(G_{l,1}[n_1]\, G_{l,2}[n_2] \cdots G_{l,K}[n_K]\big).

Unlike a tensor train (:class:`tensorpeft.decomp.TensorTrain`) no core is an end: every bond is an :math:`r \times r`
sum, and the cores can be cyclically shifted without changing :math:`\Delta W`. For 384 × 384 the modes are
:math:`(8, 8, 6)` on each side and the network is ``"Sgah,Shbi,Sicj,Sjdk,Skel,Slfg->Sabcdef"`` (``S`` the stack,
``abc`` the output modes, ``def`` the input modes, ``g`` ... ``l`` the ring's bonds).

Parameters: :math:`L \sum_k r_k\, n_k\, r_{k+1}` for :math:`L` slices; at one rank :math:`r`,
:math:`L r^2 \sum_k n_k`. MiniLM's 6 query projections at ``rank=4``: :math:`6 \cdot 16 \cdot (8 + 8 + 6 + 8 + 8 + 6)
= 4{,}224`.

The papers: Qibin Zhao, Guoxu Zhou, Shengli Xie, Liqing Zhang and Andrzej Cichocki (2016), "Tensor Ring
Decomposition", arXiv:1606.05535; for network weights, Wenqi Wang, Yifan Sun, Brian Eriksson, Wenlin Wang and
Vaneet Aggarwal (2018), "Wide Compression: Tensor Ring Nets", CVPR 2018.
"""

from __future__ import annotations

from .. import decomp
from ..decomp import balanced_modes
from ._common import Letters, check_args, check_bonds, stack_letters

__all__ = ["tensor_ring"]


def _modes(n: int) -> tuple[int, ...]:
    """At least two modes where ``n`` has two prime factors (a ring of one core per side is only a matrix product)."""
    return balanced_modes(n, max(2, len(balanced_modes(n))))


def tensor_ring(stack, out_features, in_features, rank):
    r"""Tensor ring per slice: ΔW_l reshaped to its feature modes is Tr(G_1[n_1] ... G_K[n_K]).

    Parameters
    ----------
    stack : tuple of int
        Sizes of the stack modes; every slice has its own ring.
    out_features, in_features : int
        Shape of one slice, each split into modes by :func:`tensorpeft.decomp.balanced_modes` (384 →
        (8, 8, 6), 768 → (12, 8, 8), and at least two modes where the size has two prime factors: 12 → (4, 3);
        a prime size stays one mode). The ring has one core per mode, the output
        modes first.
    rank : int or sequence of int
        The ring's bonds: one int for all :math:`K`, or :math:`K` ints, ``rank[k]`` the bond entering core
        ``k + 1`` (``rank[0]`` closes the ring, between the last core and the first).

    Returns
    -------
    tensorpeft.decomp.TensorNetwork
        Factors ``G1`` ... ``GK``, ``Gk`` of shape ``(*stack, r_k, n_k, r_{k+1})``; the last core starts at
        zero.

    Raises
    ------
    TypeError, ValueError
        Naming `rank` when it is not a positive int or a sequence of :math:`K` of them, and `stack`,
        `out_features` or `in_features` when malformed.

    Notes
    -----
    :math:`\Delta W_l = \operatorname{Tr}(G_{l,1}[n_1] \cdots G_{l,K}[n_K])`; parameters
    :math:`L \sum_k r_k n_k r_{k+1}` (:math:`r_{K+1} = r_1`). :meth:`~tensorpeft.decomp.TensorNetwork.random`
    gives each core the generic scale, :math:`1/\sqrt{n_k}`: every entry of ΔW then has variance
    :math:`\prod_k r_k / (d_\text{out} d_\text{in})`, :math:`r^K` times a unit-scale layer's (a large gradient on the
    zero core at the start of training; Adam does not mind, plain SGD wants a smaller learning rate).

    References
    ----------
    Zhao, Zhou, Xie, Zhang and Cichocki (2016), "Tensor Ring Decomposition", arXiv:1606.05535. Wang, Sun,
    Eriksson, Wang and Aggarwal (2018), "Wide Compression: Tensor Ring Nets", CVPR 2018.

    Examples
    --------
    >>> import numpy as np
    >>> from tensorpeft.gallery import tensor_ring
    >>> f = tensor_ring((6,), 384, 384, rank=4)
    >>> f.equation
    'Sgah,Shbi,Sicj,Sjdk,Skel,Slfg->Sabcdef'
    >>> f.num_params, 6 * 4**2 * (8 + 8 + 6 + 8 + 8 + 6)
    (4224, 4224)

    A 6 × 4 slice has modes (3, 2) and (2, 2); its entry at row 5 = (2, 1) and column 3 = (1, 1) is a trace:

    >>> small = tensor_ring((), 6, 4, rank=(2, 3, 2, 3))
    >>> small.factor_shapes
    {'G1': (2, 3, 3), 'G2': (3, 2, 2), 'G3': (2, 2, 3), 'G4': (3, 2, 2)}
    >>> G1, G2, G3, G4 = small.random(seed=0).values()
    >>> entry = np.trace(G1[:, 2, :] @ G2[:, 1, :] @ G3[:, 1, :] @ G4[:, 1, :])
    >>> bool(np.isclose(small.to_dense(dict(G1=G1, G2=G2, G3=G3, G4=G4))[5, 3], entry))
    True
    """
    stack, out_features, in_features = check_args(stack, out_features, in_features)
    outs, ins = _modes(out_features), _modes(in_features)
    modes, p = (*outs, *ins), len(outs)
    k = len(modes)
    bonds = check_bonds(rank, k, "one per bond of the ring")
    s = stack_letters(stack)
    letters = Letters(avoid=s)
    mode_letters, bond_letters = letters.take(k), letters.take(k)
    terms = [f"{s}{bond_letters[j]}{mode_letters[j]}{bond_letters[(j + 1) % k]}" for j in range(k)]
    sizes = {
        **dict(zip(s, stack, strict=True)),
        **dict(zip(mode_letters, modes, strict=True)),
        **dict(zip(bond_letters, bonds, strict=True)),
    }
    return decomp.TensorNetwork(
        f"{','.join(terms)}->{s}{mode_letters}",
        sizes,
        stack_indices=s,
        out_indices=mode_letters[:p],
        in_indices=mode_letters[p:],
        factor_names=tuple(f"G{j + 1}" for j in range(k)),
    )
