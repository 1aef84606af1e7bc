"""fit at any scale and dtype: finite factors, and a rel_err that is the true error of the returned factors.

Every claim is checked against an independent float64 computation (numpy einsum of the returned factors,
norms scaled by the largest entry before squaring), for each built-in format and a generic network, in
float32/float64 (numpy and torch) and float16/bfloat16 (torch), from 1e-40 (float32 subnormals) to 1e±160.
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tensorpeft import decomp, testing

torch = pytest.importorskip("torch")

FORMATS = {
    "lora": decomp.LoRA((2,), 4, 3, rank=2),
    "tucker2": decomp.Tucker2((2,), 4, 3, rank=2),
    "cp": decomp.CP((2,), 4, 3, rank=2),
    "tt": decomp.TensorTrain((2,), 4, 4, rank=2, in_modes=(2, 2), out_modes=(2, 2)),
    "tt-per-slice": decomp.TensorTrain((2,), 4, 4, rank=2, in_modes=(2, 2), out_modes=(2, 2), share_stack=False),
    "orthogonal": decomp.OrthogonalProjection((2,), 4, 3, rank=2),
    "network": decomp.TensorNetwork(  # shared outer factors, a core per (l, m): generic ALS
        "or,lmrq,qi->lmoi",
        {"o": 4, "r": 2, "l": 3, "m": 2, "q": 2, "i": 5},
        stack_indices="lm",
        out_indices="o",
        in_indices="i",
    ),
}
ITERATIVE = {"cp", "network"}  # ALS: converges to ~1e-12 in float64 within the default sweeps, not to round-off


def options(name):
    """Fit options: fewer ALS sweeps than the defaults (500 for CP: float32 never meets `tol`=1e-12)."""
    return {"n_iter_max": 100} if name in ITERATIVE else {}


# (backend, dtype name): the scales of exactly representable data, and how close the fit and the reported
# error must be. `fit`: the true error of an exact fit (the data and the factors rounded to the dtype);
# `agree`: |reported - true| (the reported error is computed in the dtype, float32 for half precision).
DTYPES = {
    ("numpy", "float64"): dict(scales=(1e-160, 1.0, 1e160), fit=1e-9, agree=1e-12),
    ("torch", "float64"): dict(scales=(1e-160, 1.0, 1e160), fit=1e-9, agree=1e-12),
    ("numpy", "float32"): dict(scales=(1e-30, 1.0, 1e30), fit=3e-4, agree=1e-6),
    ("torch", "float32"): dict(scales=(1e-30, 1.0, 1e30), fit=3e-4, agree=1e-6),
    ("torch", "bfloat16"): dict(scales=(1e-30, 1.0, 1e30), fit=3e-2, agree=1e-5),
    ("torch", "float16"): dict(scales=(1e-3, 1.0, 1e3), fit=1e-2, agree=1e-5),
    ("numpy", "float16"): dict(scales=(1e-3, 1.0, 1e3), fit=1e-2, agree=1e-5),
}
CASES = [(b, d, s) for (b, d), spec in DTYPES.items() for s in spec["scales"]]


def as_dtype(array64, backend, dtype):
    """A float64 numpy array rounded to ``dtype`` of ``backend``."""
    if backend == "numpy":
        return array64.astype(dtype)
    return torch.tensor(array64, dtype=getattr(torch, dtype))


def to64(array):
    if isinstance(array, torch.Tensor):
        return array.detach().to(torch.float64).numpy()
    return np.asarray(array, dtype=np.float64)


def scaled_norm(x):
    """‖x‖ of a float64 array, scaled by its largest entry before squaring (no overflow, no underflow)."""
    m = float(np.max(np.abs(x)))
    return 0.0 if m == 0 else m * float(np.linalg.norm(x / m))


def true_error(f, dense, factors):
    """‖dense - ΔW(factors)‖ / ‖dense‖ in float64, from an einsum of the returned factors.

    Each factor is first divided by a power of two near its largest entry (exact), and ``dense`` by
    their product, so that neither the einsum nor the squares leave float64's range at any scale.
    """
    d = to64(dense)
    powers = [int(np.frexp(np.max(np.abs(to64(factors[n]))))[1]) for n in f.factor_names]
    unit = [np.ldexp(to64(factors[n]), -k) for n, k in zip(f.factor_names, powers, strict=True)]
    rebuilt = np.einsum(f.equation, *unit).reshape(f.shape)
    if not np.any(d):
        return float(np.ldexp(scaled_norm(rebuilt), sum(powers)))
    d = np.ldexp(d, -sum(powers))
    return scaled_norm(d - rebuilt) / scaled_norm(d)


def check_returned(f, dense, factors, err, agree):
    """Factors in ``dense``'s backend and dtype, finite, and ``err`` the true error of them."""
    f.check_factors(factors)
    for name, array in factors.items():
        assert type(array) is type(dense), name
        assert array.dtype == dense.dtype, name
        assert bool(np.all(np.isfinite(to64(array)))), name
    assert isinstance(err, float) and math.isfinite(err)
    actual = true_error(f, dense, factors)
    assert err == pytest.approx(actual, rel=1e-3, abs=agree)
    return actual


