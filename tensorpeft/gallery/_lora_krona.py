r"""LoRA plus KronA: low rank plus a Kronecker product per layer, :math:`\Delta W_l = B_l A_l + K_l \otimes M_l`.

A low-rank term captures a few strong directions; a Kronecker term :math:`K_l \otimes M_l` (KronA) gives a
full-rank update from few parameters. Their sum is not one einsum product, so it is a
:class:`tensorpeft.decomp.Sum` of ``decomp.LoRA(stack, d_out, d_in, rank=r)`` and the KronA network
``"Spu,Sqv->Spquv"`` (``S`` the stack, :math:`d_\text{out} = a b`, :math:`d_\text{in} = c d`):

.. math::

   \Delta W_l[(p, q), (u, v)] = \sum_{k=1}^{r} B_l[(p, q), k]\, A_l[k, (u, v)] + K_l[p, u]\, M_l[q, v].

:math:`a` is the divisor of :math:`d_\text{out}` nearest :math:`\sqrt{d_\text{out}}` (the smaller on a tie)
and :math:`c` that of :math:`d_\text{in}`: the balanced split, fewest KronA parameters.

Parameters, for :math:`L` slices: :math:`L\,(r (d_\text{out} + d_\text{in}) + a c + b d)`. MiniLM's 6 query
projections (384 × 384, :math:`a = c = 16`, :math:`b = d = 24`) at ``rank=4``:
:math:`6 (4 \cdot 768 + 256 + 576) = 23{,}424`.

The papers: Edward J. Hu et al. (2021), "LoRA: Low-Rank Adaptation of Large Language Models",
arXiv:2106.09685; Ali Edalati, Marzieh Tahaei, Ivan Kobyzev, Vahid Partovi Nia, James J. Clark and Mehdi
Rezagholizadeh (2022), "KronA: Parameter Efficient Tuning with Kronecker Adapter", arXiv:2212.10650.
"""

from __future__ import annotations

import math

from .. import decomp
from ._common import check_args, stack_letters

__all__ = ["balanced_divisor", "lora_krona"]


def balanced_divisor(n: int) -> int:
    """The divisor of ``n`` nearest ``sqrt(n)`` (the smaller of two equally near): ``balanced_divisor(384) == 16``."""
    small = [k for k in range(1, math.isqrt(n) + 1) if n % k == 0]
    candidates = sorted({*small, *(n // k for k in small)})
    root = math.sqrt(n)
    return min(candidates, key=lambda k: (abs(k - root), k))


def lora_krona(stack, out_features, in_features, rank):
    r"""LoRA of rank ``rank`` plus a balanced KronA term: :math:`\Delta W_l = B_l A_l + K_l \otimes M_l`.

    Parameters
    ----------
    stack : tuple of int
        Sizes of the stack modes.
    out_features, in_features : int
        Shape of one slice.
    rank : int
        The LoRA rank ``r``.

    Returns
    -------
    tensorpeft.decomp.Sum
        Factors ``t0_A``, ``t0_B`` (LoRA, ``t0_B`` starts at zero) and ``t1_K`` ``(*stack, a, c)``, ``t1_M``
        ``(*stack, d_out/a, d_in/c)`` (KronA, ``t1_M`` starts at zero).

    Raises
    ------
    TypeError, ValueError
        Naming the argument, as :class:`~tensorpeft.decomp.LoRA` does.

    Examples
    --------
    >>> from tensorpeft.gallery._lora_krona import lora_krona
    >>> f = lora_krona((6,), 384, 384, rank=4)
    >>> f.factor_shapes["t1_K"], f.factor_shapes["t1_M"]
    ((6, 16, 16), (6, 24, 24))
    >>> f.num_params, 6 * (4 * 768 + 16 * 16 + 24 * 24)
    (23424, 23424)
    """
    stack, out_features, in_features = check_args(stack, out_features, in_features)
    lora = decomp.LoRA(stack, out_features, in_features, rank=rank)
    a, c = balanced_divisor(out_features), balanced_divisor(in_features)
    s = stack_letters(stack)
    krona = decomp.TensorNetwork(
        f"{s}pu,{s}qv->{s}pquv",
        {**dict(zip(s, stack, strict=True)), "p": a, "q": out_features // a, "u": c, "v": in_features // c},
        stack_indices=s,
        out_indices="pq",
        in_indices="uv",
        factor_names=("K", "M"),
        zero_factor="M",
    )
    return decomp.Sum(lora, krona)
