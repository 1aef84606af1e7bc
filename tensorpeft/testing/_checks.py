"""``check_format``: the property suite of a format, for built-in and custom formats alike."""

from __future__ import annotations

import functools
import importlib.util
import inspect
import math
import numbers
import os
import sys
from collections.abc import Iterable
from itertools import islice

import numpy as np

from ..decomp._backend import jax_x64_enabled, ops_named
from ..decomp.validate import check_seed
from ._assert import assert_close, to_numpy
from ._profiles import load_env_profile

__all__ = ["CHECKS", "CHECK_TOLERANCES", "DTYPES", "check_format"]

#: Names of the checks run by :func:`check_format`, in order (any of them can be skipped).
CHECKS = ("structure", "to_dense", "apply", "init", "dtypes", "backends", "gradcheck", "fit", "errors")

#: Floating dtypes in which the ``to_dense`` and ``apply`` checks compare a format against a float64
#: reference, per backend. float64 and float32 are required (the ``dtypes`` check fails a format whose
#: ``random`` refuses them); bfloat16 is checked where ``random(dtype="bfloat16")`` accepts it.
DTYPES = {
    "numpy": ("float64", "float32"),
    "torch": ("float64", "float32", "bfloat16"),
    "jax": ("float64", "float32", "bfloat16"),
}

#: Relative tolerance of the ``to_dense`` and ``apply`` checks in each dtype: the largest error allowed,
#: relative to the largest entry of the same contraction on absolute values (which bounds the round-off
#: of a sum of products). float64 and float32 as :data:`~tensorpeft.testing.TOLERANCES`, about 10**6 and
#: 10**3 unit round-offs (a 1% error in float32 is caught); bfloat16 (unit round-off 2**-9) rounds every
#: stage of a contraction, so it is allowed a few round-offs per stage of a network of up to 6 factors.
CHECK_TOLERANCES = {"float64": 1e-10, "float32": 1e-4, "bfloat16": 5e-2}

# numpy.einsum(optimize=False) loops over every index combination: above this many it is too slow to be
# a reference, and numpy's own pairwise path (still independent of the library's) is used instead.
_NAIVE_EINSUM_LIMIT = 10**7
# gradcheck perturbs every scalar; above this many it projects onto random directions instead.
_GRADCHECK_FULL_LIMIT = 256
# Sweeps of an iterative fit (one with an `n_iter_max` argument) of a tensor that is not representable:
# only the truthfulness of the reported error is checked there, which does not need convergence.
_FIT_SWEEPS = 5
_BACKENDS = ("numpy", "torch", "jax")


def _fail(check: str, fmt, detail: str):
    raise AssertionError(f"check_format[{check}]: {detail}\n  format: {fmt!r}")


def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _jax_by_default() -> bool:
    """Whether the default ``backends`` take jax: installed, with float64 on (x64), which the checks compare in.

    jax is not imported for this unless ``JAX_ENABLE_X64`` asks for x64: a process that has not imported
    jax has no jax arrays to check, and pays no jax import.
    """
    if importlib.util.find_spec("jax") is None:
        return False
    if "jax" not in sys.modules and os.environ.get("JAX_ENABLE_X64", "").lower() not in ("1", "true"):
        return False
    ops_named("jax")
    return jax_x64_enabled()


def _convert(factors: dict, backend: str, dtype=None) -> dict:
    """Copy numpy factors to ``backend`` (and ``dtype``, a dtype or its name, default float64)."""
    if backend == "numpy":
        return {n: np.asarray(a, dtype=dtype or np.float64) for n, a in factors.items()}
    if backend == "jax":
        import jax.numpy as jnp

        dt = jnp.dtype(dtype or "float64")  # ml_dtypes' bfloat16 where numpy has none
        return {n: ops_named("jax").from_numpy(np.asarray(a, dtype=np.float64).astype(dt)) for n, a in factors.items()}
    import torch

    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    return {n: torch.tensor(np.asarray(a), dtype=dtype or torch.float64) for n, a in factors.items()}


def _is_backend(array, backend: str) -> bool:
    if backend == "numpy":
        return isinstance(array, np.ndarray)
    if backend == "jax":
        import jax

        return isinstance(array, jax.Array)
    import torch

    return isinstance(array, torch.Tensor)


def _stack_indices(fmt):
    return list(np.ndindex(*fmt.stack))


def _naive_einsum(equation: str, operands, sizes) -> np.ndarray:
    cost = math.prod(sizes.values()) if sizes else 1
    return np.einsum(equation, *operands, optimize=cost > _NAIVE_EINSUM_LIMIT)


def _operand_names(fmt):
    """The factor of each operand of ``fmt.equation``: ``operand_names`` (a tied name repeats) or ``factor_names``."""
    names = getattr(fmt, "operand_names", None)
    return getattr(fmt, "factor_names", None) if names is None else names


def _reference(fmt, factors):
    """``(dense, |dense| bound)`` from ``fmt.equation`` by plain numpy.einsum, or ``None`` without one."""
    equation = getattr(fmt, "equation", None)
    names = _operand_names(fmt)
    if equation is None or names is None:
        return None
    arrays = [to_numpy(factors[n]).astype(np.float64) for n in names]
    sizes = getattr(fmt, "sizes", {})
    dense = _naive_einsum(equation, arrays, sizes).reshape(fmt.shape)
    bound = _naive_einsum(equation, [np.abs(a) for a in arrays], sizes).reshape(fmt.shape)
    return dense, bound


