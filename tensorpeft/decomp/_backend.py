"""Array-type dispatch: the handful of operations the core needs, for numpy and torch arrays.

There is no global backend switch (TensorLy's ``set_backend``): every function looks at the type of
the arrays it receives, as opt_einsum does. torch is imported only when a torch tensor (or the name
``"torch"``) is actually seen, so the core imports and runs with numpy alone.

This module is hand-written rather than taken from TensorLy because TensorLy's dispatch is global
state; we need per-call dispatch so that numpy and torch factors can coexist in one process.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

__all__ = ["BACKENDS", "FLOAT_DTYPES", "Ops", "ops_for", "ops_named"]

BACKENDS = ("numpy", "torch")

#: Floating dtypes the factors may have, by backend (names as numpy/torch spell them). Half precision
#: is drawn in float32 (numpy: float64) and rounded, since neither library draws or factorizes in it.
FLOAT_DTYPES = {
    "numpy": ("float16", "float32", "float64"),
    "torch": ("float16", "bfloat16", "float32", "float64"),
}


def _dtype_name(dtype) -> str | None:
    """The name of a numpy/torch dtype, a scalar type or a dtype name (``"float32"``, ``"torch.float32"``)."""
    if isinstance(dtype, str) and dtype.removeprefix("torch.") == "bfloat16":
        return "bfloat16"  # a torch dtype numpy does not know
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(dtype, torch.dtype):
        return str(dtype).removeprefix("torch.")
    if isinstance(dtype, str):
        dtype = dtype.removeprefix("torch.")
    try:
        return np.dtype(dtype).name
    except Exception:  # numpy's dtype parser raises many types (SyntaxError for "(0,"): all mean "not a dtype"
        return None


def _check_float_dtype(dtype, backend: str) -> str:
    """Name of ``dtype`` if it is one of :data:`FLOAT_DTYPES` of ``backend``; TypeError/ValueError naming `dtype`."""
    name = _dtype_name(dtype)
    allowed = FLOAT_DTYPES[backend]
    if name is None:
        raise TypeError(f"`dtype` must be a floating dtype, one of {allowed} ({backend}), got {dtype!r}.")
    if name not in allowed:
        raise ValueError(f"`dtype` must be a floating dtype, one of {allowed} on the {backend} backend, got {dtype!r}.")
    return name


def _is_torch(array: Any) -> bool:
    # Only look at torch if it is already imported: a torch tensor cannot exist otherwise.
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(array, torch.Tensor)


class Ops:
    """The operations of one array library, with a uniform signature."""

    name = "abstract"

    def is_array(self, x: Any) -> bool:  # pragma: no cover - overridden
        raise NotImplementedError


class NumpyOps(Ops):
    """numpy implementation."""

    name = "numpy"

    def is_array(self, x):
        return isinstance(x, np.ndarray)

    def default_dtype(self):
        return np.dtype(np.float64)

    def resolve_dtype(self, dtype):
        """``dtype`` as a numpy dtype (default float64); a torch dtype is taken by name (torch.float32)."""
        return self.default_dtype() if dtype is None else np.dtype(_check_float_dtype(dtype, self.name))

    def itemsize(self, dtype):
        return np.dtype(dtype).itemsize

    def cast(self, x, dtype):
        return x.astype(dtype, copy=False)

    def working_dtype(self, dtype):
        """The dtype to compute in for ``dtype``: float32 for float16 (no numpy linalg), float64 for longdouble."""
        dtype = np.dtype(dtype)
        if dtype in (np.float32, np.float64):
            return dtype
        return np.dtype(np.float32) if dtype.itemsize < 4 else np.dtype(np.float64)

    def dtype_of(self, x):
        return x.dtype

    def is_floating(self, x):
        return np.issubdtype(x.dtype, np.floating)

    def generator(self, seed):
        return np.random.default_rng(seed)

    def normal(self, gen, shape, std, dtype):
        return (gen.standard_normal(shape) * std).astype(dtype)

    def zeros(self, shape, dtype, like=None):
        return np.zeros(shape, dtype=dtype)

    def eye(self, n, dtype, like=None):
        return np.eye(n, dtype=dtype)

    def asarray(self, x, like):
        return np.asarray(x, dtype=like.dtype)

    def to_numpy(self, x):
        return np.asarray(x)

    def all_finite(self, x):
        return bool(np.isfinite(x).all())

    def einsum(self, eq, *ops):
        return np.einsum(eq, *ops, optimize=len(ops) > 1)

    def svd(self, x):
        return np.linalg.svd(x, full_matrices=False)

    def qr(self, x):
        return np.linalg.qr(x)

    def pinv_hermitian(self, x):
        return np.linalg.pinv(x, hermitian=True)

    def norm(self, x):
        return float(np.linalg.norm(np.ravel(x)))

    def matrix_frobenius(self, x):
        return np.linalg.norm(x, axis=(-2, -1))

    def swapaxes(self, x, a, b):
        return np.swapaxes(x, a, b)

    def concatenate(self, arrays, axis):
        return np.concatenate(arrays, axis=axis)


class TorchOps(Ops):
    """torch implementation (imported lazily)."""

    name = "torch"

    def __init__(self):
        import torch

        self.torch = torch

    def is_array(self, x):
        return isinstance(x, self.torch.Tensor)

    def default_dtype(self):
        return self.torch.get_default_dtype()

    def resolve_dtype(self, dtype):
        """``dtype`` as a torch dtype (default ``torch.get_default_dtype()``); numpy dtypes and names accepted."""
        if dtype is None:
            return self.default_dtype()
        return getattr(self.torch, _check_float_dtype(dtype, self.name))

    def itemsize(self, dtype):
        return dtype.itemsize

    def cast(self, x, dtype):
        return x.to(dtype)

    def working_dtype(self, dtype):
        """The dtype to draw and factorize in for arrays of ``dtype``: float32 unless it is float32/float64."""
        return dtype if dtype in (self.torch.float32, self.torch.float64) else self.torch.float32

    def dtype_of(self, x):
        return x.dtype

    def is_floating(self, x):
        return x.is_floating_point()

    def generator(self, seed):
        gen = self.torch.Generator()
        gen.manual_seed(int(seed))
        return gen

    def normal(self, gen, shape, std, dtype):
        work = self.working_dtype(dtype)
        return (self.torch.randn(tuple(shape), generator=gen, dtype=work) * std).to(dtype)

    def zeros(self, shape, dtype, like=None):
        device = like.device if like is not None else None
        return self.torch.zeros(tuple(shape), dtype=dtype, device=device)

    def eye(self, n, dtype, like=None):
        device = like.device if like is not None else None
        return self.torch.eye(n, dtype=dtype, device=device)

    def asarray(self, x, like):
        return self.torch.as_tensor(np.asarray(x), dtype=like.dtype, device=like.device)

    def to_numpy(self, x):
        return x.detach().cpu().numpy()

    def all_finite(self, x):
        return bool(self.torch.isfinite(x).all())

    def einsum(self, eq, *ops):
        return self.torch.einsum(eq, *ops)

    def svd(self, x):
        return self.torch.linalg.svd(x, full_matrices=False)

    def qr(self, x):
        return self.torch.linalg.qr(x)

    def pinv_hermitian(self, x):
        return self.torch.linalg.pinv(x, hermitian=True)

    def norm(self, x):
        return float(self.torch.linalg.vector_norm(x.detach()))

    def autocast_enabled(self, x):
        return self.torch.is_autocast_enabled(x.device.type)

    def matrix_frobenius(self, x):
        # torch's norm has gradient 0 (not NaN) at exactly 0, e.g. at orthonormal planes
        return self.torch.linalg.matrix_norm(x, ord="fro")

    def swapaxes(self, x, a, b):
        return self.torch.swapaxes(x, a, b)

    def concatenate(self, arrays, axis):
        return self.torch.cat(list(arrays), dim=axis)


_NUMPY = NumpyOps()
_TORCH: TorchOps | None = None


def _torch_ops() -> TorchOps:
    global _TORCH
    if _TORCH is None:
        _TORCH = TorchOps()
    return _TORCH


def ops_named(backend: str) -> Ops:
    """Return the operations for ``backend`` ("numpy" or "torch").

    Raises
    ------
    TypeError
        If ``backend`` is not a str.
    ValueError
        If ``backend`` is not one of :data:`BACKENDS`.
    """
    if not isinstance(backend, str):
        raise TypeError(f"`backend` must be one of {BACKENDS} (a str), got {backend!r} ({type(backend).__name__}).")
    if backend == "numpy":
        return _NUMPY
    if backend == "torch":
        try:
            return _torch_ops()
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("`backend`='torch' needs torch: pip install torch") from exc
    raise ValueError(f"`backend` must be one of {BACKENDS}, got {backend!r}.")


def ops_for(*arrays: Any, argument: str = "arrays") -> Ops:
    """Return the operations of the library the arrays belong to.

    Raises
    ------
    TypeError
        If an array is neither numpy nor torch, or if numpy and torch arrays are mixed.
    """
    kinds = set()
    for a in arrays:
        if isinstance(a, np.ndarray):
            kinds.add("numpy")
        elif _is_torch(a):
            kinds.add("torch")
        else:
            raise TypeError(f"`{argument}` must be numpy arrays or torch tensors, got {type(a).__name__}.")
    if len(kinds) > 1:
        raise TypeError(f"`{argument}` mixes numpy arrays and torch tensors; use one array library.")
    return ops_named(kinds.pop() if kinds else "numpy")
