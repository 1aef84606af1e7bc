"""tensorpeft.testing: the strategies draw what they promise, and check_format catches broken formats."""

import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorpeft import decomp, testing
from tensorpeft.decomp.validate import normalize_index
from tensorpeft.testing import _checks

# ---------------------------------------------------------------------------------------- check_format passes


@given(testing.formats())
def test_check_format_passes_on_every_builtin_format(f):
    # CP-ALS can crawl through swamps on random instances (and take its 500 sweeps): CP fits are
    # tested on chosen instances in tests/decomp/test_fit.py.
    skip = ("fit",) if isinstance(f, decomp.CP) else ()
    ran = testing.check_format(f, skip=skip)
    assert {"structure", "to_dense", "apply", "init", "dtypes", "errors"} <= set(ran)


@pytest.mark.slow
@settings(max_examples=300)
@given(st.one_of(testing.formats(max_features=8), testing.tensor_networks(max_factors=5, max_size=4)))
def test_check_format_thorough(f):
    """Many more and larger instances than the default run, CP fits included (loosely: ALS swamps)."""
    fit_tol = math.inf if isinstance(f, decomp.CP) or type(f) is decomp.TensorNetwork else None
    assert testing.check_format(f, fit_tol=fit_tol)[-1] == "errors"


@given(testing.tensor_networks())
def test_check_format_passes_on_random_networks(f):
    # ALS on random networks need not recover them (and is the slow part): its consistency is checked
    # by test_fit.py::test_als_on_random_networks_never_worse_than_zero and the thorough run below.
    ran = testing.check_format(f, skip=("fit",))
    assert ran[0] == "structure" and ran[-1] == "errors"


@pytest.mark.parametrize(
    "f",
    [
        decomp.LoRA((2, 2), 3, 5, rank=2),
        decomp.Tucker2((3,), 4, 6, rank=(4, 2)),
        decomp.CP((2, 3), 6, 4, rank=2, heads=3),
        decomp.TensorTrain((2,), 6, 4, rank=(2, 3, 2), share_stack=False, in_modes=(2, 2), out_modes=(3, 2)),
        decomp.TensorTrain((3,), 4, 4, rank=2, in_modes=(4, 1), out_modes=(2, 2)),
        decomp.OrthogonalProjection((2,), 5, 4, rank=2, inner=3),
    ],
    ids=repr,
)
def test_check_format_runs_every_check_on_fixed_formats(f):
    fit_tol = 1e-4 if isinstance(f, decomp.CP) else None
    assert testing.check_format(f, fit_tol=fit_tol) == testing.CHECKS


def test_check_format_without_torch(monkeypatch):
    monkeypatch.setattr(_checks, "_torch_available", lambda: False)
    ran = testing.check_format(decomp.LoRA((2,), 3, 4, rank=1))
    assert "backends" not in ran and "gradcheck" not in ran
    assert "apply" in ran


def test_check_format_in_a_process_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"  # `import torch` now raises ImportError
        "from tensorpeft import decomp, testing\n"
        "print(','.join(testing.check_format(decomp.Tucker2((2,), 4, 3, rank=2))))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "structure,to_dense,apply,init,dtypes,fit,errors"


def test_check_format_torch_only_and_skip():
    pytest.importorskip("torch")
    ran = testing.check_format(decomp.LoRA((2,), 3, 4, rank=1), backends=("torch",), skip=("fit", "errors"))
    assert ran == ("structure", "to_dense", "apply", "init", "dtypes", "gradcheck")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(backends=("cupy",)), r"`backends` must be a non-empty subset"),
        (dict(backends=()), r"`backends` must be a non-empty subset"),
        (dict(skip=("speed",)), r"`skip` names unknown checks \['speed'\]"),
    ],
)
def test_check_format_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        testing.check_format(decomp.LoRA((), 2, 2, rank=1), **kwargs)


# ---------------------------------------------------------------------------------------- check_format catches bugs


