"""jax arrays: every verb against numpy in float64, jax.grad against torch autograd, jit, check_format, hypothesis.

jax is compiled per shape (each new shape of each program costs a compilation), so every test here uses
the same small instances and the input shape ``(2, 3, in_features)`` of ``check_format``: the programs
compiled by one test serve the next. float64 needs x64, enabled for this module only and then restored.
"""

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tensorpeft import decomp, testing
from tensorpeft.decomp._backend import jax_x64_enabled
from tensorpeft.testing import assert_close

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

FORMATS = {
    "lora": decomp.LoRA((2,), 6, 4, rank=2),
    "tucker2": decomp.Tucker2((2,), 6, 4, rank=(3, 2)),
    "cp-heads": decomp.CP((2,), 6, 4, rank=3, heads=2),
    "tt-shared": decomp.TensorTrain((2,), 6, 4, rank=2, in_modes=(2, 2), out_modes=(3, 2)),
    "tt-per-slice": decomp.TensorTrain((2,), 6, 4, rank=2, share_stack=False, in_modes=(2, 2), out_modes=(3, 2)),
    "orthogonal": decomp.OrthogonalProjection((2,), 6, 4, rank=2, inner=3),
    "network": decomp.TensorNetwork(  # FacT-TK: ΔW_l = U · (C ×₃ P[l]) · Vᵀ
        "or,rst,lt,is->loi",
        {"o": 6, "r": 2, "s": 2, "t": 2, "l": 2, "i": 4},
        stack_indices="l",
        out_indices="o",
        in_indices="i",
        factor_names=("U", "C", "P", "V"),
        zero_factor="C",
    ),
}
IDS = list(FORMATS)
# the exactly representable fits of CP and a custom network are iterative: ALS reaches ~1e-12, not 1e-15
FIT_TOL = {"cp-heads": 1e-6, "network": 1e-6}


@pytest.fixture(autouse=True, scope="module")
def x64():
    """float64 in jax for this module (jax's global setting), restored afterwards."""
    before = bool(jax.config.jax_enable_x64)
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", before)


def _x(f, seed=0):
    return np.random.default_rng(seed).standard_normal((2, 3, f.in_features))


def _jax(array):
    return jax.device_put(np.asarray(array))


def _is_jax(array, dtype="float64"):
    return isinstance(array, jax.Array) and str(array.dtype) == dtype


@pytest.mark.parametrize("name", IDS)
def test_every_verb_on_jax_equals_numpy(name):
    f = FORMATS[name]
    fac_np, fac_j = f.random(seed=3), f.random(seed=3, backend="jax")
    assert all(_is_jax(a) for a in fac_j.values())
    for n in fac_np:  # numpy's generator: the same seed gives the same factors (LoRA² then orthonormalizes)
        assert_close(fac_j[n], fac_np[n], rtol=0 if name != "orthogonal" else 1e-12, what=n)

    init = f.init(seed=3, backend="jax")
    assert all(_is_jax(a) for a in init.values()) and not np.any(np.asarray(f.to_dense(init)))

    dense_np, dense_j = f.to_dense(fac_np), f.to_dense(fac_j)
    assert _is_jax(dense_j) and dense_j.shape == f.shape
    assert_close(dense_j, dense_np, rtol=1e-10, what="to_dense")

    x = _x(f)
    for index in ((1,) * len(f.stack), None):
        y = f.apply(fac_j, _jax(x), index=index)
        assert _is_jax(y)
        assert_close(y, f.apply(fac_np, x, index=index), rtol=1e-10, what=f"apply at {index}")

    last = tuple(n - 1 for n in f.stack)
    B, A = f.lora_factors(fac_j, last)
    B_np, A_np = f.lora_factors(fac_np, last)
    assert _is_jax(B) and _is_jax(A)
    assert_close(B @ A, B_np @ A_np, rtol=1e-10, what="lora_factors")

    (_, err_np), (fit_j, err_j) = f.fit(dense_np), f.fit(dense_j)
    assert all(_is_jax(a) for a in fit_j.values())
    assert isinstance(err_j, float) and err_j <= FIT_TOL.get(name, 1e-10)
    assert abs(err_j - err_np) <= 1e-10
    assert_close(f.to_dense(fit_j), dense_np, rtol=FIT_TOL.get(name, 1e-10), what="fit")
    assert f.relative_error(dense_j, fit_j) == pytest.approx(err_j, rel=1e-8, abs=1e-14)
    assert f.relative_error(dense_j, fac_j) == 0.0


@pytest.mark.parametrize("name", IDS)
def test_jax_grad_of_apply_equals_torch_autograd_and_jit_equals_apply(name):
    torch = pytest.importorskip("torch")
    f = FORMATS[name]
    fac_np, x = f.random(seed=1), _x(f, seed=1)
    weights = np.random.default_rng(2).standard_normal((*f.stack, 2, 3, f.out_features))

    def loss(fac, x):
        return jnp.sum(f.apply(fac, x, index=None) * weights)

    fac_j = {n: _jax(a) for n, a in fac_np.items()}
    grads, grad_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(fac_j, _jax(x))

    fac_t = {n: torch.tensor(a, requires_grad=True) for n, a in fac_np.items()}
    x_t = torch.tensor(x, requires_grad=True)
    (f.apply(fac_t, x_t, index=None) * torch.from_numpy(weights)).sum().backward()
    for n in fac_np:
        assert_close(grads[n], fac_t[n].grad, rtol=1e-10, what=f"d/d{n}")
    assert_close(grad_x, x_t.grad, rtol=1e-10, what="d/dx")

    index = (0,) * len(f.stack)
    jitted = jax.jit(lambda fac, x: f.apply(fac, x, index=index))(fac_j, _jax(x))
    assert_close(jitted, f.apply(fac_j, _jax(x), index=index), rtol=1e-12, what="jit(apply)")


