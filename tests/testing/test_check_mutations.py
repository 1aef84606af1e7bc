"""Mutation test of ``check_format``: every deliberate bug, in Tucker2, CP and a custom network, is caught.

Each mutant is a subclass of a correct format with ONE bug (a mixin listed in ``MUTANTS``), and
``check_format`` must raise an AssertionError naming the check that owns the broken property — never a
raw numpy, einsum or torch exception, and never a pass. The unmutated formats pass every check.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from tensorpeft import decomp, testing


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _is_torch(a) -> bool:
    torch = _torch()
    return torch is not None and isinstance(a, torch.Tensor)


def _dtype_name(a) -> str:
    return str(a.dtype).removeprefix("torch.")


def _contiguous(x) -> bool:
    return x.is_contiguous() if _is_torch(x) else x.flags.c_contiguous


def _as_contiguous_memory(x):
    """The bug of reading a view's memory as if it were C-contiguous (strides of a fresh array)."""
    strides = [1] * x.ndim
    for k in range(x.ndim - 2, -1, -1):
        strides[k] = strides[k + 1] * x.shape[k + 1]
    if _is_torch(x):
        return _torch().as_strided(x, tuple(x.shape), tuple(strides))
    return np.lib.stride_tricks.as_strided(x, x.shape, [s * x.itemsize for s in strides], writeable=False)


# ---------------------------------------------------------------------------------------- the bases

FACT_TK = dict(
    equation="or,rqk,lk,iq->loi",
    stack_indices="l",
    out_indices="o",
    in_indices="i",
    factor_names=("U", "C", "P", "V"),
    zero_factor="C",
)

#: name -> (format class, arguments of a non-square instance, of a square one, fit_tol)
BASES = {
    "Tucker2": (decomp.Tucker2, dict(stack=(3,), out_features=4, in_features=6, rank=(4, 2)), None),
    "CP": (decomp.CP, dict(stack=(2, 3), out_features=6, in_features=4, rank=2, heads=3), 1e-4),
    "network": (decomp.TensorNetwork, dict(FACT_TK, sizes={"o": 6, "i": 5, "r": 2, "q": 2, "k": 2, "l": 3}), 1e-6),
}
SQUARE = {
    "Tucker2": dict(stack=(3,), out_features=5, in_features=5, rank=2),
    "CP": dict(stack=(2, 3), out_features=6, in_features=6, rank=2, heads=3),
    "network": dict(FACT_TK, sizes={"o": 5, "i": 5, "r": 2, "q": 2, "k": 2, "l": 3}),
}


# ---------------------------------------------------------------------------------------- the bugs, one each


class Float32ApplyOff:
    """``apply`` 1% wrong in float32 only (a float32 fast path with a bad constant)."""

    def apply(self, factors, x, index=()):
        y = super().apply(factors, x, index=index)
        return y * 1.01 if _dtype_name(y) == "float32" else y


class Float32DenseOff:
    """``to_dense`` 1% wrong in float32 only."""

    def to_dense(self, factors):
        dense = super().to_dense(factors)
        return dense * 1.01 if _dtype_name(dense) == "float32" else dense


class LeadingDimsMixed:
    """``apply`` wrong only for x with more than two leading dims: the batch rows come back rotated."""

    def apply(self, factors, x, index=()):
        y = super().apply(factors, x, index=index)
        if x.ndim <= 3:
            return y
        return _torch().roll(y, 1, 0) if _is_torch(y) else np.roll(y, 1, axis=0)


class NonContiguousRead:
    """``apply`` wrong only for non-contiguous x: it reads the view's memory as if it were contiguous."""

    def apply(self, factors, x, index=()):
        if not _contiguous(x):
            x = _as_contiguous_memory(x)
        return super().apply(factors, x, index=index)


class SquaredError:
    """``fit`` reports the squared relative error (invisible on an exactly representable tensor)."""

    def fit(self, dense, *, n_iter_max=None, **kwargs):
        if n_iter_max is not None:
            kwargs["n_iter_max"] = n_iter_max
        factors, err = super().fit(dense, **kwargs)
        return factors, err**2


class ShapesDisagree:
    """``factor_shapes`` disagree with the equation (the arrays then fail deep inside einsum)."""

    @property
    def factor_shapes(self):
        shapes = dict(super().factor_shapes)
        first = next(iter(shapes))
        shapes[first] = (shapes[first][0] + 1, *shapes[first][1:])
        return shapes


class TransposedApply:
    """``apply`` forgets the transpose: a raw matmul error on a non-square format, wrong values on a square one."""

    def apply(self, factors, x, index=()):
        if index is None:
            return super().apply(factors, x, index=None)
        return x @ self.to_dense(factors)[index]


