"""Hypothesis strategies for arrays of a given format: factor dicts, inputs and stack indices."""

from __future__ import annotations

import math
import numbers

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ..decomp._backend import ops_named
from ..decomp.validate import check_backend, check_size
from ._strategies import _check_nonnegative_int

__all__ = ["factors", "indices", "inputs"]

#: Largest number of scalars of the arrays one draw may hold (hypothesis builds them entry by entry).
MAX_ELEMENTS = 2**20
#: Largest ``max_batch_dims`` and ``max_batch`` of :func:`inputs`.
MAX_BATCH_DIMS = 16
MAX_BATCH = 2**10


def _check_backend(backend, dtype=None) -> str:
    """``backend`` checked; for jax, a float64 ``dtype`` needs x64 (jax would silently draw float32)."""
    backend = check_backend(backend)
    if backend == "jax" and dtype == np.float64:
        ops_named("jax").resolve_dtype("float64")  # the ValueError naming `dtype` and how to enable x64
    return backend


def _check_format(fmt, attribute: str):
    """``getattr(fmt, attribute)``, or a TypeError naming `fmt` for an object that is not a format."""
    try:
        return getattr(fmt, attribute)
    except AttributeError:
        what = type(fmt).__name__
        raise TypeError(f"`fmt` must be a format (a TensorNetwork) with `{attribute}`, got {what}.") from None


def _as_backend(array: np.ndarray, backend: str):
    if backend == "numpy":
        return array
    if backend == "jax":
        return ops_named("jax").from_numpy(array)
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
        except Exception:  # numpy's dtype parser raises many types (SyntaxError for "(0,"): not a dtype
            continue
    if result is None or result not in (np.float32, np.float64):
        raise ValueError(f"`dtype` must be float32 or float64 (numpy, torch, jax or a name), got {dtype!r}.")
    return result


def factors(fmt, *, backend: str = "numpy", dtype=None, bound: float = 1.0):
    """Strategy for factor dicts of ``fmt`` with entries drawn by hypothesis in ``[-bound, bound]``.

    Unlike ``fmt.random``, entries may repeat, vanish or sit at the bound, which is what finds
    edge cases; use ``fmt.random(seed)`` when generic (non-degenerate) factors are needed.

    Parameters
    ----------
    fmt : TensorNetwork
        Any format with ``factor_shapes``.
    backend : {"numpy", "torch", "jax"}
        Array library of the factors. jax draws float64 only with x64 enabled (``jax_enable_x64``): pass
        ``dtype="float32"`` otherwise.
    dtype : optional
        float32 or float64, as a numpy, torch or jax dtype or a name (default float64).
    bound : float
        Largest magnitude of an entry (positive, finite). ``fmt`` may have at most 2**20 parameters.

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
    shapes = _check_format(fmt, "factor_shapes")
    dt = _numpy_dtype(dtype)
    _check_backend(backend, dt)
    if isinstance(bound, bool) or not isinstance(bound, numbers.Real):
        raise TypeError(f"`bound` must be a positive finite number, got {bound!r} ({type(bound).__name__}).")
    if not 0 < bound < math.inf:  # NaN fails too
        raise ValueError(f"`bound` must be a positive finite number, got {bound!r}.")
    bound = float(bound)
    total = sum(math.prod(shape) for shape in shapes.values())
    if total > MAX_ELEMENTS:
        raise ValueError(f"`fmt` has {total:,} parameters; factors() draws at most {MAX_ELEMENTS:,} (2**20).")
    arrays = {name: hnp.arrays(dt, shape, elements=_elements(dt, bound)) for name, shape in shapes.items()}
    return st.fixed_dictionaries(arrays).map(lambda fac: {n: _as_backend(a, backend) for n, a in fac.items()})


def inputs(fmt, *, backend: str = "numpy", dtype=None, max_batch_dims: int = 2, max_batch: int = 3):
    """Strategy for inputs ``x`` of shape ``(*batch, in_features)`` for ``fmt.apply``.

    Parameters
    ----------
    fmt : TensorNetwork
        Any format with ``in_features``.
    backend : {"numpy", "torch", "jax"}
        Array library of ``x``. jax draws float64 only with x64 enabled (``jax_enable_x64``): pass
        ``dtype="float32"`` otherwise.
    dtype : optional
        float32 or float64, as a numpy, torch or jax dtype or a name (default float64).
    max_batch_dims : int
        Largest number of leading (batch) dimensions, at most 16; 0 gives a single vector.
    max_batch : int
        Largest size of a batch dimension, at most 2**10. Shapes whose ``x`` would hold more than 2**20
        scalars are not drawn.

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
    in_features = check_size(_check_format(fmt, "in_features"), "fmt.in_features")
    dt = _numpy_dtype(dtype)
    _check_backend(backend, dt)
    max_batch_dims = _check_nonnegative_int(max_batch_dims, "max_batch_dims", MAX_BATCH_DIMS)
    max_batch = check_size(max_batch, "max_batch", MAX_BATCH)
    if in_features > MAX_ELEMENTS:
        raise ValueError(f"`fmt` has {in_features:,} input features; inputs() draws at most {MAX_ELEMENTS:,} (2**20).")
    shapes = hnp.array_shapes(min_dims=0, max_dims=max_batch_dims, min_side=1, max_side=max_batch)
    shapes = shapes.filter(lambda lead: math.prod(lead) * in_features <= MAX_ELEMENTS)
    arrays = shapes.flatmap(lambda lead: hnp.arrays(dt, (*lead, in_features), elements=_elements(dt, 1.0)))
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
    stack = _check_format(fmt, "stack")
    if not isinstance(stack, tuple) or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in stack):
        raise TypeError(f"`fmt.stack` must be a tuple of positive ints, got {stack!r}.")
    return st.tuples(*(st.integers(-n, n - 1) for n in stack))
