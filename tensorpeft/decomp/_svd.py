"""Truncated SVDs, backend-agnostic: of a batch of matrices, and the leading subspace of one matrix."""

from __future__ import annotations

import numpy as np

__all__ = ["leading_left_vectors", "top_eigenvectors", "truncated_svd"]


def truncated_svd(matrices, rank: int, ops):
    """Leading ``rank`` singular triplets of each matrix in ``matrices`` ``(..., m, n)``.

    Returns ``u (..., m, rank)``, ``s (..., rank)``, ``vt (..., rank, n)``.
    """
    u, s, vt = ops.svd(matrices)
    return u[..., :rank], s[..., :rank], vt[..., :rank, :]


def top_eigenvectors(gram, k: int):
    """The ``k`` largest eigenpairs of a symmetric matrix, largest first, in numpy float64.

    Returns ``values (k,)`` and ``vectors (p, k)``. SciPy (a dependency of TensorLy) computes only the
    wanted ``k``: 2.5-3× faster than a full ``eigh`` at p = 384 and 768 (one thread, driver "evx",
    tied with "evr"); plain numpy computes all of them.
    """
    gram = np.asarray(gram, dtype=np.float64)
    p = gram.shape[0]
    try:
        from scipy.linalg import eigh
    except ImportError:  # pragma: no cover - scipy comes with tensorly
        values, vectors = np.linalg.eigh(gram)
        values, vectors = values[p - k :], vectors[:, p - k :]
    else:
        values, vectors = eigh(gram, subset_by_index=(p - k, p - 1), driver="evx")
    return values[::-1].copy(), vectors[:, ::-1].copy()  # copy: torch rejects negative strides


def leading_left_vectors(mat, k: int, ops, *, with_values: bool = False):
    """Orthonormal basis ``(m, k)`` of the leading ``k``-dim left singular subspace of ``mat`` (m × n).

    One symmetric eigendecomposition of the *smaller* Gram matrix, solved in float64 with numpy/SciPy
    whatever the backend (torch's LAPACK ``eigh``/``svd`` were 4-27× slower than numpy's in spot checks
    on this machine), instead of an SVD of ``mat``: this is what makes the Tucker-2 and CP fits of a
    whole stack fast (``benchmarks/bench_fit.py``). With ``n < m`` the ``n × n`` Gram gives right vectors ``V`` and the
    basis is the Q of ``mat @ V``, which spans the range of ``mat`` to working precision even where the
    Gram's eigenvectors are less accurate (exactly low-rank input). With ``with_values`` also return the
    ``k`` singular values (an array of the same backend). Singular vectors are defined up to sign.
    """
    m, n = mat.shape
    # The thin basis has only n columns: when k > n it is completed from the m × m Gram.
    if m <= n or k > n:
        values, vectors = top_eigenvectors(ops.to_numpy(mat @ mat.T), k)
        basis = ops.asarray(vectors, like=mat)
    else:
        values, vectors = top_eigenvectors(ops.to_numpy(mat.T @ mat), k)
        basis, _ = ops.qr(mat @ ops.asarray(vectors, like=mat))
    if with_values:
        return basis, ops.asarray(np.sqrt(np.maximum(values, 0.0)), like=mat)
    return basis