class WrongCount:
    @property
    def num_params(self):
        return super().num_params + 1


class FloatCount:
    @property
    def num_params(self):
        return float(super().num_params)


class UnseededRandom:
    calls = 0

    def random(self, seed=0, backend="numpy", dtype=None):
        UnseededRandom.calls += 1
        return super().random(seed=seed + UnseededRandom.calls, backend=backend, dtype=dtype)


class ScaledDense:
    def to_dense(self, factors):
        return 2 * super().to_dense(factors)


class FirstSliceOnly:
    def apply(self, factors, x, index=()):
        if index is None:
            return super().apply(factors, x, index=None)
        return super().apply(factors, x, index=(0,) * len(self.stack))


class BatchFirstForNone:
    def apply(self, factors, x, index=()):
        y = super().apply(factors, x, index=index)
        if index is None:  # (stack, *batch, out) returned as (*batch, stack, out)
            return _torch().movedim(y, 0, -2) if _is_torch(y) else np.moveaxis(y, 0, -2)
        return y


class RandomInit:
    def init(self, seed=0, backend="numpy", dtype=None):
        return self.random(seed=seed, backend=backend, dtype=dtype)


class AllZeroInit:
    def init(self, seed=0, backend="numpy", dtype=None):
        return {n: a * 0 for n, a in self.random(seed=seed, backend=backend, dtype=dtype).items()}


class IgnoresDtype:
    def random(self, seed=0, backend="numpy", dtype=None):
        return super().random(seed=seed, backend=backend, dtype=None)


class Detached:
    def apply(self, factors, x, index=()):
        y = super().apply(factors, x, index=index)
        return y.detach() if _is_torch(y) else y


class TorchDiffers:
    def to_dense(self, factors):
        dense = super().to_dense(factors)
        return dense + 1e-6 if _is_torch(dense) else dense


class LyingFit:
    def fit(self, dense, **kwargs):
        factors, _ = super().fit(dense)
        return {n: a * 0 for n, a in factors.items()}, 0.0


class PoorFit:
    def fit(self, dense, **kwargs):
        factors, _ = super().fit(dense)
        first = self.factor_names[0]
        factors[first] = factors[first] * 0.5  # honest about its error, but far from exact
        return factors, self.relative_error(dense, factors)


class NoValidation:
    def check_factors(self, factors, argument="factors"):
        from tensorpeft.decomp._backend import ops_for

        return ops_for(*factors.values())


class VagueError:
    def apply(self, factors, x, index=()):
        if x.shape[-1] != self.in_features:
            raise ValueError("bad input")
        return super().apply(factors, x, index=index)


# (mixin, square instance?, skip, check that must catch it, regex of the message, backends to run alone)
BOTH = ("numpy", "torch")
MUTANTS = [
    (Float32ApplyOff, False, (), "apply", r"\((numpy|torch), float32\) and `x @ to_dense", BOTH),
    (Float32DenseOff, False, (), "to_dense", r"`to_dense` \((numpy|torch), float32\)", BOTH),
    (LeadingDimsMixed, False, (), "apply", r"of x of shape \(2, 3, 4, in_features\)", BOTH),
    (NonContiguousRead, False, (), "apply", r"of a transposed \(non-contiguous\) view x", BOTH),
    (SquaredError, False, (), "fit", r"reported rel_err", ()),
    (ShapesDisagree, False, (), "structure", r"disagrees with its term", ()),
    (TransposedApply, False, (), "apply", r"the check raised (ValueError|RuntimeError)", ()),
    (TransposedApply, True, (), "apply", r"`apply\(factors, x, index=\(0,( 0)?\)\)` \(numpy\) .* differ", ()),
    (WrongCount, False, (), "structure", r"`num_params`=\d+ must be the int sum", ()),
    (FloatCount, False, (), "structure", r"`num_params`=\d+\.0", ()),
    (UnseededRandom, False, (), "structure", r"differs between two calls", ()),
    (ScaledDense, False, (), "to_dense", r"`to_dense` \(numpy\) and the numpy\.einsum reference", ()),
    (FirstSliceOnly, False, (), "apply", r"index=\((1,|0, 1)\)", ()),
    (BatchFirstForNone, False, (), "apply", r"`apply\(index=None\)`", ()),
    (RandomInit, False, (), "init", r"it must be exactly 0", ()),
    (AllZeroInit, False, (), "init", r"gradient of ΔW with respect to the zero factor", ()),
    (IgnoresDtype, False, ("init",), "dtypes", r"returned dtype float64 for float32", ()),
    (Detached, False, (), "init", r"torch autograd cannot differentiate `apply`", ()),
    (Detached, False, ("init",), "gradcheck", r"gradcheck through `apply\(index=\(.*\)\)` failed", ()),
    (TorchDiffers, False, (), "to_dense", r"`to_dense` \(torch\)", ()),
    (TorchDiffers, False, ("to_dense", "init"), "backends", r"numpy and torch `to_dense` differ", ()),
    (LyingFit, False, (), "fit", r"reported rel_err 0 but the factors give 1", ()),
    (PoorFit, False, (), "fit", r"has rel_err .* > `fit_tol`", ()),
    (NoValidation, False, (), "errors", r"missing factor raised KeyError", ()),
    (VagueError, False, (), "errors", r"raised ValueError\(bad input\), which does not name `x`", ()),
]
NEEDS_TORCH = {"gradcheck", "backends"}


