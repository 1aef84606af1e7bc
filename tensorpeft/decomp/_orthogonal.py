"""Orthogonal projection updates (LoRA²): ΔW = P·diag(λ)·Q in orthonormal planes."""

from __future__ import annotations

from typing import ClassVar

from . import _als
from ._backend import ops_named
from ._network import fresh_letters
from ._stacked import StackedFormat
from ._svd import truncated_svd
from .validate import MAX_RANK, check_at_most, check_size, normalize_index

__all__ = ["OrthogonalProjection"]


class OrthogonalProjection(StackedFormat):
    r"""SVD-shaped update per slice (LoRA²): :math:`\Delta W_s = U_1 U_2\,\operatorname{diag}(\lambda)\,V_2 V_1`.

    Parameters
    ----------
    stack : tuple of int
        Sizes of the stacked modes.
    out_features, in_features : int
        Matrix shape ``d_out × d_in``.
    rank : int
        ``r``, the number of singular directions (entries of λ).
    inner : int, optional
        ``k``, the width of the outer planes (default ``rank``); ``r <= k <= min(d_out, d_in)``.

    Notes
    -----
    Per slice: outer planes ``U1`` ``(d_out, k)`` and ``V1`` ``(k, d_in)``, inner planes ``U2``
    ``(k, r)`` and ``V2`` ``(r, k)``, and ``lambda`` ``(r,)``, which starts at zero. ``P = U1 U2``
    and ``Q = V2 V1``. Parameters per slice: :math:`k(d_\text{in} + d_\text{out}) + 2kr + r`;
    DeBERTa-v3-base (q, k, v, attention-output, intermediate, output; 12 layers; k = r = 8): 1,336,896.

    :meth:`init` draws the planes with orthonormal columns (rows for ``V``), so
    :meth:`orthogonality_penalty` starts at zero; LoRA² draws N(0, 0.02), which starts the
    penalty far from zero and the gradient of λ near zero. :meth:`retract` restores exact
    orthonormality without changing ΔW.

    References
    ----------
    Zhang et al., "LoRA²: Multi-Scale Low-Rank Approximations for Fine-Tuning Large Language
    Models", arXiv:2408.06854.

    Examples
    --------
    >>> from tensorpeft import decomp
    >>> f = decomp.OrthogonalProjection(stack=(12,), out_features=768, in_features=768, rank=8)
    >>> f.num_params // 12
    12424
    >>> fac = f.init(seed=0)
    >>> round(float(sum(f.orthogonality_penalty(fac).values())), 12)
    0.0
    """

    #: The name of the format in tables (the ``compare`` and ``budget`` commands).
    label: ClassVar[str] = "LoRA² (orthogonal)"
    paper: ClassVar[str] = "LoRA²"
    order: ClassVar[int] = 4

    #: λ gates the ``r`` singular directions; ``U2`` ``(k, r)`` and ``V2`` ``(r, k)`` carry them too.
    rank_components: ClassVar[dict[str, int] | None] = {"lambda": -1, "U2": -1, "V2": -2}

    def __init__(self, stack, out_features, in_features, rank, inner=None):
        stack, out_features, in_features = self._check_common(stack, out_features, in_features)
        self.rank = check_size(rank, "rank", MAX_RANK)
        self.inner = self.rank if inner is None else check_size(inner, "inner", MAX_RANK)
        check_at_most(self.rank, self.inner, "rank", "`inner`")
        check_at_most(self.inner, min(out_features, in_features), "inner", "min(out_features, in_features)")
        s = fresh_letters(len(stack), avoid="okrji")
        sizes = dict(zip(s, stack, strict=True)) | {
            "o": out_features,
            "i": in_features,
            "k": self.inner,
            "j": self.inner,
            "r": self.rank,
        }
        super().__init__(
            f"{s}ok,{s}kr,{s}r,{s}rj,{s}ji->{s}oi",
            sizes,
            stack_indices=s,
            out_indices="o",
            in_indices="i",
            factor_names=("U1", "U2", "lambda", "V2", "V1"),
            zero_factor="lambda",
        )

    def _args(self):
        return super()._args() | {"rank": self.rank, "inner": self.inner}

    @property
    def slice_rank(self) -> int:
        """``r``: every slice is ``P_s diag(λ_s) Q_s``."""
        return self.rank

    def lora_factors(self, factors, index=()):
        """``(U1 U2 diag(λ), V2 V1)`` of slice ``index`` (exact), as :meth:`TensorNetwork.lora_factors`."""
        self.check_factors(factors)
        index = normalize_index(index, self.stack)
        f = {n: factors[n][index] for n in self.factor_names}
        return f["U1"] @ f["U2"] * f["lambda"], f["V2"] @ f["V1"]

    @classmethod
    def from_scale(cls, scale, inner=None, **kwargs):
        """Rank ``scale`` with ``inner = scale``, unless ``inner`` is fixed."""
        # A fixed `inner` is kept as given (the constructor checks it); `max_scale` keeps scale <= inner.
        return cls(rank=scale, inner=scale if inner is None else inner, **kwargs)

    @classmethod
    def max_scale(cls, inner=None, **kwargs):
        """``min(d_out, d_in)``, or ``inner`` when it is fixed and smaller."""
        bound = min(kwargs["out_features"], kwargs["in_features"])
        return bound if inner is None else min(inner, bound)

    def init_std(self, name):
        """Unit scale for λ in :meth:`random`; planes are orthonormalized, so their std is unused."""
        return 1.0

    def random(self, seed: int = 0, backend: str = "numpy", dtype=None) -> dict:
        """Orthonormal planes and a random non-zero λ (arguments as :meth:`TensorNetwork.random`).

        Half precision is drawn and orthonormalized in float32 (neither library has a QR in it), then rounded.
        """
        ops = ops_named(backend)
        dtype = ops.resolve_dtype(dtype)
        work = ops.working_dtype(dtype)
        factors = self.retract(super().random(seed=seed, backend=backend, dtype=work), keep_delta=False)
        return factors if work == dtype else {n: ops.cast(a, dtype) for n, a in factors.items()}

    def orthogonality_penalty(self, factors) -> dict:
        r"""Frobenius penalties, summed over the stack, that are zero exactly on orthonormal planes.

        Returns a dict with ``U1`` :math:`\|U_1^\top U_1 - I\|_F`, ``V1`` :math:`\|V_1 V_1^\top - I\|_F`,
        ``U2``, ``V2`` likewise, and ``cross`` :math:`\|P^\top P - I\|_F + \|Q Q^\top - I\|_F`, which asks
        the inner plane to sit orthonormally inside the outer one, so that ``P diag(λ) Q`` is an SVD.
        """
        ops = self.check_factors(factors)
        U1, U2, V1, V2 = (factors[n] for n in ("U1", "U2", "V1", "V2"))
        P = U1 @ U2
        Q = V2 @ V1

        def dev(gram):
            eye = ops.eye(gram.shape[-1], ops.dtype_of(gram), like=gram)
            diff = gram - eye
            return ops.matrix_frobenius(diff)

        def total(x):
            return x.sum() if len(self.stack) else x

        tr = ops.swapaxes
        return {
            "U1": total(dev(tr(U1, -1, -2) @ U1)),
            "V1": total(dev(V1 @ tr(V1, -1, -2))),
            "U2": total(dev(tr(U2, -1, -2) @ U2)),
            "V2": total(dev(V2 @ tr(V2, -1, -2))),
            "cross": total(dev(tr(P, -1, -2) @ P) + dev(Q @ tr(Q, -1, -2))),
        }

    def regularizer(self, factors) -> dict:
        """LoRA²'s regularizer: the terms of :meth:`orthogonality_penalty`.

        Parameters
        ----------
        factors : dict
            The format's factors (numpy or torch).

        Returns
        -------
        dict
            ``U1``, ``V1``, ``U2``, ``V2`` and ``cross`` penalties, each a scalar.
        """
        return self.orthogonality_penalty(factors)

    def retract(self, factors, keep_delta: bool = True) -> dict:
        """Return factors with exactly orthonormal planes.

        With ``keep_delta`` (default) ΔW is unchanged: QR of the outer planes, then an SVD of the
        ``k × k`` middle, ``U2 = [I; 0]``, ``V2 = [I, 0]`` and λ the leading singular values. Without
        it, each plane is replaced by the Q of its QR decomposition and λ is kept.
        """
        ops = self.check_factors(factors)
        if not isinstance(keep_delta, bool):
            raise TypeError(f"`keep_delta` must be True or False, got {keep_delta!r} ({type(keep_delta).__name__}).")
        dtype = ops.dtype_of(factors["U1"])
        work = ops.working_dtype(dtype)
        if work != dtype:  # QR and SVD need float32 at least: retract there, return the factors' own dtype
            wide = {n: ops.cast(v, work) for n, v in factors.items()}
            return {n: ops.cast(v, dtype) for n, v in self.retract(wide, keep_delta).items()}
        U1, U2, lam, V2, V1 = (factors[n] for n in self.factor_names)
        tr = ops.swapaxes
        qu, ru = ops.qr(U1)
        qv, rv = ops.qr(tr(V1, -1, -2))
        if not keep_delta:
            q2, _ = ops.qr(U2)
            p2, _ = ops.qr(tr(V2, -1, -2))
            return {"U1": qu, "U2": q2, "lambda": lam, "V2": tr(p2, -1, -2), "V1": tr(qv, -1, -2)}
        middle = ru @ (U2 * lam[..., None, :]) @ V2 @ tr(rv, -1, -2)
        x, sigma, yt = ops.svd(middle)  # k × k, full: U1 needs all k columns
        dtype = ops.dtype_of(U1)
        eye = ops.eye(self.inner, dtype, like=U1)[:, : self.rank]
        return {
            "U1": qu @ x,
            "U2": ops.zeros(self.factor_shapes["U2"], dtype, like=U1) + eye,
            "lambda": sigma[..., : self.rank],
            "V2": ops.zeros(self.factor_shapes["V2"], dtype, like=U1) + tr(eye, -1, -2),
            "V1": yt @ tr(qv, -1, -2),
        }

    def fit(self, dense, **kwargs):
        """Best rank-r approximation per slice (truncated SVD), returned with orthonormal planes.

        Returns ``(factors, rel_err)``, ``rel_err`` the :meth:`relative_error` of the returned factors;
        extra keyword arguments are accepted and ignored (``n_iter_max``, ``tol``, ``seed`` and ``init``
        are checked). Any finite ``dense`` is fitted: the SVD runs on ``dense / 2**e`` (half precision
        in float32) and ``2**e`` goes on ``lambda``, the planes staying orthonormal.

        Raises
        ------
        ValueError
            Naming `dense` if its singular values overflow its dtype (entries near the dtype's maximum).
        """
        _als.check_fit_kwargs(self, kwargs)
        ops = self.check_dense(dense)
        return _als.fit_scaled(self, dense, lambda x: self._svd(x, ops), ops, carrier=("lambda",), fixed=True)

    def _svd(self, dense, ops):
        """Truncated SVD of every slice of ``dense`` (of moderate scale), as factors with orthonormal planes."""
        d = dense.reshape((self.num_slices, self.out_features, self.in_features))
        u, s, vt = truncated_svd(d, self.inner, ops)
        dtype = ops.dtype_of(dense)
        eye = ops.eye(self.inner, dtype, like=dense)[:, : self.rank]
        stack = self.stack
        lam = s[..., : self.rank]
        factors = {
            "U1": u.reshape((*stack, self.out_features, self.inner)),
            "U2": (ops.zeros((self.num_slices, self.inner, self.rank), dtype, like=dense) + eye).reshape(
                self.factor_shapes["U2"]
            ),
            "lambda": lam.reshape(self.factor_shapes["lambda"]),
            "V2": (
                ops.zeros((self.num_slices, self.rank, self.inner), dtype, like=dense) + ops.swapaxes(eye, 0, 1)
            ).reshape(self.factor_shapes["V2"]),
            "V1": vt.reshape((*stack, self.inner, self.in_features)),
        }
        return factors
