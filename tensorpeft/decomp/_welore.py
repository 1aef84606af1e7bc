"""WeLore's rule: which weight matrices are low-rank, and at which rank, for a global reduction."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from fractions import Fraction
from typing import Any, NamedTuple

import numpy as np

from ._backend import _is_torch
from .validate import check_fraction, check_size_tuple

# Parameter counts are summed in int64: the total of all matrices must stay below this.
_MAX_TOTAL_PARAMS = 2**62

__all__ = ["Spectrum", "WeLoreMatrix", "WeLoreResult", "welore_ranks"]


class Spectrum(NamedTuple):
    """Singular values of a ``d_out × d_in`` matrix, for when its SVD is already known.

    ``singular_values`` is 1-D (numpy, torch or a sequence), of length ``min(d_out, d_in)``, in any
    order, finite and non-negative; ``shape`` is ``(d_out, d_in)``.

    Attributes
    ----------
    singular_values : array-like
        The singular values.
    shape : tuple of int
        ``(d_out, d_in)``.

    Examples
    --------
    >>> from tensorpeft import decomp
    >>> s = decomp.Spectrum([3.0, 2.0, 1.0, 0.1], (4, 6))
    >>> s.shape
    (4, 6)
    """

    singular_values: Any
    shape: tuple[int, int]


@dataclasses.dataclass(frozen=True)
class WeLoreMatrix:
    """WeLore's decision for one matrix: keep rank ``rank`` of ``n``, pruning ``pruned``.

    Attributes
    ----------
    name : str
        The matrix's name.
    shape : tuple of int
        ``(d_out, d_in)``.
    n : int
        Number of singular values, ``min(d_out, d_in)``.
    rank : int
        Kept rank ``k``.
    pruned : int
        Singular values below the threshold, ``n - k``.
    is_low_rank : bool
        Whether the matrix is a low-rank component (stored factored).
    params_before, params_after : int
        Parameters of the matrix before and after.

    Examples
    --------
    >>> from tensorpeft import decomp
    >>> res = decomp.welore_ranks({"a": decomp.Spectrum([3.0, 2.0, 0.01, 0.01], (4, 4))}, reduction=0.25)
    >>> m = res.matrices["a"]
    >>> m.rank, m.n, m.pruned, m.is_low_rank, m.params_after
    (1, 4, 3, True, 8)
    """

    name: str
    shape: tuple[int, int]
    n: int
    rank: int
    pruned: int
    is_low_rank: bool
    params_before: int
    params_after: int

    @property
    def pruned_ratio(self) -> float:
        """``pruned / n``, the share compared with ``min_ratio``."""
        return self.pruned / self.n


@dataclasses.dataclass(frozen=True)
class WeLoreResult:
    """The outcome of :func:`welore_ranks`: the threshold, the reduction and one record per matrix.

    Attributes
    ----------
    tau : float
        The global threshold on normalized singular values.
    reduction : float
        The parameter reduction reached.
    target : float
        The reduction asked for.
    max_reduction : float
        The largest reduction reachable.
    min_ratio : float
        The pruned share above which a matrix is a low-rank component.
    params_before, params_after : int
        Parameters of all matrices before and after.
    matrices : Mapping[str, WeLoreMatrix]
        One record per matrix, by name.

    Examples
    --------
    >>> from tensorpeft import decomp
    >>> res = decomp.welore_ranks(
    ...     {"a": decomp.Spectrum([3.0, 2.0, 0.01, 0.01], (4, 4)), "b": decomp.Spectrum([1.0] * 4, (4, 4))},
    ...     reduction=0.25,
    ... )
    >>> res.ranks, res.low_rank, res.params_before, res.params_after
    ({'a': 1, 'b': 4}, ('a',), 32, 24)
    """

    tau: float
    reduction: float
    target: float
    max_reduction: float
    min_ratio: float
    params_before: int
    params_after: int
    matrices: Mapping[str, WeLoreMatrix]

    @property
    def ranks(self) -> dict[str, int]:
        """Kept rank ``k`` of every matrix, by name."""
        return {name: m.rank for name, m in self.matrices.items()}

    @property
    def low_rank(self) -> tuple[str, ...]:
        """Names of the low-rank components (LRCs), in input order."""
        return tuple(name for name, m in self.matrices.items() if m.is_low_rank)

    def __str__(self) -> str:
        head = (
            f"WeLore tau={self.tau:.6g}: reduction {self.reduction:.4f} (target {self.target:.4f}), "
            f"{self.params_before:,} -> {self.params_after:,} params"
        )
        width = max(len(name) for name in self.matrices)
        lines = [head]
        for name, m in self.matrices.items():
            kind = "LRC" if m.is_low_rank else "dense"
            lines.append(f"{name.ljust(width)}  {kind:5}  k={m.rank}/{m.n}  {m.params_after:,}/{m.params_before:,}")
        return "\n".join(lines)


def welore_ranks(matrices, reduction=0.5, min_ratio=0.5) -> WeLoreResult:
    r"""WeLore: one global threshold on normalized singular values, matrices classed as low-rank or not.

    Parameters
    ----------
    matrices : Mapping[str, array or Spectrum]
        Name → a 2-D weight ``(d_out, d_in)`` (numpy or torch; its singular values are computed in
        float64), or name → :class:`Spectrum` ``(singular_values, (d_out, d_in))`` when they are known.
    reduction : float
        Requested overall parameter reduction, ``0 <= reduction < 1``: at least this share of the
        parameters of ``matrices`` is removed.
    min_ratio : float
        A matrix is a low-rank component (LRC) when more than this share of its singular values is
        pruned, ``0 <= min_ratio < 1``. WeLore uses 0.5; below it, factoring can cost more than it saves.

    Returns
    -------
    WeLoreResult
        ``tau`` (the smallest threshold that reaches ``reduction``), the achieved ``reduction``, the
        ``max_reduction`` any threshold reaches, totals, and ``matrices``: a :class:`WeLoreMatrix`
        per name with ``n``, kept ``rank``, ``pruned``, ``is_low_rank``, ``params_before``/``after``.

    Raises
    ------
    TypeError
        If ``matrices`` is not a mapping, an entry is not an array or a :class:`Spectrum`, or
        ``reduction``/``min_ratio`` is not a real number.
    ValueError
        If ``matrices`` is empty; an entry is not 2-D, is empty, or holds NaN/inf (a spectrum: wrong
        length or negative values); ``reduction`` or ``min_ratio`` is outside ``[0, 1)``; or no
        threshold reaches ``reduction`` (the message gives the maximum achievable).

    Notes
    -----
    For a matrix with singular values :math:`\sigma_1 \ge \dots \ge \sigma_n`,
    :math:`n = \min(d_\text{out}, d_\text{in})`:

    .. math::

        \hat\sigma_i = \frac{\sigma_i - \sigma_\min}{\sigma_\max - \sigma_\min}, \qquad
        p = \#\{i : \hat\sigma_i < \tau\}, \qquad k = n - p,

    and the matrix is an LRC when :math:`p / n > \text{min\_ratio}`. Parameters after:
    :math:`k (d_\text{in} + d_\text{out})` for an LRC (``U_k √Σ_k`` and ``√Σ_k V_kᵀ``),
    :math:`d_\text{in} d_\text{out}` otherwise; the reduction is
    :math:`1 - \sum \text{after} / \sum d_\text{in} d_\text{out}`.

    The count :math:`p` only changes when :math:`\tau` crosses a :math:`\hat\sigma`, so the candidate
    thresholds are exactly the distinct :math:`\hat\sigma` values in :math:`[0, 1]`. They are sorted once,
    the parameter count after each candidate is an exact integer prefix sum, and ``tau`` is the
    smallest candidate whose saving is at least ``ceil(reduction · before)`` parameters, compared in
    integers (no float iteration, and no assumption that the reduction grows with τ: with
    ``min_ratio < 0.5`` an LRC can cost more than its dense matrix).

    Edge cases, chosen deliberately: the comparison is strict, so ``tau = 0`` prunes nothing (returned
    for ``reduction = 0``). Every non-constant spectrum has :math:`\hat\sigma_\min = 0`, so any
    :math:`\tau > 0` prunes at least the smallest value of *every* such matrix; this only matters for
    tiny ``n`` (for ``n = 2`` it makes the matrix an LRC at once). :math:`\tau \le 1` always, so the
    largest value (:math:`\hat\sigma = 1`) is never pruned and ``k >= 1``. A constant spectrum
    (:math:`\sigma_\max = \sigma_\min`, a zero or scaled-orthogonal matrix, or ``n = 1``) has no small
    values: all its :math:`\hat\sigma` are 1 (no 0/0), so it is never pruned.

    References
    ----------
    Jaiswal et al., "From GaLore to WeLore: How Low-Rank Weights Non-uniformly Emerge from Low-Rank
    Gradients", arXiv:2407.11239 (LLaMA-2-7B: τ = 0.135 for a 50% reduction).

    Examples
    --------
    A matrix of exact rank 4 and a full-rank one, 64 × 64 each:

    >>> import numpy as np
    >>> from tensorpeft import decomp
    >>> rng = np.random.default_rng(0)
    >>> low = rng.standard_normal((64, 4)) @ rng.standard_normal((4, 64))
    >>> full = rng.standard_normal((64, 64))
    >>> res = decomp.welore_ranks({"low": low, "full": full}, reduction=0.43)
    >>> res.ranks, res.low_rank, res.reduction
    ({'low': 4, 'full': 63}, ('low',), 0.4375)

    Known singular values, normalized 0, 1/4, 1/2, 3/4, 1; the strict comparison keeps the value at τ:

    >>> res = decomp.welore_ranks({"w": decomp.Spectrum([0, 1, 2, 3, 4], (5, 100))}, reduction=0.35)
    >>> res.tau, res.matrices["w"].pruned, res.matrices["w"].params_after, res.reduction
    (0.75, 3, 210, 0.58)
    >>> decomp.welore_ranks({"w": decomp.Spectrum([0, 1, 2, 3, 4], (5, 100))}, reduction=0.9)
    Traceback (most recent call last):
    ...
    ValueError: `reduction`=0.9 is not reachable: the largest reduction any threshold gives is 0.79 (tau=1.0).
    """
    target = check_fraction(reduction, "reduction")
    ratio = check_fraction(min_ratio, "min_ratio")
    if not isinstance(matrices, Mapping):
        raise TypeError(
            f"`matrices` must be a mapping from name to 2-D array or Spectrum, got {type(matrices).__name__}."
        )
    if not matrices:
        raise ValueError("`matrices` is empty; give at least one name -> matrix.")

    names, shapes, spectra = [], [], []
    for name, value in matrices.items():
        if not isinstance(name, str):
            raise TypeError(f"`matrices` must be keyed by str names, got key {name!r} ({type(name).__name__}).")
        shape, sigma = _spectrum(value, f"matrices[{name!r}]")
        names.append(name)
        shapes.append(shape)
        spectra.append(_normalized(sigma))

    if sum(a * b for a, b in shapes) > _MAX_TOTAL_PARAMS:
        raise ValueError("`matrices` hold more than 2**62 parameters in all; give fewer or smaller matrices.")
    # Per value, in each matrix's ascending order: the parameter change when it is pruned.
    n = np.array([len(s) for s in spectra], dtype=np.int64)
    dense = np.array([a * b for a, b in shapes], dtype=np.int64)
    width = np.array([a + b for a, b in shapes], dtype=np.int64)
    p_lrc = np.array([math.floor(Fraction(ratio) * int(k)) + 1 for k in n], dtype=np.int64)  # p/n > ratio
    owner = np.repeat(np.arange(len(spectra)), n)
    pos = np.concatenate([np.arange(k, dtype=np.int64) for k in n])

    def cost(p):
        m = owner
        return np.where(p >= p_lrc[m], (n[m] - p) * width[m], dense[m])

    values = np.concatenate(spectra)
    order = np.argsort(values, kind="stable")
    values, delta = values[order], (cost(pos + 1) - cost(pos))[order]
    before = int(dense.sum())
    saved = -np.concatenate([[0], np.cumsum(delta)])  # saved[j]: parameters saved with the j smallest pruned
    # Valid states: j = #{σ̂ < τ} for τ = 0 (j = 0) or τ = a value that differs from its predecessor.
    valid = np.zeros(len(values) + 1, dtype=bool)
    valid[0] = True
    valid[1:-1] = values[1:] > values[:-1]
    need = math.ceil(Fraction(target) * before)
    hits = np.flatnonzero(valid & (saved >= need))
    best = int(np.flatnonzero(valid)[np.argmax(saved[valid])])
    if not len(hits):
        raise ValueError(
            f"`reduction`={reduction!r} is not reachable: the largest reduction any threshold gives is "
            f"{int(saved[best]) / before:.6g} (tau={_tau(values, best)!r})."
        )
    tau = _tau(values, int(hits[0]))

    records = {}
    for name, shape, sigma, n_m, p_min in zip(names, shapes, spectra, n, p_lrc, strict=True):
        p = int(np.searchsorted(sigma, tau, side="left"))  # #{σ̂ < τ}
        lrc = p >= p_min
        after = (int(n_m) - p) * sum(shape) if lrc else shape[0] * shape[1]
        records[name] = WeLoreMatrix(name, shape, int(n_m), int(n_m) - p, p, bool(lrc), shape[0] * shape[1], after)
    after_total = sum(r.params_after for r in records.values())
    return WeLoreResult(
        tau=tau,
        reduction=(before - after_total) / before,
        target=float(target),
        max_reduction=int(saved[best]) / before,
        min_ratio=float(ratio),
        params_before=before,
        params_after=after_total,
        matrices=records,
    )


def _tau(values, j: int) -> float:
    return 0.0 if j == 0 else float(values[j])


def _spectrum(value, where: str) -> tuple[tuple[int, int], np.ndarray]:
    """``((d_out, d_in), singular values as float64)`` of one entry, validated."""
    if isinstance(value, Spectrum):
        shape = check_size_tuple(value.shape, f"{where}.shape")
        if len(shape) != 2:
            raise ValueError(f"`{where}.shape` must be (d_out, d_in), got {shape}.")
        sigma = _to_numpy(value.singular_values, f"{where}.singular_values")
        if sigma.ndim != 1 or len(sigma) != min(shape):
            raise ValueError(
                f"`{where}.singular_values` must be 1-D of length min{shape}={min(shape)}, got shape {sigma.shape}."
            )
        if not np.isfinite(sigma).all() or (sigma < 0).any():
            raise ValueError(f"`{where}.singular_values` must be finite and non-negative.")
        return shape, sigma
    if _is_torch(value):
        import torch

        if value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"`{where}` must be a real tensor, got dtype {value.dtype}.")
        shape = tuple(value.shape)
        _check_matrix(shape, bool(torch.isfinite(value).all()) if value.numel() else True, where)
        sigma = torch.linalg.svdvals(value.detach().to(torch.float64)).cpu().numpy()
        return shape, sigma
    if not isinstance(value, np.ndarray):
        raise TypeError(
            f"`{where}` must be a 2-D numpy array, a torch tensor or a Spectrum, got {type(value).__name__}."
        )
    if not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
        raise TypeError(f"`{where}` must be a real array, got dtype {value.dtype}.")
    shape = tuple(value.shape)
    _check_matrix(shape, bool(np.isfinite(value).all()), where)
    return shape, np.linalg.svd(value.astype(np.float64), compute_uv=False)


def _check_matrix(shape, finite: bool, where: str) -> None:
    if len(shape) != 2:
        raise ValueError(f"`{where}` must be a 2-D matrix (d_out, d_in), got shape {shape}.")
    if min(shape) < 1:
        raise ValueError(f"`{where}` must not be empty, got shape {shape}.")
    if not finite:
        raise ValueError(f"`{where}` contains NaN or infinite values.")


def _to_numpy(x, where: str) -> np.ndarray:
    if _is_torch(x):
        x = x.detach().cpu().double().numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"`{where}` must be an array of real numbers, got {type(x).__name__}.") from err


def _normalized(sigma: np.ndarray) -> np.ndarray:
    """``(σ − σ_min) / (σ_max − σ_min)`` sorted ascending; all ones for a constant spectrum (no 0/0).

    Rounding is monotone, so the map keeps the order, sends σ_min to 0 and σ_max to exactly 1.
    """
    sigma = np.sort(sigma)
    lo, hi = sigma[0], sigma[-1]
    if hi == lo:
        return np.ones_like(sigma)
    return (sigma - lo) / (hi - lo)