def _mutant(mixin, base: str, square: bool):
    cls, kwargs, fit_tol = BASES[base]
    mutant = type(f"{mixin.__name__}{cls.__name__}", (mixin, cls), {})
    return mutant(**(SQUARE[base] if square else kwargs)), fit_tol


def _cases():
    for mixin, square, skip, check, match, alone in MUTANTS:
        for base in BASES:
            for backends in [BOTH] + [(b,) for b in alone]:
                tag = f"{mixin.__name__}{'-square' if square else ''}-{base}-{'+'.join(backends)}"
                yield pytest.param(mixin, base, square, skip, check, match, backends, id=tag)


@pytest.mark.parametrize("base", sorted(BASES))
@pytest.mark.parametrize("square", [False, True], ids=["rectangular", "square"])
def test_unmutated_formats_pass(base, square):
    cls, kwargs, fit_tol = BASES[base]
    fmt = cls(**(SQUARE[base] if square else kwargs))
    expected = testing.CHECKS if _torch() is not None else tuple(c for c in testing.CHECKS if c not in NEEDS_TORCH)
    assert testing.check_format(fmt, fit_tol=fit_tol) == expected


@pytest.mark.parametrize(("mixin", "base", "square", "skip", "check", "match", "backends"), list(_cases()))
def test_check_format_catches_the_mutant(mixin, base, square, skip, check, match, backends):
    needs_torch = check in NEEDS_TORCH or "torch" in backends or mixin in (Detached, TorchDiffers)
    if needs_torch and _torch() is None:
        pytest.skip("torch is not installed")
    fmt, fit_tol = _mutant(mixin, base, square)
    if check in ("fit", "errors"):
        skip = (*skip, "gradcheck")  # not under test here, and the slowest check
    with pytest.raises(AssertionError, match=rf"^check_format\[{check}\]: (.|\n)*{match}") as info:
        testing.check_format(fmt, backends=backends, fit_tol=fit_tol, skip=skip)
    assert f"format: {fmt!r}" in str(info.value)


def test_a_raw_exception_is_chained():
    fmt, _ = _mutant(TransposedApply, "Tucker2", square=False)
    with pytest.raises(AssertionError, match=r"check_format\[apply\]: the check raised ValueError") as info:
        testing.check_format(fmt, backends=("numpy",))
    assert isinstance(info.value.__cause__, ValueError)


def test_the_float32_bug_is_caught_by_the_dtype_sweep_alone():
    # without the sweep (float64 only) the mutant passes: the bug lives in float32 only
    fmt, _ = _mutant(Float32ApplyOff, "network", square=False)
    y64 = fmt.apply(fmt.random(seed=0), np.ones((2, fmt.in_features)), index=0)
    base = decomp.TensorNetwork(**BASES["network"][1])
    assert np.array_equal(y64, base.apply(base.random(seed=0), np.ones((2, fmt.in_features)), index=0))
    assert math.isclose(testing.CHECK_TOLERANCES["float32"], testing.TOLERANCES["float32"])


class AssertsInside:
    """A format whose own code fails a bare ``assert``: still reported as the failure of the check it broke."""

    def apply(self, factors, x, index=()):
        assert x.ndim <= 3, "internal: at most two leading dims"
        return super().apply(factors, x, index=index)


def test_a_bare_assertion_of_the_format_names_the_check():
    fmt, _ = _mutant(AssertsInside, "Tucker2", square=False)
    match = r"^check_format\[apply\]: the check raised AssertionError: internal: at most two leading dims"
    with pytest.raises(AssertionError, match=match):
        testing.check_format(fmt, backends=("numpy",))


def test_bfloat16_arrays_are_compared():
    torch = pytest.importorskip("torch")
    testing.assert_close(torch.ones(3, dtype=torch.bfloat16), np.ones(3))
    with pytest.raises(AssertionError, match=r"max abs error 0\.0625"):
        testing.assert_close(torch.full((2,), 1.0625, dtype=torch.bfloat16), np.ones(2))
