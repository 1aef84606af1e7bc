import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tensorpeft import decomp


def test_torch_apply_rejects_mismatched_dtype_at_entry():
    f = decomp.Tucker2((2,), 4, 3, 1)
    fac = f.random(backend="torch", dtype=torch.float32)
    with pytest.raises(TypeError, match=r"`x` has dtype torch.float64 but the factors are torch.float32"):
        f.apply(fac, torch.ones(2, 3, dtype=torch.float64), 0)


def test_torch_apply_under_autocast_accepts_lower_precision_input():
    f = decomp.LoRA((2,), 4, 3, 1)
    fac = f.random(backend="torch", dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = f.apply(fac, torch.ones(2, 3, dtype=torch.bfloat16), 1)
    assert y.dtype == torch.bfloat16
    expected = torch.ones(2, 3) @ f.to_dense(fac)[1].T
    assert torch.allclose(y.float(), expected, rtol=2e-2, atol=2e-2)


def test_numpy_apply_promotes_like_numpy():
    f = decomp.LoRA((), 4, 3, 2)
    fac = f.random()
    y = f.apply(fac, np.ones((5, 3), dtype=np.float32))
    assert y.dtype == np.float64


# ---------------------------------------------------------------------------------------- random/init arguments

FORMATS = [
    decomp.LoRA((2,), 4, 3, 2),
    decomp.Tucker2((2,), 4, 3, 2),
    decomp.CP((2,), 4, 3, 2, heads=2),
    decomp.TensorTrain((2,), 4, 6, 2),
    decomp.OrthogonalProjection((2,), 4, 3, 2),
    decomp.TensorNetwork(
        "or,lrs,is->loi", {"o": 4, "r": 2, "l": 2, "s": 2, "i": 3}, stack_indices="l", out_indices="o", in_indices="i"
    ),
]
HALF = [
    ("numpy", np.float16, "float16"),
    ("torch", torch.float16, "float16"),
    ("torch", torch.bfloat16, "bfloat16"),
    ("torch", "bfloat16", "bfloat16"),
    ("numpy", "float16", "float16"),
    ("torch", np.float16, "float16"),
]


def _name(dtype):
    return str(dtype).removeprefix("torch.")


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: type(f).__name__)
@pytest.mark.parametrize(("backend", "dtype", "name"), HALF)
def test_half_precision_random_and_init_work(fmt, backend, dtype, name):
    fac = fmt.random(seed=3, backend=backend, dtype=dtype)
    zero = fmt.init(seed=3, backend=backend, dtype=dtype)
    for factors in (fac, zero):
        assert {n: tuple(a.shape) for n, a in factors.items()} == fmt.factor_shapes
        assert {_name(a.dtype) for a in factors.values()} == {name}
    assert all(bool((a != 0).any()) for a in fac.values())
    dense = fmt.to_dense(zero)
    assert _name(dense.dtype) == name and not bool((dense != 0).any())
    assert all(bool(np.isfinite(np.asarray(a.float() if backend == "torch" else a)).all()) for a in fac.values())


def test_half_precision_is_the_rounded_float32_draw():
    f = decomp.Tucker2((2,), 4, 3, 2)
    wide, half = (
        f.random(seed=5, backend="torch", dtype=torch.float32),
        f.random(seed=5, backend="torch", dtype="bfloat16"),
    )
    for n in wide:
        assert torch.equal(half[n], wide[n].to(torch.bfloat16))


def test_orthogonal_half_precision_planes_are_orthonormal_to_half_precision():
    f = decomp.OrthogonalProjection((), 6, 5, 2, inner=3)
    fac = f.random(seed=0, dtype=np.float16)
    u1 = fac["U1"].astype(np.float64)
    assert np.abs(u1.T @ u1 - np.eye(3)).max() < 1e-2


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize(
    ("dtype", "exc"),
    [
        (np.int64, ValueError),
        ("int32", ValueError),
        (bool, ValueError),
        (np.complex128, ValueError),
        (torch.int64, ValueError),
        (torch.complex64, ValueError),
        (torch.float8_e4m3fn, ValueError),
        (str, ValueError),
        (object, ValueError),
        ("not-a-dtype", TypeError),
        (3, TypeError),
        ([np.float32], TypeError),
    ],
)
def test_non_floating_dtypes_are_refused_naming_dtype(backend, dtype, exc):
    f = decomp.LoRA((2,), 4, 3, 1)
    for method in (f.random, f.init):
        with pytest.raises(exc, match=r"`dtype` must be a floating dtype"):
            method(seed=0, backend=backend, dtype=dtype)


def test_bfloat16_is_refused_on_numpy_and_torch_dtypes_work_by_name():
    f = decomp.LoRA((2,), 4, 3, 1)
    with pytest.raises(ValueError, match=r"`dtype` must be a floating dtype.*numpy backend, got torch.bfloat16"):
        f.random(dtype=torch.bfloat16)
    assert {a.dtype for a in f.random(dtype=torch.float32).values()} == {np.dtype(np.float32)}
    assert {a.dtype for a in f.random(backend="torch", dtype="torch.float64").values()} == {torch.float64}


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize(
    ("seed", "exc"),
    [
        (2.7, TypeError),
        (2.0, TypeError),
        (float("inf"), TypeError),
        (float("nan"), TypeError),
        (True, TypeError),
        (None, TypeError),
        ("1", TypeError),
        (np.float64(1), TypeError),
        (-1, ValueError),
        (np.int64(-1), ValueError),
        (2**63, ValueError),
        (2**64, ValueError),
    ],
)
def test_bad_seeds_are_refused_on_both_backends(backend, seed, exc):
    f = decomp.CP((2,), 4, 3, 1)
    for method in (f.random, f.init):
        with pytest.raises(exc, match=r"`seed` must be"):
            method(seed=seed, backend=backend)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_numpy_integer_seeds_equal_python_ints_up_to_the_largest(backend):
    f = decomp.LoRA((2,), 4, 3, 1)
    for seed, same in ((3, np.int64(3)), (7, np.uint8(7)), (2**63 - 1, np.int64(2**63 - 1))):
        a, b = f.random(seed=seed, backend=backend), f.random(seed=same, backend=backend)
        assert all(np.array_equal(np.asarray(a[n]), np.asarray(b[n])) for n in a)


@pytest.mark.parametrize(
    ("backend", "exc", "match"),
    [
        ("cupy", ValueError, r"`backend` must be one of \('numpy', 'torch', 'jax'\), got 'cupy'"),
        (None, TypeError, r"`backend` must be one of .* \(a str\), got None"),
        (["numpy"], TypeError, r"`backend`.*\['numpy'\]"),
        (np, TypeError, r"`backend`"),
    ],
)
def test_bad_backends_are_refused(backend, exc, match):
    with pytest.raises(exc, match=match):
        decomp.LoRA((2,), 4, 3, 1).init(backend=backend)