class WrongCount(decomp.LoRA):
    @property
    def num_params(self):
        return super().num_params + 1


class FloatCount(decomp.LoRA):
    @property
    def num_params(self):
        return float(super().num_params)


class UnseededRandom(decomp.LoRA):
    calls = 0

    def random(self, seed=0, backend="numpy", dtype=None):
        UnseededRandom.calls += 1
        return super().random(seed=seed + UnseededRandom.calls, backend=backend, dtype=dtype)


class ScaledDense(decomp.LoRA):
    def to_dense(self, factors):
        return 2 * super().to_dense(factors)


class NoTranspose(decomp.LoRA):
    def apply(self, factors, x, index=()):
        if index is None:
            return super().apply(factors, x, index=None)
        return x @ self.to_dense(factors)[index]


class FirstSliceOnly(decomp.Tucker2):
    def apply(self, factors, x, index=()):
        if index is None:
            return super().apply(factors, x, index=None)
        return super().apply(factors, x, index=(0,) * len(self.stack))


class BatchFirstForNone(decomp.Tucker2):
    def apply(self, factors, x, index=()):
        y = super().apply(factors, x, index=index)
        if index is None:  # (stack, *batch, out) returned as (*batch, stack, out)
            return np.moveaxis(y, 0, -2)
        return y


class RandomInit(decomp.LoRA):
    def init(self, seed=0, backend="numpy", dtype=None):
        return self.random(seed=seed, backend=backend, dtype=dtype)


class AllZeroInit(decomp.LoRA):
    def init(self, seed=0, backend="numpy", dtype=None):
        return {n: a * 0 for n, a in self.random(seed=seed, backend=backend, dtype=dtype).items()}


class IgnoresDtype(decomp.LoRA):
    def random(self, seed=0, backend="numpy", dtype=None):
        return super().random(seed=seed, backend=backend, dtype=None)


class Detached(decomp.LoRA):
    def apply(self, factors, x, index=()):
        y = super().apply(factors, x, index=index)
        return y.detach() if hasattr(y, "detach") else y


class TorchDiffers(decomp.LoRA):
    def to_dense(self, factors):
        dense = super().to_dense(factors)
        return dense + 1e-6 if hasattr(dense, "detach") else dense


class LyingFit(decomp.LoRA):
    def fit(self, dense, **kwargs):
        factors, _ = super().fit(dense)
        return {n: a * 0 for n, a in factors.items()}, 0.0


class PoorFit(decomp.LoRA):
    def fit(self, dense, **kwargs):
        factors, _ = super().fit(dense)
        factors["A"][..., 1:, :] = 0  # keeps only the leading rank-1 part: honest, but not exact
        return factors, self.relative_error(dense, factors)


class NoValidation(decomp.LoRA):
    def check_factors(self, factors, argument="factors"):
        from tensorpeft.decomp._backend import ops_for

        return ops_for(*factors.values())


class VagueError(decomp.LoRA):
    def apply(self, factors, x, index=()):
        if x.shape[-1] != self.in_features:
            raise ValueError("bad input")
        return super().apply(factors, x, index=index)


