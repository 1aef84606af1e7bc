"""Hypothesis strategies for arrays of a given format: factor dicts, inputs and stack indices."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ..decomp._validate import check_positive_int
from ._strategies import _check_nonnegative_int

__all__ = ["factors", "indices", "inputs"]


def _check_backend(backend) -> str:
    if backend not in ("numpy", "torch"):
        raise ValueError(f"`backend` must be 'numpy' or 'torch', got {backend!r}.")
    return backend


def _as_backend(array: np.ndarray, backend: str):
    if backend == "numpy":
        return array
    import torch

    return torch.from_numpy(array)


def _elements(dtype, bound: float):
    width = 32 if np.dtype(dtype) == np.float32 else 64
    return st.floats(-bound, bound, allow_nan=False, allow_infinity=False, width=width)


def _numpy_dtype(dtype):
    if dtype is None:
        return np.dtype(np.float64)
    result = None
    for candidate in (dtype, str(dtype).removeprefix("torch.")):
        try:
            result = np.dtype(candidate)
            break
        except TypeError:
            continue
    if result is None or result not in (np.float32, np.float64):
        raise ValueError(f"`dtype` must be float32 or float64 (numpy, torch or a name), got {dtype!r}.")
    return result


def factors(fmt, *, backend: str = "numpy", dtype=None, bound: float = 1.0):
    """Strategy for factor dicts of ``fmt`` with entries drawn by hypothesis in ``[-bound, bound]``.

    Unlike ``fmt.random``, entries may repeat, vanish or sit at the bound, which is what finds
    edge cases; use ``fmt.random(seed)`` when generic (non-degenerate) factors are needed.

    Parameters
    ----------
    fmt : TensorNetwork
        Any format with ``factor_shapes``.
    backend : {"numpy", "torch"}
        Array library of the factors.
    dtype : optional
        numpy or torch floating dtype (default float64).
    bound : float
        Largest magnitude of an entry.

    Returns
    -------
    hypothesis.strategies.SearchStrategy
        Of ``dict[str, array]``, one array per factor, of the shapes in ``fmt.factor_shapes``.

    Examples
    --------
    >>> from hypothesis import given, settings
    >>> from tensorpeft import decomp
    >>> from tensorpeft.testing import factors
    >>> fmt = decomp.Tucker2(stack=(2,), out_features=3, in_features=4, rank=2)
    >>> @settings(max_examples=10)
    ... @given(factors(fmt))
    ... def test(fac):
    ...     assert fmt.to_dense(fac).shape == (2, 3, 4)
    >>> test()
    """
    _check_backend(backend)
    dt = _numpy_dtype(dtype)
    if not (isinstance(bound, int | float) and not isinstance(bound, bool) and 0 < bound < math.inf):
        raise ValueError(f"`bound` must be a positive finite number, got {bound!r}.")
    arrays = {name: hnp.arrays(dt, shape, elements=_elements(dt, bound)) for name, shape in fmt.factor_shapes.items()}
    return st.fixed_dictionaries(arrays).map(lambda fac: {n: _as_backend(a, backend) for n, a in fac.items()})


def inputs(fmt, *, backend: str = "numpy", dtype=None, max_batch_dims: int = 2, max_batch: int = 3):
    """Strategy for inputs ``x`` of shape ``(*batch, in_features)`` for ``fmt.apply``.

    Parameters
    ----------
    fmt : TensorNetwork
        Any format with ``in_features``.
    backend : {"numpy", "torch"}
        Array library of ``x``.
    dtype : optional
        numpy or torch floating dtype (default float64).
    max_batch_dims : int
        Largest number of leading (batch) dimensions; 0 gives a single vector.
    max_batch : int
        Largest size of a batch dimension.

    Returns
    -------
    hypothesis.strategies.SearchStrategy
        Of arrays with entries in ``[-1, 1]``.

    Examples
    --------
    >>> from hypothesis import given, settings
    >>> from tensorpeft import decomp
    >>> from tensorpeft.testing import inputs
    >>> fmt = decomp.LoRA(stack=(), out_features=3, in_features=4, rank=1)
    >>> @settings(max_examples=10)
    ... @given(inputs(fmt))
    ... def test(x):
    ...     assert x.shape[-1] == 4
    >>> test()
    """
    _check_backend(backend)
    dt = _numpy_dtype(dtype)
    max_batch_dims = _check_nonnegative_int(max_batch_dims, "max_batch_dims")
    max_batch = check_positive_int(max_batch, "max_batch")
    shapes = hnp.array_shapes(min_dims=0, max_dims=max_batch_dims, min_side=1, max_side=max_batch)
    arrays = shapes.flatmap(lambda lead: hnp.arrays(dt, (*lead, fmt.in_features), elements=_elements(dt, 1.0)))
    return arrays.map(lambda x: _as_backend(x, backend))


def indices(fmt):
    """Strategy for valid stack indices of ``fmt``: tuples over ``fmt.stack``, negative entries included.

    Parameters
    ----------
    fmt : TensorNetwork
        Any format with a ``stack``.

    Returns
    -------
    hypothesis.strategies.SearchStrategy
        Of tuples of ints ``i_k`` with ``-n_k <= i_k < n_k``; ``()`` for an unstacked format.

    Examples
    --------
    >>> from hypothesis import given, settings
    >>> from tensorpeft import decomp
    >>> from tensorpeft.testing import indices
    >>> fmt = decomp.LoRA(stack=(2, 3), out_features=3, in_features=4, rank=1)
    >>> @settings(max_examples=10)
    ... @given(indices(fmt))
    ... def test(index):
    ...     assert len(index) == 2
    >>> test()
    """
    return st.tuples(*(st.integers(-n, n - 1) for n in fmt.stack))
