"""Alternating least squares for any tensor network in which every factor appears once.

With all factors but one fixed, the network is linear in the remaining factor ``F``. Writing ``b`` for
the indices ``F`` shares with the output, ``c`` for its contracted (bond) indices and ``m`` for the
output indices it lacks, the best ``F`` solves, for every ``b``, the normal equations
``Gram[b] F[b] = rhs[b]`` with ``Gram = Σ_m E E'`` and ``rhs = Σ_m E T``, where ``E`` is the
contraction of the other factors. Both are computed as contractions of the *factors* (opt_einsum
chooses the order), never by forming ``E``; for CP this is exactly CP-ALS with Hadamard products of
Grams and the MTTKRP.
"""

from __future__ import annotations

import math

import opt_einsum

from ._contract import contract

__all__ = ["fit_als"]


def _fresh(used: set[str]):
    k = 0
    while True:
        s = opt_einsum.get_symbol(k)
        k += 1
        if s not in used:
            used.add(s)
            yield s


def _update(fmt, factors, name, target, ops):
    """Return the least-squares optimal factor ``name`` given the others."""
    out = fmt._output
    term = fmt.factor_indices[name]
    others = [n for n in fmt.factor_names if n != name]
    other_terms = [fmt.factor_indices[n] for n in others]
    other_arrays = [factors[n] for n in others]
    other_letters = set("".join(other_terms))

    b = "".join(c for c in term if c in out)
    c = "".join(ch for ch in term if ch not in out)

    fresh = _fresh(set(fmt.sizes) | set(out))
    rename = {ch: next(fresh) for ch in other_letters | set(c) if ch not in out}
    copy_terms = ["".join(rename.get(ch, ch) for ch in t) for t in other_terms]
    b_gram = "".join(ch for ch in b if ch in other_letters)
    c_copy = "".join(rename[ch] for ch in c)
    # Bond indices no other factor carries (e.g. the size-1 ends of a tensor train) are a plain sum:
    # the design matrix is constant along them. Vectors of ones make them explicit in both contractions.
    dangling = [ch for ch in c if ch not in other_letters]
    ones = [ops.zeros((fmt.sizes[ch],), ops.dtype_of(target), like=target) + 1 for ch in dangling]

    rhs = contract(f"{','.join([out, *other_terms, *dangling])}->{b + c}", target, *other_arrays, *ones, ops=ops)
    if other_arrays or ones:
        gram = contract(
            f"{','.join([*other_terms, *copy_terms, *dangling, *(rename[ch] for ch in dangling)])}"
            f"->{b_gram + c + c_copy}",
            *other_arrays,
            *other_arrays,
            *ones,
            *ones,
            ops=ops,
        )
    else:  # a single factor holding every index: it is the target itself
        gram = ops.zeros((), ops.dtype_of(target), like=target) + 1
    size = fmt.sizes
    nc = math.prod(size[ch] for ch in c)
    # The Gram matrix does not depend on the indices of ``b`` that only this factor carries: keep them
    # as size-1 axes and let the batched solve broadcast over them.
    gram = gram.reshape((*(size[ch] if ch in b_gram else 1 for ch in b), nc, nc))
    rhs = rhs.reshape((*(size[ch] for ch in b), nc, 1))
    solution = (ops.pinv_hermitian(gram) @ rhs).reshape(tuple(size[ch] for ch in b + c))
    # back to the factor's own index order
    return ops.einsum(f"{b + c}->{term}", solution)


def fit_als(fmt, dense, init, *, n_iter_max, tol, ops):
    """Run ALS sweeps from ``init``; return ``(factors, rel_err)``."""
    target = dense.reshape(tuple(fmt.sizes[c] for c in fmt._output))
    factors = {n: ops.asarray(ops.to_numpy(v), like=dense) for n, v in init.items()}
    ref = ops.norm(dense)
    if ref == 0:
        return {n: v * 0 for n, v in factors.items()}, 0.0
    err = fmt.relative_error(dense, factors)
    for _ in range(n_iter_max):
        for name in fmt.factor_names:
            factors[name] = _update(fmt, factors, name, target, ops)
        new_err = fmt.relative_error(dense, factors)
        done = abs(err - new_err) < tol or new_err < tol
        err = new_err
        if done:
            break
    return factors, err