BROKEN = [
    (WrongCount((2,), 3, 4, rank=2), (), "structure", r"`num_params`=29 must be the int sum of the factor sizes, 28"),
    (FloatCount((2,), 3, 4, rank=2), (), "structure", r"`num_params`=28\.0"),
    (UnseededRandom((2,), 3, 4, rank=2), (), "structure", r"differs between two calls"),
    (ScaledDense((2,), 3, 4, rank=2), (), "to_dense", r"`to_dense` \(numpy\) and the numpy\.einsum reference"),
    (NoTranspose((), 4, 4, rank=2), (), "apply", r"`apply\(factors, x, index=\(\)\)` \(numpy\)"),
    (FirstSliceOnly((3,), 4, 5, rank=2), (), "apply", r"index=\(1,\)"),
    (BatchFirstForNone((3,), 4, 5, rank=2), (), "apply", r"`apply\(index=None\)`"),
    (RandomInit((2,), 3, 4, rank=2), (), "init", r"it must be exactly 0"),
    (AllZeroInit((2,), 3, 4, rank=2), (), "init", r"gradient of ΔW with respect to the zero factor 'B' is 0"),
    (IgnoresDtype((2,), 3, 4, rank=2), ("init",), "dtypes", r"returned dtype float64 for float32"),
    (Detached((2,), 3, 4, rank=2), (), "init", r"torch autograd cannot differentiate `apply`"),
    (Detached((2,), 3, 4, rank=2), ("init",), "gradcheck", r"gradcheck through `apply\(index=\(1,\)\)` failed"),
    (TorchDiffers((2,), 3, 4, rank=2), (), "to_dense", r"`to_dense` \(torch\)"),
    (TorchDiffers((2,), 3, 4, rank=2), ("to_dense", "init"), "backends", r"numpy and torch `to_dense` differ"),
    (LyingFit((2,), 3, 4, rank=2), (), "fit", r"reported rel_err 0 but the factors give 1"),
    (PoorFit((2,), 3, 4, rank=2), (), "fit", r"has rel_err .* > `fit_tol`=1e-08"),
    (NoValidation((2,), 3, 4, rank=2), (), "errors", r"missing factor raised KeyError"),
    (VagueError((2,), 3, 4, rank=2), (), "errors", r"raised ValueError\(bad input\), which does not name `x`"),
]


@pytest.mark.parametrize(
    ("f", "skip", "check", "match"), BROKEN, ids=[type(b[0]).__name__ + "-" + b[2] for b in BROKEN]
)
def test_check_format_catches_broken_formats(f, skip, check, match):
    if check in ("gradcheck", "backends") or "torch" in match:
        pytest.importorskip("torch")
    with pytest.raises(AssertionError, match=rf"check_format\[{check}\]: (.|\n)*{match}") as info:
        testing.check_format(f, skip=skip)
    assert f"format: {f!r}" in str(info.value)


def test_check_format_fit_tol_loosens():
    f = PoorFit((2,), 3, 4, rank=2)
    ran = testing.check_format(f, fit_tol=math.inf)
    assert "fit" in ran
    with pytest.raises(AssertionError, match=r"check_format\[fit\]"):
        testing.check_format(f, fit_tol=1e-3)


# ---------------------------------------------------------------------------------------- strategies


@given(testing.formats())
def test_formats_are_small_and_valid(f):
    assert len(f.stack) <= 2
    assert all(1 <= n <= 3 for n in f.stack)
    assert 1 <= f.out_features <= 6 and 1 <= f.in_features <= 6
    assert f == type(f)(**f._args())  # the arguments rebuild the same format


@given(testing.tucker2_formats())
def test_tucker2_ranks_within_bounds(f):
    r_out, r_in = f.rank
    assert 1 <= r_out <= f.out_features and 1 <= r_in <= f.in_features


@given(testing.tensor_train_formats())
def test_tt_modes_and_ranks_within_bounds(f):
    assert math.prod(f.in_modes) == f.in_features and math.prod(f.out_modes) == f.out_features
    train = (*f.stack, *f.in_modes, *f.out_modes) if f.share_stack else (*f.in_modes, *f.out_modes)
    for k, r in enumerate(f.rank):
        assert 1 <= r <= min(math.prod(train[: k + 1]), math.prod(train[k + 1 :]))


@given(testing.cp_formats(max_rank=2))
def test_cp_heads_divide_out_features(f):
    assert f.rank <= 2
    assert f.heads is None or f.out_features % f.heads == 0


@given(testing.orthogonal_formats())
def test_orthogonal_inner_within_bounds(f):
    assert 1 <= f.rank <= f.inner <= min(f.out_features, f.in_features)


def _is_dangling(f, c):
    return (
        c not in f.stack_indices + f.out_indices + f.in_indices and sum(c in t for t in f.factor_indices.values()) == 1
    )


