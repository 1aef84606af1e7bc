"""Array-type dispatch: the handful of operations the core needs, for numpy, torch and jax arrays.

There is no global backend switch (TensorLy's ``set_backend``): every function looks at the type of
the arrays it receives, as opt_einsum does. torch and jax are imported only when one of their arrays
(or the name ``"torch"``/``"jax"``) is actually seen, so the core imports and runs with numpy alone.

This module is hand-written rather than taken from TensorLy because TensorLy's dispatch is global
state; we need per-call dispatch so that numpy, torch and jax factors can coexist in one process.
``docs/guide/backends.rst`` says what an :class:`Ops` subclass must provide to add a fourth library.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import numpy as np

__all__ = ["BACKENDS", "FLOAT_DTYPES", "Ops", "jax_x64_enabled", "ops_for", "ops_named"]

BACKENDS = ("numpy", "torch", "jax")

#: Floating dtypes the factors may have, by backend (names as numpy/torch/jax spell them). Half precision
#: is drawn in float32 (numpy, jax: float64) and rounded, since no library draws or factorizes in it.
#: jax has float64 only with x64 enabled by the user (``jax.config.update("jax_enable_x64", True)``).
FLOAT_DTYPES = {
    "numpy": ("float16", "float32", "float64"),
    "torch": ("float16", "bfloat16", "float32", "float64"),
    "jax": ("float16", "bfloat16", "float32", "float64"),
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


def _is_jax(array: Any) -> bool:
    # As for torch: a jax array (or a tracer, which is a jax.Array too) cannot exist before jax is imported.
    jax = sys.modules.get("jax")
    return jax is not None and isinstance(array, getattr(jax, "Array", ()))


def jax_x64_enabled() -> bool:
    """Whether jax computes in float64 now (``jax_enable_x64``); False when jax is not imported."""
    jax = sys.modules.get("jax")
    if jax is None:
        return False
    return jax.dtypes.canonicalize_dtype(np.float64) == np.float64


class Ops:
    """The operations of one array library, with a uniform signature.

    Every method the core calls is here; a library is added by a subclass that implements all of them
    (``docs/guide/backends.rst`` lists what each must do) and a branch in :func:`ops_for`/:func:`ops_named`.
    The defaults below are the ones that hold for any library whose arrays numpy can read.
    """

    name = "abstract"

    def is_array(self, x: Any) -> bool:  # pragma: no cover - overridden
        raise NotImplementedError

    def max_abs(self, x) -> float:
        """Largest absolute entry of ``x`` as a Python float (no autograd history)."""
        return float(np.max(np.abs(self.to_numpy(x))))

    def finfo(self, dtype):
        """Machine limits of a floating ``dtype`` (``eps``, ``tiny``, ``max``)."""
        return np.finfo(dtype)


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

    def max_abs(self, x):
        return float(np.max(np.abs(x)))

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

    def max_abs(self, x):
        return float(x.detach().abs().max())

    def finfo(self, dtype):
        return self.torch.finfo(dtype)

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


class JaxOps(Ops):
    """jax implementation (imported lazily).

    Random draws come from numpy's generator (in float64, then rounded), so a seed gives the factors
    numpy gives; arrays are immutable, and every operation here returns a new one. float64 needs x64
    enabled by the user: a float64 request without it is refused (jax would silently give float32).
    Value checks (:meth:`all_finite`) pass traced arrays through, so ``jax.jit`` of ``apply`` traces.
    """

    name = "jax"

    def __init__(self):
        import jax
        import jax.numpy as jnp

        self.jax, self.jnp = jax, jnp
        self._jitted: dict = {}

    def is_array(self, x):
        return isinstance(x, self.jax.Array)

    def default_dtype(self):
        """The default float of jax: float64 with x64 enabled, else float32."""
        return np.dtype(np.float64) if jax_x64_enabled() else np.dtype(np.float32)

    def resolve_dtype(self, dtype):
        """``dtype`` as a numpy-style dtype jax takes (default :meth:`default_dtype`); float64 needs x64."""
        if dtype is None:
            return self.default_dtype()
        name = _check_float_dtype(dtype, self.name)
        if name == "float64" and not jax_x64_enabled():
            raise ValueError(
                f"`dtype`={dtype!r} on the jax backend needs float64 enabled in jax: call "
                "jax.config.update('jax_enable_x64', True) first (jax would silently give float32), "
                "or ask for float32."
            )
        return self.jnp.dtype(name)

    def itemsize(self, dtype):
        return np.dtype(dtype).itemsize

    def cast(self, x, dtype):
        return x if x.dtype == dtype else x.astype(dtype)

    def working_dtype(self, dtype):
        """float32 for half precision (no jax linalg in it), the dtype itself for float32/float64."""
        dtype = np.dtype(dtype)
        return dtype if dtype in (np.float32, np.float64) else np.dtype(np.float32)

    def dtype_of(self, x):
        return x.dtype

    def is_floating(self, x):
        return bool(self.jnp.issubdtype(x.dtype, self.jnp.floating))

    def generator(self, seed):
        return np.random.default_rng(seed)

    def from_numpy(self, x):
        """A jax copy of a numpy array of a dtype jax takes (``device_put``: no compilation, unlike ``asarray``)."""
        return self.jax.device_put(np.asarray(x), may_alias=False)

    def normal(self, gen, shape, std, dtype):
        # numpy's draw, rounded by numpy (ml_dtypes for bfloat16): the same values as the numpy backend
        return self.from_numpy((gen.standard_normal(shape) * std).astype(dtype))

    def zeros(self, shape, dtype, like=None):
        return self.jnp.zeros(tuple(shape), dtype=dtype)

    def eye(self, n, dtype, like=None):
        return self.jnp.eye(n, dtype=dtype)

    def asarray(self, x, like):
        return self.from_numpy(np.asarray(x, dtype=like.dtype))

    def to_numpy(self, x):
        return np.asarray(x)

    def all_finite(self, x):
        if isinstance(x, self.jax.core.Tracer):
            return True  # a traced value has no entries to check; the caller checks concrete arrays
        return bool(self.jnp.isfinite(x).all())

    def concrete(self, *arrays) -> bool:
        """Whether no array is a tracer (the call is eager, not inside ``jit``/``grad``/``vmap``)."""
        return not any(isinstance(a, self.jax.core.Tracer) for a in arrays)

    def jitted(self, function, obj, **static):
        """``jax.jit`` of ``function(obj, ...)`` with the keyword arguments ``static`` bound, cached per all three.

        Eager jax compiles every operation for every new shape; a verb run as one jitted program compiles
        once per shapes and dtypes and dispatches once. ``obj`` (a format) must be hashable, and
        ``function`` must run plainly when it receives tracers. Pass the base class's function, not a
        bound method: a subclass that overrides the verb and calls ``super()`` must not run twice.
        """
        key = (function, obj, tuple(sorted(static.items())))
        try:
            fn = self._jitted.get(key)
        except TypeError:  # an unhashable subclass (__eq__ without __hash__): correct, compiled per call
            return self.jax.jit(functools.partial(function, obj, **static))
        if fn is None:
            if len(self._jitted) >= 256:
                self._jitted.clear()
            fn = self._jitted[key] = self.jax.jit(functools.partial(function, obj, **static))
        return fn

    def max_abs(self, x):
        return float(self.jnp.max(self.jnp.abs(x)))

    def finfo(self, dtype):
        return self.jnp.finfo(dtype)

    def einsum(self, eq, *ops):
        # the core hands over one pairwise step at a time (paths chosen by opt_einsum in _contract)
        return self.jnp.einsum(eq, *ops, optimize="auto" if len(ops) > 2 else False)

    def svd(self, x):
        return self.jnp.linalg.svd(x, full_matrices=False)

    def qr(self, x):
        return self.jnp.linalg.qr(x)

    def pinv_hermitian(self, x):
        return self.jnp.linalg.pinv(x, hermitian=True)

    def norm(self, x):
        return float(self.jnp.linalg.norm(self.jnp.ravel(x)))

    def matrix_frobenius(self, x):
        # sqrt with a zero (not NaN) gradient at exactly 0, as torch's norm: orthonormal planes are there
        jnp = self.jnp
        squares = jnp.sum(x * x, axis=(-2, -1))
        positive = squares > 0
        return jnp.where(positive, jnp.sqrt(jnp.where(positive, squares, 1)), 0)

    def swapaxes(self, x, a, b):
        return self.jnp.swapaxes(x, a, b)

    def concatenate(self, arrays, axis):
        return self.jnp.concatenate(list(arrays), axis=axis)


_NUMPY = NumpyOps()
_TORCH: TorchOps | None = None
_JAX: JaxOps | None = None


def _torch_ops() -> TorchOps:
    global _TORCH
    if _TORCH is None:
        _TORCH = TorchOps()
    return _TORCH


def _jax_ops() -> JaxOps:
    global _JAX
    if _JAX is None:
        _JAX = JaxOps()
    return _JAX


def ops_named(backend: str) -> Ops:
    """Return the operations for ``backend`` ("numpy", "torch" or "jax"), importing torch/jax only here.

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
    if backend == "jax":
        try:
            return _jax_ops()
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("`backend`='jax' needs jax: pip install tensorpeft[jax]") from exc
    raise ValueError(f"`backend` must be one of {BACKENDS}, got {backend!r}.")


def ops_for(*arrays: Any, argument: str = "arrays") -> Ops:
    """Return the operations of the library the arrays belong to.

    Raises
    ------
    TypeError
        If an array is not a numpy, torch or jax array, or if arrays of several libraries are mixed.
    """
    kinds = set()
    for a in arrays:
        if isinstance(a, np.ndarray):
            kinds.add("numpy")
        elif _is_torch(a):
            kinds.add("torch")
        elif _is_jax(a):
            kinds.add("jax")
        else:
            raise TypeError(f"`{argument}` must be numpy arrays, torch tensors or jax arrays, got {type(a).__name__}.")
    if len(kinds) > 1:
        if kinds == {"numpy", "torch"}:
            raise TypeError(f"`{argument}` mixes numpy arrays and torch tensors; use one array library.")
        names = " and ".join(f"{k} arrays" for k in BACKENDS if k in kinds)
        raise TypeError(f"`{argument}` mixes {names}; use one array library.")
    return ops_named(kinds.pop() if kinds else "numpy")
