"""Truncated SVD of a batch of matrices, backend-agnostic."""

from __future__ import annotations

__all__ = ["truncated_svd"]


def truncated_svd(matrices, rank: int, ops):
    """Leading ``rank`` singular triplets of each matrix in ``matrices`` ``(..., m, n)``.

    Returns ``u (..., m, rank)``, ``s (..., rank)``, ``vt (..., rank, n)``.
    """
    u, s, vt = ops.svd(matrices)
    return u[..., :rank], s[..., :rank], vt[..., :rank, :]