# What each strategy must be able to draw: (strategy, {description: condition}).
COVERAGE = {
    "formats": (
        testing.formats(),
        {
            "an unstacked format": lambda f: f.stack == (),
            "two stack modes": lambda f: len(f.stack) == 2,
            "every built-in format": lambda f: True,
        },
    ),
    "tucker2": (testing.tucker2_formats(), {"rectangular ranks": lambda f: f.rank[0] != f.rank[1]}),
    "cp": (
        testing.cp_formats(),
        {
            "a head split": lambda f: f.heads is not None and 1 < f.heads < f.out_features,
            "no head split": lambda f: f.heads is None,
            "a rank above the features": lambda f: f.rank > max(f.out_features, f.in_features),
        },
    ),
    "tt": (
        testing.tensor_train_formats(),
        {
            "one train per slice": lambda f: not f.share_stack and f.stack,
            "stack modes in the train": lambda f: f.share_stack and f.stack,
            "a size-1 mode": lambda f: 1 in f.in_modes + f.out_modes,
            "uneven bond ranks": lambda f: len(set(f.rank)) > 1,
            "three input modes": lambda f: len(f.in_modes) >= 3,
        },
    ),
    "orthogonal": (testing.orthogonal_formats(), {"inner > rank": lambda f: f.inner > f.rank}),
    "networks": (
        testing.tensor_networks(),
        {
            "two stack modes": lambda f: len(f.stack_indices) == 2,
            "split features": lambda f: len(f.out_indices) == 2,
            "a hyperedge": lambda f: any(sum(c in t for t in f.factor_indices.values()) >= 3 for c in f.sizes),
            "a dangling bond": lambda f: any(_is_dangling(f, c) for c in f.sizes),
            "a single factor": lambda f: len(f.factor_names) == 1,
            "a frozen factor": lambda f: bool(f.frozen_names),
            "two frozen factors": lambda f: len(f.frozen_names) >= 2,
        },
    ),
}


@pytest.mark.parametrize("name", sorted(COVERAGE))
def test_strategies_reach(name):
    strategy, conditions = COVERAGE[name]
    kinds, reached = set(), set()

    @settings(max_examples=100, database=None, derandomize=True)
    @given(strategy)
    def draw(f):
        kinds.add(type(f))
        reached.update(what for what, condition in conditions.items() if condition(f))

    draw()
    assert reached == set(conditions), f"never drawn: {sorted(set(conditions) - reached)}"
    if name == "formats":
        assert len(kinds) == 5


@given(testing.tensor_networks(max_elements=20))
def test_tensor_networks_respect_max_elements(f):
    assert all(math.prod(s) <= 20 for s in f.factor_shapes.values())
    assert math.prod(f.shape) <= 20


@given(st.data())
def test_factors_strategy(data):
    f = data.draw(testing.formats(max_features=4))
    fac = data.draw(testing.factors(f, dtype=np.float32, bound=0.5))
    assert {n: a.shape for n, a in fac.items()} == f.factor_shapes
    assert all(a.dtype == np.float32 and np.all(np.abs(a) <= 0.5) for a in fac.values())
    f.check_factors(fac)


def test_factors_and_inputs_in_torch():
    torch = pytest.importorskip("torch")
    f = decomp.Tucker2((2,), 3, 4, rank=2)

    @settings(max_examples=10)
    @given(testing.factors(f, backend="torch"), testing.inputs(f, backend="torch"), testing.indices(f))
    def check(fac, x, index):
        assert all(isinstance(a, torch.Tensor) and a.dtype == torch.float64 for a in fac.values())
        assert isinstance(x, torch.Tensor) and x.shape[-1] == 4
        assert f.apply(fac, x, index=index).shape == (*x.shape[:-1], 3)

    check()


