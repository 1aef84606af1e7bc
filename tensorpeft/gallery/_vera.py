r"""VeRA: frozen random projections shared by every slice, trainable scaling vectors per slice.

Each slice of the stack scales the same two *frozen* random matrices, :math:`B` (:math:`d_\text{out} \times r`)
and :math:`A` (:math:`r \times d_\text{in}`), by two trainable vectors of its own,

.. math::

   \Delta W_l = \operatorname{diag}(b_l)\; B\; \operatorname{diag}(d_l)\; A, \qquad
   \Delta W_l[o, i] = \sum_r b_l[o]\, B[o, r]\, d_l[r]\, A[r, i],

the einsum network ``"So,or,Sr,ri->Soi"`` (``S`` the stack) with ``A`` and ``B`` frozen
(:attr:`~tensorpeft.decomp.TensorNetwork.frozen_names`): constants drawn from the seed, buffers in a model, saved
in the adapter file.

Parameters: :math:`L\,(d_\text{out} + r)` trainable for :math:`L` slices, :math:`r\,(d_\text{in} + d_\text{out})`
frozen. MiniLM's 6 query projections (384 × 384) at :math:`r = 256`: :math:`6 (384 + 256) = 3{,}840` trainable
(LoRA r = 1 needs 4,608), 196,608 frozen.

The paper: Dawid J. Kopiczko, Tijmen Blankevoort and Yuki M. Asano (2024), "VeRA: Vector-based Random Matrix
Adaptation", ICLR 2024, arXiv:2310.11454.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from ..decomp import TensorNetwork, validate
from ..decomp._backend import ops_named
from ._common import check_args, stack_letters

__all__ = ["VeRA", "vera"]


def _float64(x) -> np.ndarray:
    """``x`` (numpy, torch or jax) as a float64 numpy array."""
    if hasattr(x, "detach"):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


class VeRA(TensorNetwork):
    r"""VeRA: :math:`\Delta W_l = \operatorname{diag}(b_l)\, B \operatorname{diag}(d_l)\, A`, ``A`` and ``B`` frozen.

    Parameters
    ----------
    stack : tuple of int
        Sizes of the stack modes (``(6,)`` for six layers, ``()`` for one matrix).
    out_features, in_features : int
        Shape of one slice, :math:`d_\text{out} \times d_\text{in}`.
    rank : int
        :math:`r`, the width of the frozen projections; any positive size (VeRA uses 256 to 1024, above
        LoRA's ranks: only the :math:`r` entries of :math:`d_l` train).
    d_initial : float
        The constant :math:`d_l` starts at (VeRA's :math:`d_\text{init}`, 0.1 as in PEFT's ``VeraConfig``).

    Notes
    -----
    Factors ``A`` ``(r, d_in)`` and ``B`` ``(d_out, r)`` frozen, shared by every slice; ``lambda_b``
    ``(*stack, d_out)`` and ``lambda_d`` ``(*stack, r)`` trainable (PEFT's ``vera_lambda_b``/``vera_lambda_d``).
    :meth:`init`: ``lambda_b`` = 0 (so ΔW = 0 and ``lambda_b`` gets the gradient), ``lambda_d`` =
    ``d_initial``, ``A`` and ``B`` random with the variance of PEFT's ``kaiming_uniform_`` (:math:`1/(3\,\text{fan
    in})`: :math:`1/(3 d_\text{in})` and :math:`1/(3 r)`).

    Parameters: :math:`L (d_\text{out} + r)` trainable (:attr:`num_params`), :math:`r (d_\text{in} + d_\text{out})`
    frozen (:attr:`num_frozen`). Every slice has rank at most :math:`\min(r, d_\text{out}, d_\text{in})`;
    :meth:`lora_factors` is the closed form ``(diag(b_l) B diag(d_l), A)`` when :math:`r \le \min(d_\text{out},
    d_\text{in})`.

    :meth:`fit` holds ``A`` and ``B`` and fits the scales. ΔW is bilinear in :math:`(b_l, d_l)`, and plain
    alternating least squares stalls at spurious stationary points from many random starts (measured: relative
    error 0.16 from 3 of 5 starts on an exactly representable 3 × 6 × 5 stack at :math:`r = 4`). The fit starts
    instead from the exact solution of that case: with :math:`A` of full row rank (:math:`r \le d_\text{in}`),
    :math:`\Delta W_l A^+ = \operatorname{diag}(b_l) B \operatorname{diag}(d_l)`, so
    :math:`(\Delta W_l A^+) \oslash B = b_l d_l^\top` is of rank one and its leading singular pair gives
    :math:`(b_l, d_l)`; the sweeps then refine it (least-squares optimal for any ``dense``).

    References
    ----------
    Kopiczko, Blankevoort and Asano (2024), "VeRA: Vector-based Random Matrix Adaptation", ICLR 2024,
    arXiv:2310.11454.

    Examples
    --------
    >>> import numpy as np
    >>> from tensorpeft.gallery import VeRA
    >>> f = VeRA((6,), 384, 384, rank=256)
    >>> f.frozen_names, f.num_params, f.num_frozen
    (('B', 'A'), 3840, 196608)
    >>> small = VeRA((3,), 6, 5, rank=4)
    >>> fac = small.init(seed=0)
    >>> float(np.abs(small.to_dense(fac)).max()), float(fac["lambda_d"][0, 0])
    (0.0, 0.1)
    >>> target = small.to_dense(small.random(seed=1) | {n: fac[n] for n in small.frozen_names})
    >>> fitted, rel_err = small.fit(target)
    >>> rel_err < 1e-8, bool(np.array_equal(fitted["A"], fac["A"]))
    (True, True)
    """

    label: ClassVar[str] = "VeRA"

    def __init__(self, stack, out_features, in_features, rank, d_initial: float = 0.1):
        stack, out_features, in_features = check_args(stack, out_features, in_features)
        rank = validate.check_size(rank, "rank", validate.MAX_RANK)
        if isinstance(d_initial, bool) or not isinstance(d_initial, int | float) or not math.isfinite(d_initial):
            raise TypeError(f"`d_initial` must be a finite real number, got {d_initial!r}.")
        if d_initial == 0:
            raise ValueError("`d_initial` must be non-zero: with b = 0 and d = 0 no gradient reaches either.")
        self.rank, self.d_initial = rank, float(d_initial)
        s = stack_letters(stack)
        super().__init__(
            f"{s}o,or,{s}r,ri->{s}oi",
            {**dict(zip(s, stack, strict=True)), "o": out_features, "r": rank, "i": in_features},
            stack_indices=s,
            out_indices="o",
            in_indices="i",
            factor_names=("lambda_b", "B", "lambda_d", "A"),
            zero_factor="lambda_b",
            frozen=("A", "B"),
        )

    def _args(self):
        return super()._args() | {"rank": self.rank, "d_initial": self.d_initial}

    def init_std(self, name: str) -> float:
        """PEFT's ``kaiming_uniform_`` variance for ``A`` and ``B``; the generic rule for the scales."""
        if name == "A":
            return 1.0 / math.sqrt(3 * self.in_features)
        if name == "B":
            return 1.0 / math.sqrt(3 * self.rank)
        return super().init_std(name)

    def init(self, seed: int = 0, backend: str = "numpy", dtype=None, *, frozen_values=None) -> dict:
        """ΔW = 0: ``lambda_b`` zero, ``lambda_d`` = ``d_initial``, ``A`` and ``B`` random (or given).

        Same parameters as :meth:`~tensorpeft.decomp.TensorNetwork.random`.
        """
        factors = super().init(seed=seed, backend=backend, dtype=dtype, frozen_values=frozen_values)
        factors["lambda_d"] = factors["lambda_d"] * 0 + self.d_initial
        return factors

    @property
    def slice_rank(self) -> int:
        """``min(r, out_features, in_features)``."""
        return min(self.rank, self.out_features, self.in_features)

    def lora_factors(self, factors, index=()):
        """``(diag(b_l) B diag(d_l), A)`` (exact) when ``r <= min(out, in)``; else the generic SVD route."""
        ops = self.check_factors(factors)
        index = validate.normalize_index(index, self.stack)
        if self.rank > min(self.out_features, self.in_features):
            return self._svd_lora_factors(factors, index, ops)
        b, d = factors["lambda_b"][index], factors["lambda_d"][index]
        return b[:, None] * factors["B"] * d[None, :], factors["A"]

    def fit(self, dense, *, init=None, n_iter_max: int = 200, tol: float = 1e-12, seed: int = 0):
        """Fit the scales with ``A`` and ``B`` held: from the rank-one start of the Notes, then ALS sweeps.

        Same parameters and result as :meth:`tensorpeft.decomp.TensorNetwork.fit`; without ``init`` the
        frozen factors are those of :meth:`random` with ``seed``.
        """
        if init is None:
            seed = validate.check_seed(seed)
            ops = self.check_dense(dense)
            init = self._start(dense, seed, ops)
        return super().fit(dense, init=init, n_iter_max=n_iter_max, tol=tol, seed=seed)

    def _start(self, dense, seed: int, ops) -> dict:
        """``random(seed)`` with the scales replaced by the rank-one solution of the Notes, where it exists."""
        start = self.random(seed=seed, backend=ops.name, dtype=ops.dtype_of(dense))
        if self.rank > self.in_features:
            return start  # A has no right inverse: the random start
        A, B = _float64(start["A"]), _float64(start["B"])
        T = _float64(dense).reshape(self.num_slices, self.out_features, self.in_features)
        peak = np.max(np.abs(T))
        if peak == 0:
            return start
        T = T / peak  # the scale is irrelevant to directions; keep every product in range
        S = T @ np.linalg.pinv(A)  # (L, o, r): diag(b_l) B diag(d_l) for exact data
        safe = np.abs(B) > 1e-8 * np.max(np.abs(B))
        E = np.where(safe, S / np.where(safe, B, 1.0), 0.0)
        u, sv, vt = np.linalg.svd(E, full_matrices=False)
        if not np.all(sv[:, 0] > 0):
            return start
        root = np.sqrt(sv[:, 0])
        b = (u[:, :, 0] * root[:, None]).reshape(self.factor_shapes["lambda_b"])
        d = (vt[:, 0, :] * root[:, None]).reshape(self.factor_shapes["lambda_d"])
        numpy = ops_named("numpy")
        like = start["lambda_b"]
        return start | {
            "lambda_b": _as_like(b, like, ops, numpy),
            "lambda_d": _as_like(d, like, ops, numpy),
        }


def _as_like(x: np.ndarray, like, ops, numpy):
    """A float64 numpy array in ``like``'s library, dtype and device."""
    if ops.name == "numpy":
        return x.astype(like.dtype)
    return ops.asarray(x, like=like)


def vera(stack, out_features, in_features, rank):
    r"""VeRA for one stack: frozen random ``A``, ``B`` shared by its slices, trainable scales per slice.

    A factory for :class:`tensorpeft.CustomConfig <tensorpeft.nn.CustomConfig>`:
    ``tp.CustomConfig(factory=tensorpeft.gallery.vera, rank=256, target_modules=[...])``.

    Parameters
    ----------
    stack : tuple of int
        Sizes of the stack modes.
    out_features, in_features : int
        Shape of one slice.
    rank : int
        :math:`r`, the width of the frozen projections.

    Returns
    -------
    VeRA
        :math:`\Delta W_l = \operatorname{diag}(b_l) B \operatorname{diag}(d_l) A`; trainable parameters
        :math:`L (d_\text{out} + r)`, frozen :math:`r (d_\text{in} + d_\text{out})`.

    Raises
    ------
    TypeError, ValueError
        Naming `rank`, `stack`, `out_features` or `in_features` when malformed.

    Notes
    -----
    See :class:`VeRA`. In a model, ``A`` and ``B`` are buffers (no gradient, not in the optimizer, not counted
    by ``get_nb_trainable_parameters``) saved in the adapter file, so a reload is exact.

    References
    ----------
    Kopiczko, Blankevoort and Asano (2024), "VeRA: Vector-based Random Matrix Adaptation", arXiv:2310.11454.

    Examples
    --------
    >>> from tensorpeft.gallery import vera
    >>> f = vera((6,), 384, 384, 256)
    >>> f.num_params, 6 * (384 + 256), f.num_frozen, 256 * (384 + 384)
    (3840, 3840, 196608, 196608)
    """
    return VeRA(stack, out_features, in_features, rank)