def representable(f, scale, backend, dtype, seed=1):
    base = np.asarray(to64(f.to_dense(f.random(seed=seed))))
    return as_dtype(base / np.max(np.abs(base)) * scale, backend, dtype)


# ---------------------------------------------------------------------------------------- exact data, any scale


@pytest.mark.filterwarnings("ignore:Trying to compute SVD with n_eigenvecs:UserWarning")
@pytest.mark.parametrize("name", sorted(FORMATS))
@pytest.mark.parametrize(("backend", "dtype", "scale"), CASES, ids=[f"{b}-{d}-{s:g}" for b, d, s in CASES])
def test_fit_of_representable_data_at_any_scale(name, backend, dtype, scale):
    f = FORMATS[name]
    spec = DTYPES[(backend, dtype)]
    dense = representable(f, scale, backend, dtype)
    factors, err = f.fit(dense, **options(name))
    actual = check_returned(f, dense, factors, err, spec["agree"])
    # ALS stops on a stalled improvement, before round-off (float64), or in a swamp of the rounded data (half)
    tol = spec["fit"] * ((1e3 if dtype == "float64" else 3) if name in ITERATIVE else 1)
    assert actual < tol


@pytest.mark.parametrize("name", sorted(FORMATS))
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_fit_of_float32_subnormals(name, backend):
    # Entries about 1e-40: below float32's smallest normal (1.2e-38), so the data carry 16-20 bits.
    f = FORMATS[name]
    dense = representable(f, 1e-40, backend, "float32")
    assert float(np.max(np.abs(to64(dense)))) < np.finfo(np.float32).tiny
    factors, err = f.fit(dense, **options(name))
    actual = check_returned(f, dense, factors, err, 1e-6)
    assert actual < 1e-3


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_fit_of_float64_subnormals(name):
    f = FORMATS[name]
    dense = representable(f, 1e-310, "numpy", "float64")
    factors, err = f.fit(dense, **options(name))
    actual = check_returned(f, dense, factors, err, 1e-9)
    assert actual < 1e-3


@pytest.mark.parametrize("name", sorted(set(FORMATS) - {"orthogonal"}))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fit_near_the_largest_float(name, dtype):
    # Entries up to a quarter of the dtype's maximum: a core or last core carrying the whole scale
    # would overflow, so the scale is spread over all factors.
    f = FORMATS[name]
    dense = representable(f, float(np.finfo(dtype).max) / 4, "numpy", dtype)
    factors, err = f.fit(dense, **options(name))
    actual = check_returned(f, dense, factors, err, 1e-6 if dtype == "float32" else 1e-12)
    assert actual < (1e-3 if dtype == "float32" else 1e-6)


def test_orthogonal_fit_refuses_singular_values_beyond_the_dtype():
    # λ is the singular values, on orthonormal planes: ‖W_s‖₂ > float32 max cannot be represented.
    f = FORMATS["orthogonal"]
    dense = np.full(f.shape, np.finfo(np.float32).max / 2, dtype=np.float32)
    before = dense.copy()
    with pytest.raises(ValueError, match="`dense`"):
        f.fit(dense)
    np.testing.assert_array_equal(dense, before)


@pytest.mark.parametrize("name", sorted(FORMATS))
@pytest.mark.parametrize(("backend", "dtype"), sorted(DTYPES))
def test_fit_of_zero_is_exactly_zero_in_every_dtype(name, backend, dtype):
    f = FORMATS[name]
    dense = as_dtype(np.zeros(f.shape), backend, dtype)
    factors, err = f.fit(dense, **options(name))
    assert err == 0.0
    assert not np.any(to64(f.to_dense(factors)))
    assert all(factors[n].dtype == dense.dtype for n in f.factor_names)


# ---------------------------------------------------------------------------------------- noisy data


@pytest.mark.filterwarnings("ignore:Trying to compute SVD with n_eigenvecs:UserWarning")
@pytest.mark.parametrize("name", sorted(FORMATS))
@pytest.mark.parametrize(("backend", "dtype", "scale"), CASES, ids=[f"{b}-{d}-{s:g}" for b, d, s in CASES])
def test_rel_err_of_noisy_data_is_the_true_error(name, backend, dtype, scale):
    f = FORMATS[name]
    noise = np.random.default_rng(5).standard_normal(f.shape)
    dense = as_dtype(noise / np.max(np.abs(noise)) * scale, backend, dtype)
    factors, err = f.fit(dense, **({"n_iter_max": 5} if name in ITERATIVE else {}))
    actual = check_returned(f, dense, factors, err, DTYPES[(backend, dtype)]["agree"])
    assert 0.05 < actual < 1 + 1e-2  # rank 2 cannot fit noise, and no fit is worse than zero