def _apply_all(dense: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``x @ dense[s].T`` for every slice ``s``: shape ``(*stack, *x.shape[:-1], out)``."""
    flat = x.reshape(-1, x.shape[-1])
    y = np.swapaxes(dense @ flat.T, -1, -2)
    return y.reshape((*dense.shape[:-2], *x.shape[:-1], dense.shape[-2]))


def _swap_last(x, backend: str):
    """Reverse the axes of ``x`` (a view: non-contiguous for more than one non-trivial axis)."""
    return x.permute(*reversed(range(x.ndim))) if backend == "torch" else x.transpose(*reversed(range(x.ndim)))


class _Suite:
    def __init__(self, fmt, backends, seed, fit_tol):
        self.fmt = fmt
        self.backends = backends
        self.seed = seed
        self.fit_tol = 1e-8 if fit_tol is None else float(fit_tol)
        self.rng = np.random.default_rng(seed)
        n = fmt.in_features
        self.x = self.rng.standard_normal((2, 3, n))
        # inputs the format's code may mishandle: more than two leading dims, a transposed view, a strided slice
        self._x_leading = self.rng.standard_normal((2, 3, 4, n))
        self._x_transposed = self.rng.standard_normal((n, 3, 2))  # applied as its transpose, (2, 3, n)
        self._x_strided = self.rng.standard_normal((4, 3, 2 * n))  # applied as [::2, :, ::2], (2, 3, n)
        self._cases = {}

    # Computed on first use, so that the structure check reports a broken `random` before anything uses it.
    @functools.cached_property
    def factors(self) -> dict:
        return {n: to_numpy(a).astype(np.float64) for n, a in self.fmt.random(seed=self.seed).items()}

    def _reference_of(self, factors: dict):
        ref = _reference(self.fmt, factors)
        if ref is None:  # no equation: the format's own numpy to_dense is all there is
            dense = to_numpy(self.fmt.to_dense(_convert(factors, "numpy"))).astype(np.float64)
            ref = (dense, np.abs(dense))
        return ref

    @functools.cached_property
    def _dense_and_bound(self):
        return self._reference_of(self.factors)

    @property
    def dense(self) -> np.ndarray:
        return self._dense_and_bound[0]

    @property
    def dense_bound(self) -> np.ndarray:
        return self._dense_and_bound[1]

    def case(self, backend: str, dtype: str):
        """``(factors, dense, bound)`` in ``backend`` and ``dtype``, the reference in float64; None if unsupported.

        Below float64 the factors are ``self.factors`` rounded to ``dtype``, and the reference is computed
        from the rounded values: what is measured is the format's arithmetic, not the rounding of its input.
        """
        key = (backend, dtype)
        if key not in self._cases:
            if dtype == "float64":
                self._cases[key] = (_convert(self.factors, backend), self.dense, self.dense_bound)
            elif not self._supports(backend, dtype):
                self._cases[key] = None
            else:
                factors = _convert(self.factors, backend, dtype)
                wide = {n: to_numpy(a).astype(np.float64) for n, a in factors.items()}
                self._cases[key] = (factors, *self._reference_of(wide))
        return self._cases[key]

    def _supports(self, backend: str, dtype: str) -> bool:
        """Whether ``random(dtype=dtype)`` accepts ``dtype`` (a refused float32 is the `dtypes` check's to report)."""
        try:
            self.fmt.random(seed=self.seed, backend=backend, dtype=dtype)
        except (TypeError, ValueError):
            return False
        return True

    def cases(self, backend: str):
        """``(dtype, factors, dense, bound)`` for every supported dtype of :data:`DTYPES`, float64 first."""
        for dtype in DTYPES[backend]:
            case = self.case(backend, dtype)
            if case is not None:
                yield (dtype, *case)

    def fail(self, check, detail):
        _fail(check, self.fmt, detail)

    def close(self, check, actual, desired, *, scale=None, rtol=None, what="arrays"):
        try:
            assert_close(actual, desired, rtol=rtol, scale=scale, what=what)
        except AssertionError as exc:
            self.fail(check, str(exc))

    # ------------------------------------------------------------------ structure
    def structure(self):
        fmt = self.fmt
        shapes = fmt.factor_shapes
        if not isinstance(shapes, dict) or not shapes:
            self.fail("structure", f"`factor_shapes` must be a non-empty dict, got {shapes!r}.")
        for name, shape in shapes.items():
            if not isinstance(shape, tuple) or not all(type(n) is int and n >= 1 for n in shape):
                self.fail("structure", f"`factor_shapes[{name!r}]` must be a tuple of positive ints, got {shape!r}.")
        self._shapes_match_equation(shapes)
        frozen = tuple(getattr(fmt, "frozen_names", ()))  # constants, counted apart in `num_frozen`
        total = sum(math.prod(s) for n, s in shapes.items() if n not in frozen)
        if type(fmt.num_params) is not int or fmt.num_params != total:
            self.fail(
                "structure",
                f"`num_params`={fmt.num_params!r} must be the int sum of the factor sizes, {total}"
                f"{f' (frozen {frozen} apart)' if frozen else ''}.",
            )
        if frozen and getattr(fmt, "num_frozen", None) != sum(math.prod(shapes[n]) for n in frozen):
            self.fail("structure", f"`num_frozen`={getattr(fmt, 'num_frozen', None)!r} is not the size of {frozen}.")
        expected = (*fmt.stack, fmt.out_features, fmt.in_features)
        if tuple(fmt.shape) != expected or not all(type(n) is int for n in fmt.shape):
            self.fail("structure", f"`shape`={fmt.shape!r} must be (*stack, out_features, in_features) = {expected}.")
        fac = fmt.random(seed=self.seed)
        if set(fac) != set(shapes):
            self.fail("structure", f"`random` returned factors {sorted(fac)}, expected {sorted(shapes)}.")
        for name, shape in shapes.items():
            got = tuple(fac[name].shape)
            if got != shape:
                self.fail("structure", f"`random()[{name!r}]` has shape {got}, expected {shape}.")
            if not np.any(to_numpy(fac[name])):
                self.fail("structure", f"`random()[{name!r}]` is all zeros; random factors must be non-zero.")
        again = fmt.random(seed=self.seed)
        for name in shapes:
            if not np.array_equal(to_numpy(fac[name]), to_numpy(again[name])):
                self.fail("structure", f"`random(seed={self.seed})[{name!r}]` differs between two calls.")

    def _shapes_match_equation(self, shapes):
        """``factor_shapes`` are the sizes of the letters of each factor's term of ``fmt.equation``, if any."""
        fmt = self.fmt
        equation, names, sizes = getattr(fmt, "equation", None), _operand_names(fmt), getattr(fmt, "sizes", None)
        if not isinstance(equation, str) or names is None or not isinstance(sizes, dict):
            return
        terms = equation.replace(" ", "").split("->")[0].split(",")
        if len(terms) != len(names) or set(names) != set(shapes):  # a name may repeat: a tied factor
            self.fail(
                "structure",
                f"`factor_shapes` names {sorted(shapes)} but `equation`={equation!r} has {len(terms)} operands "
                f"named {list(names)}.",
            )
        for name, term in zip(names, terms, strict=True):
            expected = tuple(sizes.get(c) for c in term)
            if shapes[name] != expected:
                self.fail(
                    "structure",
                    f"`factor_shapes[{name!r}]`={shapes[name]} disagrees with its term {term!r} of `equation`="
                    f"{equation!r}, whose `sizes` give {expected}.",
                )

    # ------------------------------------------------------------------ dense reconstruction
    def to_dense(self):
        for backend in self.backends:
            for dtype, fac, reference, bound in self.cases(backend):
                dense = self.fmt.to_dense(fac)
                label = backend if dtype == "float64" else f"{backend}, {dtype}"
                self._check_array("to_dense", dense, backend, dtype, self.fmt.shape, f"`to_dense` ({label})")
                self.close(
                    "to_dense",
                    dense,
                    reference,
                    scale=bound,
                    rtol=CHECK_TOLERANCES[dtype],
                    what=f"`to_dense` ({label}) and the numpy.einsum reference of the equation (in float64)",
                )

    def _check_array(self, check, array, backend, dtype, shape, what):
        if not _is_backend(array, backend):
            self.fail(check, f"{what} returned {type(array).__name__} for {backend} factors.")
        if str(array.dtype).removeprefix("torch.") != dtype:
            self.fail(check, f"{what} returned dtype {array.dtype} for {dtype} {backend} factors.")
        if tuple(array.shape) != tuple(shape):
            self.fail(check, f"{what} returned shape {tuple(array.shape)}, expected {tuple(shape)}.")

    # ------------------------------------------------------------------ factored apply
    def apply(self):
        for backend in self.backends:
            self._apply_every_slice(backend)
            self._apply_odd_inputs(backend)
            for dtype, fac, dense, bound in self.cases(backend):
                if dtype != "float64":
                    self._apply_in_dtype(backend, dtype, fac, dense, bound)

    def _compare_apply(self, backend, fac, x, x_np, index, dense, bound, *, dtype="float64", what_x=""):
        """``apply(fac, x, index)`` against the float64 reference ``x_np @ dense[index].T``."""
        fmt = self.fmt
        label = backend if dtype == "float64" else f"{backend}, {dtype}"
        y = fmt.apply(fac, x, index=index)
        if index is None:
            shape = (*fmt.stack, *x_np.shape[:-1], fmt.out_features)
            call, desired, scale = "`apply(index=None)`", _apply_all(dense, x_np), _apply_all(bound, np.abs(x_np))
            what = f"{call} ({label}){what_x} and every slice"
        else:
            shape = (*x_np.shape[:-1], fmt.out_features)
            call = f"`apply` at {index}"
            desired, scale = x_np @ dense[index].T, np.abs(x_np) @ bound[index].T
            what = f"`apply(factors, x, index={index})` ({label}){what_x} and `x @ to_dense(factors)[index].T`"
        self._check_array("apply", y, backend, dtype, shape, f"{call}{what_x}")
        self.close("apply", y, desired, scale=scale, rtol=CHECK_TOLERANCES[dtype], what=what)
        return y

    def _apply_every_slice(self, backend):
        fmt, x_np = self.fmt, self.x
        fac, dense, bound = self.case(backend, "float64")
        x = _convert({"x": x_np}, backend)["x"]
        for index in _stack_indices(fmt):
            y = self._compare_apply(backend, fac, x, x_np, index, dense, bound)
            if len(index) == 1:
                self.close("apply", fmt.apply(fac, x, index=index[0]), y, what=f"`apply` at int {index[0]}")
        index = _stack_indices(fmt)[-1]
        vector = _convert({"x": x_np[0, 0]}, backend)["x"]
        self._compare_apply(backend, fac, vector, x_np[0, 0], index, dense, bound, what_x=" of a vector x")
        self._compare_apply(backend, fac, x, x_np, None, dense, bound)

    def _apply_odd_inputs(self, backend):
        """Inputs with three leading dims, a transposed view and a strided slice, at one slice and at every one."""
        fac, dense, bound = self.case(backend, "float64")
        leading = _convert({"x": self._x_leading}, backend)["x"]
        transposed = _swap_last(_convert({"x": self._x_transposed}, backend)["x"], backend)
        strided = _convert({"x": self._x_strided}, backend)["x"][::2, :, ::2]
        inputs = [
            (" of x of shape (2, 3, 4, in_features)", leading, self._x_leading),
            (" of a transposed (non-contiguous) view x", transposed, self._x_transposed.transpose(2, 1, 0)),
            (" of a strided slice x[::2, :, ::2]", strided, self._x_strided[::2, :, ::2]),
        ]
        index = _stack_indices(self.fmt)[-1]
        for what_x, x, x_np in inputs:
            for at in (index, None):
                self._compare_apply(backend, fac, x, x_np, at, dense, bound, what_x=what_x)

    def _apply_in_dtype(self, backend, dtype, fac, dense, bound):
        x = _convert({"x": self.x}, backend, dtype)["x"]
        x_np = to_numpy(x).astype(np.float64)
        for index in (_stack_indices(self.fmt)[-1], None):
            self._compare_apply(backend, fac, x, x_np, index, dense, bound, dtype=dtype)

    # ------------------------------------------------------------------ zero-delta init
    def init(self):
        fmt = self.fmt
        for backend in self.backends:
            fac = fmt.init(seed=self.seed, backend=backend)
            try:
                fmt.check_factors(fac)
            except (TypeError, ValueError) as exc:
                self.fail("init", f"`init` ({backend}) returned invalid factors: {exc}")
            dense = to_numpy(fmt.to_dense(fac))
            if np.any(dense):
                self.fail(
                    "init",
                    f"`init` ({backend}) gives ΔW with max |entry| {np.max(np.abs(dense)):.3g}; it must be exactly 0.",
                )
            x = _convert({"x": self.x}, backend, dtype=fac[next(iter(fac))].dtype)["x"]
            y = to_numpy(fmt.apply(fac, x, index=None))
            if np.any(y):
                self.fail("init", f"`apply` of the `init` factors ({backend}) is not exactly 0.")
            zero = self._zero_factors(fac)
            if not zero:
                self.fail("init", f"`init` ({backend}) gives ΔW == 0 but no factor is zero: no gradient can flow.")
            again = fmt.init(seed=self.seed, backend=backend)
            for name in fac:
                if not np.array_equal(to_numpy(fac[name]), to_numpy(again[name])):
                    self.fail("init", f"`init(seed={self.seed})[{name!r}]` ({backend}) differs between two calls.")
        self._init_gradient_numpy()
        if "torch" in self.backends:
            self._init_gradient_torch()
        if "jax" in self.backends:
            self._init_gradient_jax()

    def _zero_factors(self, fac):
        declared = getattr(self.fmt, "zero_factor", None)
        if declared is not None:
            return [declared]
        return [n for n, a in fac.items() if not np.any(to_numpy(a))]

    def _init_gradient_numpy(self):
        """∂⟨R, ΔW⟩/∂Z for the zero factor Z, by one einsum (ΔW is linear in Z)."""
        fmt = self.fmt
        equation = getattr(fmt, "equation", None)
        if equation is None:
            return
        fac = {n: to_numpy(a) for n, a in fmt.init(seed=self.seed).items()}
        lhs, out = equation.split("->")
        names, terms = list(_operand_names(fmt)), lhs.split(",")
        weights = self.rng.standard_normal(fmt.shape).reshape([fmt.sizes[c] for c in out])
        for name in self._zero_factors(fac):
            if names.count(name) != 1:  # a tied zero factor: ΔW is not linear in it (the format refuses one)
                continue
            k = names.index(name)
            others = [j for j in range(len(names)) if j != k]
            present = set(out).union(*(terms[j] for j in others))
            dangling = [c for c in terms[k] if c not in present]
            operands = [weights, *(fac[names[j]] for j in others), *(np.ones(fmt.sizes[c]) for c in dangling)]
            spec = ",".join([out, *(terms[j] for j in others), *dangling])
            grad = _naive_einsum(f"{spec}->{terms[k]}", operands, fmt.sizes)
            if not np.any(grad):
                self.fail("init", f"the gradient of ΔW with respect to the zero factor {name!r} is 0 at `init`.")

    def _init_gradient_torch(self):
        import torch

        fmt = self.fmt
        fac = {n: a.requires_grad_() for n, a in fmt.init(seed=self.seed, backend="torch", dtype=torch.float64).items()}
        x = torch.from_numpy(self.x)
        weights = torch.from_numpy(self.rng.standard_normal((*fmt.stack, *self.x.shape[:-1], fmt.out_features)))
        try:
            (fmt.apply(fac, x, index=None) * weights).sum().backward()
        except RuntimeError as exc:  # e.g. an output that does not require grad
            self.fail("init", f"torch autograd cannot differentiate `apply` at `init`: {exc}")
        for name in self._zero_factors({n: a.detach() for n, a in fac.items()}):
            grad = fac[name].grad
            if grad is None or not bool(torch.any(grad != 0)):
                self.fail("init", f"torch autograd gives no gradient for the zero factor {name!r} through `apply`.")

    def _init_gradient_jax(self):
        import jax
        import jax.numpy as jnp

        fmt = self.fmt
        fac = fmt.init(seed=self.seed, backend="jax", dtype="float64")
        put = ops_named("jax").from_numpy
        x = put(self.x)
        weights = put(self.rng.standard_normal((*fmt.stack, *self.x.shape[:-1], fmt.out_features)))
        try:  # jitted: one compiled program instead of one per eager operation of the trace
            grads = jax.jit(jax.grad(lambda f: jnp.sum(fmt.apply(f, x, index=None) * weights)))(fac)
        except Exception as exc:  # a jax tracer error: `apply` calls float()/bool() on a value, or numpy on it
            self.fail("init", f"jax.grad cannot differentiate `apply` at `init`: {type(exc).__name__}: {exc}")
        for name in self._zero_factors({n: to_numpy(a) for n, a in fac.items()}):
            grad = grads.get(name) if isinstance(grads, dict) else None
            if grad is None or not np.any(to_numpy(grad)):
                self.fail("init", f"jax.grad gives no gradient for the zero factor {name!r} through `apply`.")

    # ------------------------------------------------------------------ dtypes
    def dtypes(self):
        fmt = self.fmt
        for backend in self.backends:
            if backend == "numpy":
                default, explicit, names = np.float64, np.float32, ("float64", "float32")
            elif backend == "jax":  # with x64 on (check_format requires it), jax's default float is float64
                default, explicit, names = np.float64, np.float32, ("float64", "float32")
            else:
                import torch

                default, explicit = torch.get_default_dtype(), torch.float32
                if default == torch.float32:
                    explicit = torch.float64
                names = (str(default).removeprefix("torch."), str(explicit).removeprefix("torch."))
            for method in ("random", "init"):
                for dtype, name in ((None, names[0]), (explicit, names[1])):
                    fac = getattr(fmt, method)(seed=self.seed, backend=backend, dtype=dtype)
                    for n, a in fac.items():
                        self._check_array(
                            "dtypes", a, backend, name, fmt.factor_shapes[n], f"`{method}(dtype={dtype})[{n!r}]`"
                        )
            fac = fmt.random(seed=self.seed, backend=backend, dtype=explicit)
            self._check_array("dtypes", fmt.to_dense(fac), backend, names[1], fmt.shape, "`to_dense`")
            x = _convert({"x": self.x}, backend, dtype=explicit)["x"]
            index = _stack_indices(fmt)[0]
            self._check_array(
                "dtypes", fmt.apply(fac, x, index=index), backend, names[1], (2, 3, fmt.out_features), "`apply`"
            )

    # ------------------------------------------------------------------ numpy vs torch and jax
    def backends_agree(self):
        fmt = self.fmt
        fac_np = _convert(self.factors, "numpy")
        rtol = CHECK_TOLERANCES["float64"]
        scale = np.einsum("...oi,bci->...bco", self.dense_bound, np.abs(self.x))
        for backend in self.backends:
            if backend == "numpy":
                continue
            fac_b = _convert(self.factors, backend)
            self.close(
                "backends",
                fmt.to_dense(fac_b),
                fmt.to_dense(fac_np),
                scale=self.dense_bound,
                rtol=rtol,
                what=f"numpy and {backend} `to_dense`",
            )
            x_b = _convert({"x": self.x}, backend)["x"]
            self.close(
                "backends",
                fmt.apply(fac_b, x_b, index=None),
                fmt.apply(fac_np, self.x, index=None),
                scale=scale,
                rtol=rtol,
                what=f"numpy and {backend} `apply(index=None)`",
            )

    # ------------------------------------------------------------------ autograd
    def gradcheck(self):
        if "torch" in self.backends:
            self._gradcheck_torch()
        if "jax" in self.backends:
            self._gradcheck_jax()

    def _gradcheck_jax(self):
        """``jax.jit`` of ``apply`` equals the plain call; ``jax.grad`` and ``jax.jvp`` match finite differences.

        Along a random direction ``d`` of the factors and ``x``, both derivatives of ``⟨w, apply⟩`` (``w``
        random) must equal the central difference with step 1e-6 (float64) to 1e-6 of their scale.
        Everything runs jitted and the perturbed points are made in numpy: a handful of compilations.
        """
        import jax
        import jax.numpy as jnp

        fmt = self.fmt
        names = list(fmt.factor_shapes)
        point = [self.factors[n] for n in names] + [self.x[0]]
        put = ops_named("jax").from_numpy
        args = tuple(put(a) for a in point)
        direction = [self.rng.standard_normal(a.shape) for a in point]
        step = 1e-6
        for index in (_stack_indices(fmt)[-1], None):

            def apply(*arrays, index=index):
                return fmt.apply(dict(zip(names, arrays[:-1], strict=True)), arrays[-1], index=index)

            what = f"`apply(index={index})`"
            try:
                jitted = jax.jit(apply)(*args)
            except Exception as exc:  # a tracer error: `apply` calls float()/bool() on a value, or leaves jax
                self.fail("gradcheck", f"jax.jit of {what} failed: {type(exc).__name__}: {exc}")
            plain = apply(*args)
            self.close("gradcheck", jitted, plain, rtol=CHECK_TOLERANCES["float64"], what=f"jax.jit({what}) and it")
            weights = put(self.rng.standard_normal(tuple(plain.shape)))
            scalar = jax.jit(lambda *a, apply=apply, w=weights: jnp.sum(apply(*a) * w))
            tangent = tuple(put(d) for d in direction)
            try:
                grads = jax.jit(jax.grad(scalar, argnums=tuple(range(len(args)))))(*args)
                _, forward = jax.jit(lambda a, t, s=scalar: jax.jvp(s, a, t))(args, tangent)
            except Exception as exc:
                self.fail("gradcheck", f"jax cannot differentiate {what}: {type(exc).__name__}: {exc}")
            reverse = sum(float(np.vdot(to_numpy(g), d)) for g, d in zip(grads, direction, strict=True))
            up = scalar(*(put(a + step * d) for a, d in zip(point, direction, strict=True)))
            down = scalar(*(put(a - step * d) for a, d in zip(point, direction, strict=True)))
            numeric = (float(up) - float(down)) / (2 * step)
            # |derivative| <= Σ ‖grad‖‖d‖; the difference quotient's round-off is about eps·|value|/step
            pairs = zip(grads, direction, strict=True)
            size = sum(float(np.linalg.norm(to_numpy(g)) * np.linalg.norm(d)) for g, d in pairs) + abs(float(up))
            for mode, value in (("jax.grad", reverse), ("jax.jvp", float(forward))):
                if not abs(value - numeric) <= 1e-6 * size:
                    self.fail(
                        "gradcheck",
                        f"{mode} through {what} gives the directional derivative {value:.10g}, finite differences "
                        f"{numeric:.10g} (scale {size:.3g}).",
                    )

    def _gradcheck_torch(self):
        import torch

        fmt = self.fmt
        names = list(fmt.factor_shapes)
        fac = [torch.tensor(self.factors[n], dtype=torch.float64, requires_grad=True) for n in names]
        x = torch.tensor(self.x[0], dtype=torch.float64, requires_grad=True)
        fast = fmt.num_params + x.numel() > _GRADCHECK_FULL_LIMIT
        for index in (_stack_indices(fmt)[-1], None):

            def apply(*arrays, index=index):
                return fmt.apply(dict(zip(names, arrays[:-1], strict=True)), arrays[-1], index=index)

            try:
                torch.autograd.gradcheck(apply, (*fac, x), fast_mode=fast)
            except RuntimeError as exc:  # torch.autograd.GradcheckError
                self.fail("gradcheck", f"torch.autograd.gradcheck through `apply(index={index})` failed: {exc}")

    # ------------------------------------------------------------------ fit
    def fit(self):
        fmt = self.fmt
        drawn = fmt.random(seed=(self.seed + 1) % 2**63)
        # frozen factors are constants: `fit` (seed 0) holds those of `random(seed=0)`, so the target uses them
        drawn |= {n: a for n, a in fmt.random(seed=0).items() if n in getattr(fmt, "frozen_names", ())}
        target = to_numpy(fmt.to_dense(drawn)).astype(np.float64)
        for backend in self.backends:
            dense = _convert({"d": target}, backend)["d"]
            result = fmt.fit(dense)
            if not isinstance(result, tuple) or len(result) != 2:
                self.fail("fit", f"`fit` must return (factors, rel_err), got {type(result).__name__}.")
            fac, err = result
            try:
                fmt.check_factors(fac)
            except (TypeError, ValueError) as exc:
                self.fail("fit", f"`fit` ({backend}) returned invalid factors: {exc}")
            for name, array in fac.items():
                self._check_array("fit", array, backend, "float64", fmt.factor_shapes[name], f"`fit()[{name!r}]`")
            if not isinstance(err, float) or not math.isfinite(err):
                self.fail("fit", f"`fit` ({backend}) must return a finite float error, got {err!r}.")
            rebuilt = to_numpy(fmt.to_dense(fac))
            actual = float(np.linalg.norm(target - rebuilt) / np.linalg.norm(target))
            if abs(err - actual) > 1e-8 * max(1.0, actual):
                self.fail("fit", f"`fit` ({backend}) reported rel_err {err:.3g} but the factors give {actual:.3g}.")
            if actual > 1 + 1e-9:
                self.fail("fit", f"`fit` ({backend}) is worse than the zero tensor: rel_err {actual:.3g} > 1.")
            if actual > self.fit_tol:
                self.fail(
                    "fit",
                    f"`fit` ({backend}) of an exactly representable tensor has rel_err {actual:.3g} > "
                    f"`fit_tol`={self.fit_tol:.3g}.",
                )
        self._fit_is_truthful_off_the_format()
        fac, err = fmt.fit(np.zeros(fmt.shape))
        if err != 0 or np.any(to_numpy(fmt.to_dense(fac))):
            self.fail("fit", f"`fit` of the zero tensor must return ΔW == 0 and rel_err 0, got rel_err {err!r}.")

    def _fit_is_truthful_off_the_format(self):
        """The reported ``rel_err`` of a fit of a random dense tensor (not representable) is its factors' error."""
        fmt = self.fmt
        target = self.rng.standard_normal(fmt.shape)
        try:
            iterative = "n_iter_max" in inspect.signature(fmt.fit).parameters
        except (TypeError, ValueError):  # no signature to read: call it plainly
            iterative = False
        kwargs = {"n_iter_max": _FIT_SWEEPS} if iterative else {}
        for backend in self.backends:
            fac, err = fmt.fit(_convert({"d": target}, backend)["d"], **kwargs)
            if not isinstance(err, float) or not math.isfinite(err):
                self.fail("fit", f"`fit` ({backend}) must return a finite float error, got {err!r}.")
            actual = float(np.linalg.norm(target - to_numpy(fmt.to_dense(fac))) / np.linalg.norm(target))
            if abs(err - actual) > 1e-8 * max(1.0, actual):
                self.fail(
                    "fit",
                    f"`fit` ({backend}) of a random dense tensor (not exactly representable) reported rel_err "
                    f"{err:.6g} but the factors give {actual:.6g}.",
                )

    # ------------------------------------------------------------------ bad input
    def errors(self):
        fmt = self.fmt
        fac = _convert(self.factors, "numpy")
        first = next(iter(fmt.factor_shapes))
        index = _stack_indices(fmt)[0]
        x = self.x[0]
        missing = {n: a for n, a in fac.items() if n != first}
        bad_shape = fac | {first: np.zeros((fac[first].shape[0] + 1, *fac[first].shape[1:]))}
        cases = [
            ("to_dense with a missing factor", "factors", lambda: fmt.to_dense(missing)),
            ("apply with a missing factor", "factors", lambda: fmt.apply(missing, x, index=index)),
            ("to_dense with an extra factor", "factors", lambda: fmt.to_dense(fac | {"not_a_factor": x})),
            ("to_dense with a mis-shaped factor", "factors", lambda: fmt.to_dense(bad_shape)),
            (
                "apply with x of the wrong last dimension",
                "x",
                lambda: fmt.apply(fac, np.ones(fmt.in_features + 1), index=index),
            ),
            (
                "apply with an index of the wrong length",
                "index",
                lambda: fmt.apply(fac, x, index=(0,) * (len(fmt.stack) + 1)),
            ),
            ("fit of a tensor with a NaN", "dense", lambda: fmt.fit(np.full(fmt.shape, np.nan))),
            ("fit of a tensor of the wrong shape", "dense", lambda: fmt.fit(np.ones((*fmt.shape, 1)))),
        ]
        if fmt.stack:
            out_of_range = tuple(fmt.stack)
            cases.append(("apply with an index out of range", "index", lambda: fmt.apply(fac, x, index=out_of_range)))
        for other in ("torch", "jax"):
            if other in self.backends and len(fac) > 1:
                mixed = fac | {first: _convert({first: fac[first]}, other)[first]}
                cases.append(
                    (f"to_dense with numpy and {other} factors mixed", "factors", lambda m=mixed: fmt.to_dense(m))
                )
        for what, argument, call in cases:
            try:
                call()
            except (TypeError, ValueError) as exc:
                if f"`{argument}" not in str(exc):
                    self.fail("errors", f"{what} raised {type(exc).__name__}({exc}), which does not name `{argument}`.")
            except Exception as exc:  # any other exception is the failure being reported
                self.fail("errors", f"{what} raised {type(exc).__name__}({exc}) instead of ValueError or TypeError.")
            else:
                self.fail("errors", f"{what} raised no ValueError or TypeError.")


def _wrap(check: str, fmt, exc: BaseException):
    """Re-raise an exception escaping a check as the AssertionError of that check, chaining it."""
    raise AssertionError(
        f"check_format[{check}]: the check raised {type(exc).__name__}: {exc}\n  format: {fmt!r}"
    ) from exc


#: What :func:`check_format` uses of a format (the vocabulary of :class:`~tensorpeft.decomp.TensorNetwork`).
_FORMAT_ATTRIBUTES = (
    "factor_shapes",
    "shape",
    "stack",
    "out_features",
    "in_features",
    "num_params",
    "random",
    "init",
    "to_dense",
    "apply",
    "fit",
    "check_factors",
)


def _check_fmt(fmt) -> None:
    missing = [a for a in _FORMAT_ATTRIBUTES if not hasattr(fmt, a)]
    if missing:
        raise TypeError(
            f"`fmt` must be a format with the vocabulary of decomp.TensorNetwork, got {type(fmt).__name__} "
            f"without {missing}."
        )


def _names(value, name: str, expected: str) -> tuple[str, ...]:
    """A tuple of str from a collection of str; a lone str (which would iterate by letter) is refused."""
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise TypeError(f"`{name}` must be {expected}, got {value!r}.")
    try:
        items = tuple(islice(value, 64))
    except TypeError as err:  # e.g. a 0-d array, which claims to be iterable
        raise TypeError(f"`{name}` must be {expected}, got {value!r}.") from err
    if len(items) == 64 or not all(isinstance(v, str) for v in items):
        raise TypeError(f"`{name}` must be {expected} (a few str), got {value!r}.")
    return items


def _check_fit_tol(fit_tol) -> float | None:
    if fit_tol is None:
        return None
    if isinstance(fit_tol, bool) or not isinstance(fit_tol, numbers.Real):
        raise TypeError(f"`fit_tol` must be a non-negative number or None, got {fit_tol!r} ({type(fit_tol).__name__}).")
    if not fit_tol >= 0:  # NaN fails too
        raise ValueError(f"`fit_tol` must be a non-negative number (math.inf allowed) or None, got {fit_tol!r}.")
    return float(fit_tol)


def check_format(fmt, *, backends=None, fit_tol: float | None = None, seed: int = 0, skip=()):
    """Run the property suite of a format and raise AssertionError at the first failure.

    Works on any format with the vocabulary of :class:`~tensorpeft.decomp.TensorNetwork` (built-in,
    custom equation or subclass). The checks, in order (names as in :data:`CHECKS`):

    ``structure``
        ``num_params`` is the int sum of the sizes in ``factor_shapes``; ``factor_shapes`` are the sizes
        of the letters of each factor's term of ``fmt.equation``; ``shape`` is
        ``(*stack, out_features, in_features)``; ``random(seed)`` is reproducible, non-zero, of those shapes.
    ``to_dense``
        Equals a plain ``numpy.einsum`` of ``fmt.equation`` (``optimize=False``) in float64, reshaped, in
        every backend and every dtype of :data:`DTYPES` the format supports (float64 and float32; torch
        also bfloat16 where ``random(dtype="bfloat16")`` accepts it), within :data:`CHECK_TOLERANCES` of
        that dtype, and returns that backend's arrays in the factors' dtype. Below float64 the factors are
        the float64 ones rounded, and the reference is computed from the rounded values. (A format without
        an ``equation`` is compared with its own numpy ``to_dense`` in float64.)
    ``apply``
        ``apply(factors, x, index)`` equals the float64 ``x @ to_dense(factors)[index].T`` for every stack
        index (tuple, and plain int for one stack mode), for ``x`` of shape ``(2, 3, in)``, a vector, ``x``
        with three leading dims ``(2, 3, 4, in)``, a transposed (non-contiguous) view and a strided slice;
        ``index=None`` equals all slices at once; and, at one slice and at ``index=None``, in every
        supported dtype as for ``to_dense``.
    ``init``
        ΔW == 0 exactly (and ``apply`` gives exact zeros), reproducibly, yet the gradient with respect
        to the zero factor is non-zero (by one einsum, by torch autograd and by ``jax.grad``).
    ``dtypes``
        numpy defaults to float64, torch to ``torch.get_default_dtype()``, jax (x64 on) to float64; an
        explicit ``dtype`` is honored by ``random``, ``init``, ``to_dense`` and ``apply``.
    ``backends``
        numpy and every other backend tested (float64) give the same ``to_dense`` and ``apply`` to 1e-10.
    ``gradcheck``
        ``torch.autograd.gradcheck`` through ``apply`` (one slice, and ``index=None``) in float64; on jax,
        ``jax.test_util.check_grads`` (forward and reverse mode against finite differences) through the
        same calls, and ``jax.jit`` of them (factors and ``x`` traced) equal to the plain call.
    ``fit``
        ``fit(to_dense(random))`` returns valid factors in the input's backend with a truthful
        ``rel_err`` that is ``<= fit_tol`` and never above 1; the reported ``rel_err`` of a fit of a
        random dense tensor (not exactly representable; 5 sweeps where ``fit`` takes ``n_iter_max``) is
        the error of the returned factors too; the zero tensor is fitted exactly.
    ``errors``
        Missing, extra and mis-shaped factors, numpy factors mixed with torch or jax ones, ``x`` of the
        wrong width, a bad ``index`` and a non-finite or mis-shaped ``dense`` raise ValueError or TypeError
        naming the argument.

    Parameters
    ----------
    fmt : TensorNetwork
        The format under test.
    backends : sequence of {"numpy", "torch", "jax"}, optional
        Array libraries to test. Default: numpy and torch, and jax when it is installed and float64 is
        enabled in it (``jax_enable_x64``, set in the process or by the ``JAX_ENABLE_X64`` variable): the
        checks compare float64 results. "torch" and "jax" are dropped silently when not installed; the
        ``backends`` check needs numpy and another backend, ``gradcheck`` needs torch or jax.
    fit_tol : float, optional
        Largest relative error allowed when fitting an exactly representable tensor; default 1e-8.
        Iterative fits (CP, ALS of a custom network) may need a looser value; ``math.inf`` keeps only
        the consistency checks of ``fit``.
    seed : int
        Seed of the random factors and inputs.
    skip : collection of str
        Names of checks (from :data:`CHECKS`) not to run.

    Returns
    -------
    tuple of str
        Names of the checks that ran (and passed).

    Raises
    ------
    AssertionError
        At the first failing property; the message names the check, what differed and the format. An
        exception the format raises inside a check (a numpy, einsum or torch error) becomes the
        AssertionError of that check, chained to it.
    TypeError
        If ``fmt`` lacks the vocabulary of a format, ``backends`` or ``skip`` is not a collection of str
        (a lone str is refused), or ``fit_tol`` or ``seed`` is not a number.
    ValueError
        If ``backends`` or ``skip`` name something unknown, ``backends`` names jax without x64 enabled,
        ``fit_tol`` is negative or NaN, or ``seed``
        is outside ``[0, 2**63 - 1]``, or the environment variable ``HYPOTHESIS_PROFILE`` names no
        hypothesis profile.

    Notes
    -----
    Every call (as the import of :mod:`tensorpeft.testing`) registers the hypothesis profiles of
    :data:`~tensorpeft.testing.PROFILES` (``ci``, ``thorough``) and loads the one named by
    ``HYPOTHESIS_PROFILE``, so ``HYPOTHESIS_PROFILE=thorough python my_tests.py`` runs a script's
    ``@given`` tests as many times as under the project's pytest configuration.
    At the small sizes of the strategies a call takes about 0.1 to 0.7 s, most of it in ``gradcheck``
    and ``fit``.

    Examples
    --------
    A custom Tucker-2 network written by hand passes the whole suite:

    >>> from tensorpeft import decomp
    >>> from tensorpeft.testing import check_format
    >>> fmt = decomp.TensorNetwork(
    ...     "or,lrs,is->loi", {"o": 4, "r": 2, "l": 3, "s": 2, "i": 5},
    ...     stack_indices="l", out_indices="o", in_indices="i", zero_factor="F1")
    >>> check_format(fmt, backends=("numpy",))
    ('structure', 'to_dense', 'apply', 'init', 'dtypes', 'fit', 'errors')

    A format whose ``apply`` forgets the transpose is caught:

    >>> class Broken(decomp.LoRA):
    ...     def apply(self, factors, x, index=()):
    ...         return x @ self.to_dense(factors)[index]
    >>> check_format(Broken((), 3, 3, rank=1), backends=("numpy",))
    Traceback (most recent call last):
    ...
    AssertionError: check_format[apply]: `apply(factors, x, index=())` (numpy) and ... differ: ...
    """
    _check_fmt(fmt)
    if backends is None:
        backends = ("numpy", "torch", "jax") if _jax_by_default() else ("numpy", "torch")
    backends = _names(backends, "backends", f"a non-empty subset of {_BACKENDS}")
    unknown = [b for b in backends if b not in _BACKENDS]
    if unknown or not backends:
        raise ValueError(f"`backends` must be a non-empty subset of {_BACKENDS}, got {backends!r}.")
    skip = frozenset(_names(skip, "skip", f"a collection of check names from {CHECKS}"))
    if skip - set(CHECKS):
        raise ValueError(f"`skip` names unknown checks {sorted(skip - set(CHECKS))}; known: {CHECKS}.")
    fit_tol = _check_fit_tol(fit_tol)
    seed = check_seed(seed)
    if "torch" in backends and not _torch_available():
        backends = tuple(b for b in backends if b != "torch")
    if "jax" in backends:
        if importlib.util.find_spec("jax") is None:
            backends = tuple(b for b in backends if b != "jax")
        else:
            ops_named("jax")
            if not jax_x64_enabled():
                raise ValueError(
                    f"`backends`={backends!r} names jax, whose checks compare float64 results: enable float64 in "
                    "jax first (jax.config.update('jax_enable_x64', True)), or leave jax out."
                )
    backends = backends or ("numpy",)
    load_env_profile()
    suite = _Suite(fmt, backends, seed, fit_tol)
    steps = {
        "structure": suite.structure,
        "to_dense": suite.to_dense,
        "apply": suite.apply,
        "init": suite.init,
        "dtypes": suite.dtypes,
        "backends": suite.backends_agree,
        "gradcheck": suite.gradcheck,
        "fit": suite.fit,
        "errors": suite.errors,
    }
    ran = []
    for name in CHECKS:
        missing = (name == "gradcheck" and not {"torch", "jax"} & set(backends)) or (
            name == "backends" and ("numpy" not in backends or len(backends) < 2)
        )
        if name in skip or missing:
            continue
        try:
            steps[name]()
        except AssertionError as exc:
            if str(exc).startswith(f"check_format[{name}]"):
                raise
            _wrap(name, fmt, exc)
        except Exception as exc:  # a raw numpy, einsum or torch error: still a failure of this check
            _wrap(name, fmt, exc)
        ran.append(name)
    return tuple(ran)