@given(st.data())
def test_inputs_and_indices_strategies(data):
    f = data.draw(testing.formats())
    x = data.draw(testing.inputs(f, max_batch_dims=1, max_batch=2))
    assert x.shape[-1] == f.in_features and x.ndim <= 2 and all(n <= 2 for n in x.shape[:-1])
    index = data.draw(testing.indices(f))
    assert len(index) == len(f.stack)
    normalize_index(index, f.stack)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: testing.lora_formats(max_features=0), r"`max_features`"),
        (lambda: testing.tucker2_formats(stack_modes=-1), r"`stack_modes`"),
        (lambda: testing.cp_formats(max_rank=1.5), r"`max_rank`"),
        (lambda: testing.tensor_train_formats(max_stack=0), r"`max_stack`"),
        (lambda: testing.tensor_networks(max_factors=0), r"`max_factors`"),
        (lambda: testing.factors(decomp.LoRA((), 2, 2, 1), backend="cupy"), r"`backend`"),
        (lambda: testing.factors(decomp.LoRA((), 2, 2, 1), dtype="int64"), r"`dtype`"),
        (lambda: testing.factors(decomp.LoRA((), 2, 2, 1), bound=-1.0), r"`bound`"),
        (lambda: testing.inputs(decomp.LoRA((), 2, 2, 1), max_batch=0), r"`max_batch`"),
    ],
)
def test_strategy_arguments_are_validated(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


# ---------------------------------------------------------------------------------------- assert_close, tolerance


def test_tolerance_by_dtype():
    assert testing.tolerance(np.float64) == testing.TOLERANCES["float64"] == 1e-10
    assert testing.tolerance("float32") == 1e-4
    with pytest.raises(ValueError, match=r"`dtype` must be one of .* got 'int64'"):
        testing.tolerance("int64")


def test_tolerance_of_torch_dtypes():
    torch = pytest.importorskip("torch")
    assert testing.tolerance(torch.float64) == 1e-10
    assert testing.tolerance(torch.bfloat16) == 1e-2


def test_assert_close():
    testing.assert_close(np.array([1.0, 2.0]), np.array([1.0, 2.0 + 1e-11]))
    with pytest.raises(AssertionError, match=r"y differ: max abs error 0\.01 .*at index \(1,\)"):
        testing.assert_close(np.array([1.0, 2.01]), np.array([1.0, 2.0]), what="y")
    with pytest.raises(AssertionError, match=r"different shapes: \(2,\) != \(3,\)"):
        testing.assert_close(np.ones(2), np.ones(3))
    with pytest.raises(AssertionError, match=r"max abs error nan"):
        testing.assert_close(np.array([np.nan]), np.array([1.0]))
    # the scale argument: an error relative to the magnitude of the terms, not of their (cancelled) sum
    testing.assert_close(np.array([1e-12]), np.array([0.0]), scale=np.array([1.0]))
    with pytest.raises(AssertionError):
        testing.assert_close(np.array([1e-12]), np.array([0.0]))
    # float32 arrays get the float32 tolerance
    testing.assert_close(np.float32([1.0 + 1e-6]), np.float32([1.0]))


# ---------------------------------------------------------------------------------------- argument bounds

LORA = decomp.LoRA((), 2, 2, rank=1)


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: testing.lora_formats(stack_modes=1.5), TypeError, r"`stack_modes` must be a non-negative integer"),
        (lambda: testing.lora_formats(stack_modes=9), ValueError, r"`stack_modes` .* at most 8, got 9"),
        (lambda: testing.cp_formats(max_features=2**40), ValueError, r"`max_features` must be at most"),
        (lambda: testing.tensor_train_formats(max_rank=2**40), ValueError, r"`max_rank` must be at most"),
        (lambda: testing.tensor_networks(stack_modes=20), ValueError, r"`stack_modes` .* at most 19"),
        (lambda: testing.tensor_networks(max_size=2**31), ValueError, r"`max_size` must be at most 1,024"),
        (lambda: testing.tensor_networks(max_factors=10**9), ValueError, r"`max_factors` must be at most 16"),
        (lambda: testing.tensor_networks(max_elements=2**40), ValueError, r"`max_elements` must be at most"),
        (lambda: testing.tensor_networks(frozen="yes"), TypeError, r"`frozen` must be a bool, got .yes."),
        (lambda: testing.factors(3), TypeError, r"`fmt` must be a format .* with `factor_shapes`, got int"),
        (lambda: testing.factors(LORA, bound="1"), TypeError, r"`bound` must be a positive finite number, got '1'"),
        (lambda: testing.factors(LORA, bound=float("nan")), ValueError, r"`bound` must be a positive finite"),
        (lambda: testing.factors(LORA, backend=None), TypeError, r"`backend`"),
        (lambda: testing.factors(decomp.CP((), 2, 2, 2**20)), ValueError, r"`fmt` has 4,194,304 parameters"),
        (lambda: testing.inputs(3), TypeError, r"`fmt` must be a format .* with `in_features`"),
        (lambda: testing.inputs(LORA, max_batch_dims=30), ValueError, r"`max_batch_dims` .* at most 16"),
        (lambda: testing.inputs(LORA, max_batch=10**6), ValueError, r"`max_batch` must be at most 1,024"),
        (lambda: testing.indices(3), TypeError, r"`fmt` must be a format .* with `stack`"),
        (lambda: testing.check_format(3), TypeError, r"`fmt` must be a format with the vocabulary"),
        (lambda: testing.check_format(LORA, backends="numpy"), TypeError, r"`backends` must be a non-empty subset"),
        (lambda: testing.check_format(LORA, backends=3), TypeError, r"`backends`"),
        (lambda: testing.check_format(LORA, skip="fit"), TypeError, r"`skip` must be a collection of check names"),
        (lambda: testing.check_format(LORA, skip=[1]), TypeError, r"`skip`"),
        (lambda: testing.check_format(LORA, fit_tol=float("nan")), ValueError, r"`fit_tol` must be a non-negative"),
        (lambda: testing.check_format(LORA, fit_tol=-1.0), ValueError, r"`fit_tol`"),
        (lambda: testing.check_format(LORA, fit_tol="a"), TypeError, r"`fit_tol` must be a non-negative number"),
        (lambda: testing.check_format(LORA, seed=-1), ValueError, r"`seed` must be an integer in \[0, 2\*\*63 - 1\]"),
        (lambda: testing.check_format(LORA, seed=1.5), TypeError, r"`seed`"),
        (lambda: testing.assert_close(np.ones(2), np.zeros(2), rtol=float("nan")), ValueError, r"`rtol`"),
        (lambda: testing.assert_close(np.ones(2), np.ones(2), rtol="0.1"), TypeError, r"`rtol`"),
        (lambda: testing.assert_close(np.array(["a"]), np.array(["a"]), rtol=1.0), TypeError, r"`actual` must hold"),
        (lambda: testing.assert_close(np.ones(1), np.array([object()]), rtol=1.0), TypeError, r"`desired` must hold"),
        (lambda: testing.tolerance({}), ValueError, r"`dtype` must be one of"),
    ],
)
def test_bad_arguments_of_the_testing_helpers(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@given(st.data())
def test_huge_but_valid_strategy_arguments_draw_quickly(data):
    # the sizes stay drawable: divisors from prime factors, at most 6 modes a side of a tensor train
    cp = data.draw(testing.cp_formats(max_features=2**31, max_rank=2))
    assert cp.heads is None or cp.out_features % cp.heads == 0
    tt = data.draw(testing.tensor_train_formats(max_features=2**31, stack_modes=8, max_rank=2))
    assert len(tt.in_modes) <= 6 and len(tt.out_modes) <= 6
    net = data.draw(testing.tensor_networks(max_size=2**10, max_elements=64))
    assert all(math.prod(s) <= 64 for s in net.factor_shapes.values())


def test_assert_close_takes_lists_and_the_largest_seed_runs():
    testing.assert_close([1.0, 2.0], np.array([1.0, 2.0]))
    ran = testing.check_format(LORA, backends=("numpy",), seed=2**63 - 1, skip=("errors",))
    assert "fit" in ran