@given(
    st.one_of(testing.lora_formats(), testing.tucker2_formats(), testing.tensor_train_formats()),
    st.integers(-120, 120),
    st.integers(0, 2**16),
)
def test_float32_fit_reports_the_true_error_at_any_binary_scale(f, power, seed):
    rng = np.random.default_rng(seed)
    dense = (rng.standard_normal(f.shape) * 2.0**power).astype(np.float32)
    factors, err = f.fit(dense)
    check_returned(f, dense, factors, err, 1e-6)


# ---------------------------------------------------------------------------------------- relative_error


@pytest.mark.parametrize("scale", [1e-40, 1e-30, 1e30])
def test_relative_error_is_overflow_and_underflow_safe(scale):
    f = FORMATS["tucker2"]
    factors64 = f.random(seed=3)
    dense = (f.to_dense(factors64) * scale).astype(np.float32)
    noisy = {n: a.astype(np.float32) for n, a in factors64.items()}
    noisy["G"] = (factors64["G"] * 1.001 * scale).astype(np.float32)  # the true error is about 1e-3
    err = f.relative_error(dense, noisy)
    assert err == pytest.approx(true_error(f, dense, noisy), rel=1e-4, abs=1e-6)
    assert 1e-4 < err < 1e-2


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_relative_error_of_half_precision_is_computed_in_float32(dtype):
    f = FORMATS["lora"]
    factors = {n: torch.tensor(a, dtype=getattr(torch, dtype)) for n, a in f.random(seed=4).items()}
    dense = torch.tensor(to64(f.to_dense(factors)) + 1e-3, dtype=getattr(torch, dtype))
    err = f.relative_error(dense, factors)
    assert err == pytest.approx(true_error(f, dense, factors), rel=1e-4, abs=1e-6)


# ---------------------------------------------------------------------------------------- bad options


BAD_OPTIONS = [
    ("n_iter_max", -1, ValueError),
    ("n_iter_max", 2.5, TypeError),
    ("n_iter_max", True, TypeError),
    ("n_iter_max", "10", TypeError),
    ("tol", float("nan"), ValueError),
    ("tol", -1.0, ValueError),
    ("tol", float("inf"), ValueError),
    ("tol", "x", TypeError),
    ("tol", True, TypeError),
    ("seed", -1, ValueError),
    ("seed", 1.5, TypeError),
    ("seed", True, TypeError),
]


@pytest.mark.parametrize("name", sorted(FORMATS))
@pytest.mark.parametrize(("option", "value", "error"), BAD_OPTIONS, ids=[f"{o}={v!r}" for o, v, _ in BAD_OPTIONS])
def test_fit_refuses_bad_options_naming_them(name, option, value, error):
    f = FORMATS[name]
    dense = representable(f, 1.0, "numpy", "float64")
    before = dense.copy()
    with pytest.raises(error, match=f"`{option}`"):
        f.fit(dense, **{option: value})
    np.testing.assert_array_equal(dense, before)


@pytest.mark.parametrize("name", sorted(FORMATS))
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_fit_refuses_non_finite_init_naming_it(name, bad):
    f = FORMATS[name]
    dense = representable(f, 1.0, "numpy", "float64")
    init = f.random(seed=2)
    first = f.factor_names[0]
    init[first] = init[first].copy()
    init[first].flat[0] = bad
    snapshot = {n: a.copy() for n, a in init.items()}
    with pytest.raises(ValueError, match="`init"):
        f.fit(dense, init=init)
    for n, a in init.items():
        np.testing.assert_array_equal(a, snapshot[n])


@pytest.mark.parametrize("name", ["cp", "tt", "network"])
def test_fit_from_init_at_any_scale(name):
    # A start given at scale 1 for data at 1e30 (float32): the sweeps run on the normalized data.
    f = FORMATS[name]
    dense = representable(f, 1e30, "numpy", "float32", seed=6)
    init = {n: a.astype(np.float32) for n, a in f.random(seed=7).items()}
    factors, err = f.fit(dense, init=init, n_iter_max=50)
    check_returned(f, dense, factors, err, 1e-6)


def test_tt_fit_returns_init_as_given_without_sweeps():
    f = FORMATS["tt"]
    init = f.random(seed=8)
    dense = f.to_dense(init) * 1e200
    factors, err = f.fit(dense, init=init, n_iter_max=0)
    for n in f.factor_names:
        np.testing.assert_array_equal(factors[n], init[n])
    assert err == pytest.approx(true_error(f, dense, factors), abs=1e-12)
    assert err == pytest.approx(1.0, abs=1e-12)  # ΔW of the start is 1e-200 of dense


def test_fit_from_a_bfloat16_torch_init_for_numpy_data():
    f = FORMATS["cp"]
    dense = representable(f, 1.0, "numpy", "float64", seed=9)
    init = {n: torch.tensor(a, dtype=torch.bfloat16) for n, a in f.random(seed=10).items()}
    factors, err = f.fit(dense, init=init, n_iter_max=20)
    check_returned(f, dense, factors, err, 1e-12)
    assert err < 0.5