# XLA compiles a program per format, slice and shape: the slowest formats' full checks run in the slow step
_SLOW_CHECKS = {"tt-shared", "tt-per-slice", "cp-heads", "network", "orthogonal"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in _SLOW_CHECKS else n for n in IDS])
def test_check_format_passes_on_the_jax_backend(name):
    f = FORMATS[name]
    ran = testing.check_format(f, backends=("numpy", "jax"), fit_tol=FIT_TOL.get(name))
    assert ran == testing.CHECKS


def test_check_format_takes_jax_by_default_when_x64_is_on():
    f = FORMATS["lora"]
    assert testing.check_format(f, skip=("fit", "errors")) == testing.CHECKS[:-2]  # torch too, if installed
    # the default then includes jax: a format wrong on jax alone fails it
    broken = type("JaxOff", (decomp.LoRA,), {"to_dense": _off_on_jax(decomp.LoRA.to_dense)})((2,), 6, 4, rank=2)
    with pytest.raises(AssertionError, match=r"check_format\[to_dense\]: .*\(jax\)"):
        testing.check_format(broken, skip=("fit", "errors"))


def _off_on_jax(method):
    def wrong(self, factors):
        dense = method(self, factors)
        return dense * 1.01 if isinstance(dense, jax.Array) else dense

    return wrong


def test_check_format_catches_a_jax_only_gradient_bug():
    @jax.custom_jvp
    def scaled(y):
        return y

    @scaled.defjvp
    def _(primals, tangents):
        return primals[0], tangents[0] * 1.01  # a wrong derivative, on jax only

    class WrongGradient(decomp.LoRA):
        def apply(self, factors, x, index=()):
            y = super().apply(factors, x, index)
            return scaled(y) if isinstance(y, jax.Array) else y

    with pytest.raises(AssertionError, match=r"check_format\[gradcheck\]: jax\.grad through `apply"):
        testing.check_format(WrongGradient((2,), 6, 4, rank=2), backends=("numpy", "jax"), skip=("fit", "errors"))


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_hypothesis_draws_jax_factors_and_inputs(data):
    f = FORMATS["tucker2"]  # the strategies are built here, under x64 (float64 on jax needs it)
    fac = data.draw(testing.factors(f, backend="jax"), label="factors")
    x = data.draw(testing.inputs(f, backend="jax", max_batch_dims=1, max_batch=2), label="x")
    assert all(_is_jax(a) for a in fac.values()) and _is_jax(x)
    fac_np = {n: np.asarray(a) for n, a in fac.items()}
    y = f.apply(fac, x, index=1)
    assert_close(y, f.apply(fac_np, np.asarray(x), index=1), rtol=1e-10, what="apply")


def test_dtypes_on_jax():
    f = FORMATS["tucker2"]
    for dtype in ("float32", "bfloat16", "float16", jnp.float32, np.float32):
        fac = f.init(seed=0, backend="jax", dtype=dtype)
        assert all(a.dtype == jnp.dtype(dtype) for a in fac.values())
    with pytest.raises(ValueError, match=r"`dtype` must be a floating dtype, one of .* on the jax backend"):
        f.random(backend="jax", dtype="int32")


def test_float64_on_jax_without_x64_is_refused_not_silently_float32():
    f = FORMATS["lora"]
    jax.config.update("jax_enable_x64", False)
    try:
        assert not jax_x64_enabled()
        assert all(str(a.dtype) == "float32" for a in f.random(backend="jax").values())  # jax's default float
        with pytest.raises(ValueError, match=r"`dtype`='float64' on the jax backend needs float64 enabled"):
            f.random(backend="jax", dtype="float64")
        with pytest.raises(ValueError, match=r"`dtype`='float64' on the jax backend"):
            testing.factors(f, backend="jax")
        with pytest.raises(ValueError, match=r"`backends`=\('jax',\) names jax, whose checks compare float64"):
            testing.check_format(f, backends=("jax",))
        assert "jax" not in str(testing.check_format(f, skip=("fit", "errors", "gradcheck")))  # default: no jax
        fac = f.random(backend="jax", dtype="float32")
        dense = f.to_dense(fac)
        assert str(dense.dtype) == "float32"
        assert f.fit(dense)[1] < 1e-5
    finally:
        jax.config.update("jax_enable_x64", True)


def test_mixed_libraries_are_refused():
    f = FORMATS["lora"]
    fac = f.random(seed=0, backend="jax")
    mixed = fac | {"A": np.asarray(fac["A"])}
    with pytest.raises(TypeError, match=r"`factors` mixes numpy arrays and jax arrays; use one array library"):
        f.to_dense(mixed)
    with pytest.raises(TypeError, match=r"`x` is a numpy array but the factors are jax arrays"):
        f.apply(fac, np.ones(4), index=0)
    with pytest.raises(ValueError, match=r"`dense` contains NaN"):
        f.fit(jnp.full(f.shape, jnp.nan))


def test_the_core_does_not_import_jax():
    code = "import sys, tensorpeft, tensorpeft.testing; from tensorpeft import decomp; print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
