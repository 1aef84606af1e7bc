"""Tolerances keyed by dtype and a backend-agnostic closeness assertion."""

from __future__ import annotations

import numbers

import numpy as np

__all__ = ["TOLERANCES", "assert_close", "tolerance"]

#: Relative tolerance of a comparison of results computed in each dtype. float64 leaves about five
#: orders of magnitude above round-off for the small tensors of the property suite.
TOLERANCES = {"float64": 1e-10, "float32": 1e-4, "float16": 1e-2, "bfloat16": 1e-2}


def _dtype_name(dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name in TOLERANCES:
        return name
    try:
        return np.dtype(dtype).name
    except Exception:  # numpy's dtype parser raises many types (SyntaxError for "(0,"): all mean "not a dtype"
        return name


def tolerance(dtype) -> float:
    """Relative tolerance for comparing results computed in ``dtype``.

    Parameters
    ----------
    dtype : numpy dtype, torch dtype or str
        ``float64``, ``float32``, ``float16`` or ``bfloat16``, as a numpy or torch dtype or a name.

    Returns
    -------
    float
        The entry of :data:`TOLERANCES`.

    Raises
    ------
    ValueError
        If ``dtype`` is not a floating dtype listed in :data:`TOLERANCES`.

    Examples
    --------
    >>> import numpy as np
    >>> from tensorpeft.testing import tolerance
    >>> tolerance(np.float64), tolerance("float32")
    (1e-10, 0.0001)
    """
    name = _dtype_name(dtype)
    if name not in TOLERANCES:
        raise ValueError(f"`dtype` must be one of {sorted(TOLERANCES)}, got {dtype!r}.")
    return TOLERANCES[name]


def to_numpy(array) -> np.ndarray:
    """A numpy copy/view of a numpy array, torch tensor or jax array (detached, on the CPU; bfloat16 as float32)."""
    if isinstance(array, np.ndarray):
        return array
    detach = getattr(array, "detach", None)
    if detach is not None:
        tensor = detach().cpu()
        if str(tensor.dtype) == "torch.bfloat16":  # numpy has no bfloat16: widened exactly to float32
            tensor = tensor.float()
        return tensor.numpy()
    array = np.asarray(array)  # a jax array (bfloat16 as ml_dtypes' type, which is no np.floating)
    return array.astype(np.float32) if array.dtype.name == "bfloat16" else array


def _real_array(x, name: str) -> np.ndarray:
    """``x`` as a numpy array of real numbers (bool, int or float); TypeError naming ``name`` otherwise."""
    try:
        array = to_numpy(x)
    except (TypeError, ValueError, RuntimeError) as err:
        what = type(x).__name__
        raise TypeError(f"`{name}` must be a numpy array or torch tensor of real numbers, got {what}.") from err
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        raise TypeError(f"`{name}` must hold real numbers, got dtype {array.dtype}.")
    return array


def assert_close(actual, desired, *, rtol: float | None = None, scale=None, what: str = "arrays") -> None:
    """Assert ``max |actual - desired| <= rtol · max(scale)`` for numpy arrays or torch tensors.

    The error is measured against one scale for the whole array rather than element by element, so an
    entry that is zero up to cancellation does not demand an impossible relative accuracy.

    Parameters
    ----------
    actual, desired : array
        numpy arrays or torch tensors (compared in float64 on the CPU); shapes must be equal.
    rtol : float, optional
        Default: :func:`tolerance` of ``actual``'s dtype.
    scale : array or float, optional
        Magnitude the error is relative to; default ``|desired|``. For a sum of products, pass the same
        computation on absolute values: the round-off of a sum is bounded relative to that.
    what : str
        Name of the compared quantity, used in the message.

    Raises
    ------
    AssertionError
        If the shapes differ or the error exceeds the tolerance; the message gives both.

    Examples
    --------
    >>> import numpy as np
    >>> from tensorpeft.testing import assert_close
    >>> assert_close(np.ones(3) + 1e-13, np.ones(3))
    >>> assert_close(np.ones(3) + 1e-3, np.ones(3), what="y")
    Traceback (most recent call last):
    ...
    AssertionError: y differ: max abs error 0.001 > 1e-10 · scale 1 (at index (0,)).
    """
    a = _real_array(actual, "actual")
    d = _real_array(desired, "desired")
    if rtol is None:
        rtol = tolerance(getattr(actual, "dtype", a.dtype))
    elif isinstance(rtol, bool) or not isinstance(rtol, numbers.Real):
        raise TypeError(f"`rtol` must be a non-negative number or None, got {rtol!r} ({type(rtol).__name__}).")
    elif not rtol >= 0:  # NaN fails too
        raise ValueError(f"`rtol` must be a non-negative number or None, got {rtol!r}.")
    if scale is not None:
        scale = _real_array(scale, "scale")
    a = a.astype(np.float64)
    d = d.astype(np.float64)
    if a.shape != d.shape:
        raise AssertionError(f"{what} have different shapes: {a.shape} != {d.shape}.")
    if a.size == 0:
        return
    ref = np.abs(d) if scale is None else np.abs(to_numpy(scale).astype(np.float64))
    size = float(np.max(ref)) if np.size(ref) else 0.0
    diff = np.abs(a - d)
    worst = float(np.max(diff))
    if not np.isfinite(worst) or worst > rtol * size:
        at = np.unravel_index(int(np.argmax(np.where(np.isnan(diff), np.inf, diff))), diff.shape)
        raise AssertionError(
            f"{what} differ: max abs error {worst:.3g} > {rtol:.3g} · scale {size:.3g} "
            f"(at index {tuple(int(i) for i in at)})."
        )
