"""Frozen (constant) factors of a TensorNetwork: counts, errors, init, draws, given values and fit (issue 13)."""

import numpy as np
import pytest
import torch

from tensorpeft import decomp, testing

GOOD = dict(stack_indices="l", out_indices="o", in_indices="i")


def to_numpy(x):
    return x.detach().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def frozen_tucker(layers=3, d_out=6, d_in=5, r=2, **kwargs):
    """ΔW_l = A G_l Bᵀ with the bases ``A``, ``B`` frozen: linear in the trainable cores ``G``."""
    return decomp.TensorNetwork(
        "or,lrs,is->loi",
        {"o": d_out, "r": r, "l": layers, "s": r, "i": d_in},
        factor_names=("A", "G", "B"),
        frozen=("B", "A"),
        **GOOD,
        **kwargs,
    )


def vera_network(layers=3, d_out=6, d_in=5, r=4, **kwargs):
    """VeRA's equation, written by hand: ΔW_l = diag(b_l) B diag(d_l) A, ``A``, ``B`` frozen."""
    return decomp.TensorNetwork(
        "lo,or,lr,ri->loi",
        {"l": layers, "o": d_out, "r": r, "i": d_in},
        factor_names=("b", "B", "d", "A"),
        frozen=("A", "B"),
        zero_factor="b",
        **GOOD,
        **kwargs,
    )


def frozen_basis_usu(layers=3, d=6, r=2):
    """ΔW_l = U S_l Uᵀ with the tied basis ``U`` frozen."""
    return decomp.TensorNetwork(
        "oa,lab,ib->loi",
        {"o": d, "a": r, "l": layers, "b": r, "i": d},
        factor_names=("U", "S", "U"),
        frozen=("U",),
        **GOOD,
    )


def exact_target(fmt, seed=1, backend="numpy"):
    """A ΔW of ``fmt`` built from trainable factors of ``random(seed)`` and the constants of ``random(0)``."""
    drawn = fmt.random(seed=seed, backend=backend, dtype="float64")
    frozen = {n: a for n, a in fmt.random(seed=0, backend=backend, dtype="float64").items() if n in fmt.frozen_names}
    return fmt.to_dense(drawn | frozen), frozen


# ------------------------------------------------------------------------------------------------ counts
def test_counts_split_trainable_and_frozen():
    f = frozen_tucker(layers=3, d_out=6, d_in=5, r=2)
    assert f.frozen_names == ("A", "B")  # the order of factor_names, whatever order `frozen` gave
    assert f.factor_shapes == {"A": (6, 2), "G": (3, 2, 2), "B": (5, 2)}  # every factor is listed
    assert (f.num_params, f.num_frozen) == (3 * 2 * 2, 6 * 2 + 5 * 2)
    assert type(f.num_params) is int and type(f.num_frozen) is int
    usu = frozen_basis_usu(layers=3, d=6, r=2)
    assert (usu.num_params, usu.num_frozen) == (3 * 4, 12)  # the tied basis counted once, apart


@pytest.mark.parametrize(
    "fmt",
    [
        decomp.LoRA((2,), 6, 5, rank=2),
        decomp.Tucker2((2,), 6, 5, rank=2),
        decomp.CP((2,), 6, 5, rank=2),
        decomp.TensorTrain((2,), 6, 4, rank=2),
        decomp.OrthogonalProjection((2,), 6, 5, rank=2),
        decomp.TensorNetwork("or,ri->oi", {"o": 4, "r": 2, "i": 3}, out_indices="o", in_indices="i"),
    ],
    ids=lambda f: type(f).__name__,
)
def test_built_in_formats_have_no_frozen_factor(fmt):
    assert fmt.frozen_names == () and fmt.num_frozen == 0
    assert fmt.num_params == sum(int(np.prod(s)) for s in fmt.factor_shapes.values())
    assert "frozen" not in repr(fmt)


def test_frozen_is_part_of_identity():
    f, g = frozen_tucker(), frozen_tucker()
    plain = decomp.TensorNetwork(
        "or,lrs,is->loi", {"o": 6, "r": 2, "l": 3, "s": 2, "i": 5}, factor_names=("A", "G", "B"), **GOOD
    )
    assert f == g and hash(f) == hash(g) and f != plain
    assert "frozen=('A', 'B')" in repr(f)


# ------------------------------------------------------------------------------------------------ errors
SIZES = {"o": 6, "r": 2, "l": 3, "s": 2, "i": 5}


def network(frozen, names=("A", "G", "B"), zero_factor=None, equation="or,lrs,is->loi", sizes=SIZES):
    return decomp.TensorNetwork(equation, sizes, factor_names=names, frozen=frozen, zero_factor=zero_factor, **GOOD)


@pytest.mark.parametrize(
    ("kwargs", "kind", "words"),
    [
        (dict(frozen=("A", "C")), ValueError, ["`frozen`", "['C'] name no factor", "('A', 'G', 'B')"]),
        (dict(frozen=("A", "A")), ValueError, ["`frozen`", "['A'] listed more than once"]),
        (dict(frozen=("A", "G", "B")), ValueError, ["`frozen`", "nothing to train"]),
        (dict(frozen=("G",), zero_factor="G"), ValueError, ["`zero_factor`='G' is frozen", "('A', 'B')"]),
        (dict(frozen="A"), TypeError, ["`frozen` must be a tuple", "'A' (str)"]),
        (dict(frozen=(1,)), TypeError, ["`frozen`", "of type str"]),
        (dict(frozen=None), TypeError, ["`frozen`", "NoneType"]),
    ],
)
def test_bad_frozen_is_refused_naming_it(kwargs, kind, words):
    with pytest.raises(kind) as info:
        network(**kwargs)
    for word in words:
        assert word in str(info.value)


def test_a_tied_name_listed_twice_is_refused():
    with pytest.raises(ValueError, match=r"\['U'\] listed more than once \(a tied factor is one array"):
        decomp.TensorNetwork(
            "oa,lab,ib->loi",
            {"o": 6, "a": 2, "l": 3, "b": 2, "i": 6},
            factor_names=("U", "S", "U"),
            frozen=("U", "U"),
            **GOOD,
        )


def test_freezing_every_untied_factor_leaves_no_zero_factor():
    with pytest.raises(ValueError, match="leaves no trainable untied factor"):
        decomp.TensorNetwork(
            "oa,lab,ib->loi",
            {"o": 6, "a": 2, "l": 3, "b": 2, "i": 6},
            factor_names=("U", "S", "U"),
            frozen=("S",),
            **GOOD,
        )


def test_the_default_zero_factor_is_the_last_untied_trainable_one():
    assert frozen_tucker().zero_factor == "G"
    assert network(frozen=("B",)).zero_factor == "G"
    assert network(frozen=("A",), zero_factor="B").zero_factor == "B"
    assert vera_network().zero_factor == "b"


# -------------------------------------------------------------------------------------- init and draws
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_init_is_zero_with_random_constants_and_a_gradient_on_the_zero_factor(backend):
    f = vera_network()
    fac = f.init(seed=3, backend=backend, dtype="float64")
    drawn = f.random(seed=3, backend=backend, dtype="float64")
    assert not np.any(to_numpy(f.to_dense(fac)))
    assert not np.any(to_numpy(fac["b"]))
    for name in ("A", "B", "d"):  # never zeroed: the constants, and the other trainable factor
        assert np.any(to_numpy(fac[name]))
        assert np.array_equal(to_numpy(fac[name]), to_numpy(drawn[name]))
    t = {n: torch.as_tensor(to_numpy(a)).requires_grad_() for n, a in fac.items()}
    x = torch.randn(4, 5, dtype=torch.float64)
    (f.apply(t, x, index=None) * torch.randn(3, 4, 6, dtype=torch.float64)).sum().backward()
    assert bool(t["b"].grad.abs().max() > 0)


def test_draws_are_deterministic_and_the_constants_equal_on_numpy_and_torch():
    f = frozen_tucker()
    a, b = f.random(seed=5), f.random(seed=5)
    assert all(np.array_equal(a[n], b[n]) for n in f.factor_names)
    assert not np.array_equal(a["A"], f.random(seed=6)["A"])
    for np_dtype, t_dtype in ((np.float64, torch.float64), (np.float32, torch.float32), (np.float16, torch.float16)):
        n = f.random(seed=5, dtype=np_dtype)
        t = f.random(seed=5, backend="torch", dtype=t_dtype)
        for name in f.frozen_names:
            assert t[name].dtype == t_dtype
            assert np.array_equal(t[name].numpy(), n[name]), (name, np_dtype)
    bf16 = f.random(seed=5, backend="torch", dtype=torch.bfloat16)
    assert torch.equal(bf16["A"], torch.from_numpy(a["A"]).to(torch.bfloat16))


def test_freezing_leaves_the_numpy_draws_of_the_network_as_they_were():
    plain = decomp.TensorNetwork("or,lrs,is->loi", SIZES, factor_names=("A", "G", "B"), **GOOD)
    f = network(frozen=("A", "B"))
    for backend in ("numpy", "torch"):
        p, q = plain.random(seed=2, backend=backend), f.random(seed=2, backend=backend)
        assert np.array_equal(to_numpy(p["G"]), to_numpy(q["G"]))  # trainable: same stream
    assert all(np.array_equal(plain.random(seed=2)[n], f.random(seed=2)[n]) for n in f.factor_names)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_given_frozen_values_are_used_and_copied(backend):
    f = frozen_tucker()
    basis = np.linalg.qr(np.random.default_rng(0).standard_normal((6, 2)))[0]
    given = basis if backend == "numpy" else torch.from_numpy(basis)
    fac = f.init(seed=1, backend=backend, dtype="float64", frozen_values={"A": given})
    assert np.array_equal(to_numpy(fac["A"]), basis)
    assert fac["A"] is not given
    drawn = f.init(seed=1, backend=backend, dtype="float64")
    for name in ("G", "B"):  # the others are drawn as without given values
        assert np.array_equal(to_numpy(fac[name]), to_numpy(drawn[name]))
    fac["A"][0, 0] = 7.0
    assert basis[0, 0] != 7.0  # no aliasing of the caller's array
    other_backend = "torch" if backend == "numpy" else "numpy"
    other = f.random(seed=1, backend=other_backend, dtype="float64", frozen_values={"A": given})
    assert np.array_equal(to_numpy(other["A"]), basis)  # converted across libraries


@pytest.mark.parametrize(
    ("values", "kind", "words"),
    [
        ([("A", np.zeros((6, 2)))], TypeError, ["`frozen_values` must be None or a dict", "list"]),
        ({"G": np.zeros((3, 2, 2))}, ValueError, ["`frozen_values` names ['G']", "not frozen", "('A', 'B')"]),
        ({"A": np.zeros((2, 6))}, ValueError, ["`frozen_values['A']` must have shape (6, 2), got (2, 6)"]),
        ({"A": np.full((6, 2), np.nan)}, ValueError, ["`frozen_values['A']` contains NaN"]),
        ({"A": np.zeros((6, 2), dtype=int)}, TypeError, ["`frozen_values['A']` must be a floating"]),
        ({"A": [[0.0] * 2] * 6}, TypeError, ["`frozen_values['A']`", "list"]),
    ],
)
def test_bad_frozen_values_are_refused(values, kind, words):
    with pytest.raises(kind) as info:
        frozen_tucker().init(frozen_values=values)
    for word in words:
        assert word in str(info.value)


# ------------------------------------------------------------------------------------------------ fit
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_fit_holds_the_constants_and_recovers_the_trainable_factors(backend):
    f = frozen_tucker()
    target, frozen = exact_target(f, backend=backend)
    fac, err = f.fit(target)
    assert err < 1e-8
    for name, value in frozen.items():
        assert np.array_equal(to_numpy(fac[name]), to_numpy(value))


@pytest.mark.parametrize("scale", [0.0, 2.0**-90, 2.0**90])
def test_fit_keeps_the_constants_at_any_scale_and_for_zero(scale):
    f = frozen_tucker()
    target, frozen = exact_target(f)
    fac, err = f.fit(target * scale)
    assert err < 1e-8
    for name, value in frozen.items():
        assert np.array_equal(fac[name], value)
    assert not np.any(fac["G"]) if scale == 0 else np.any(fac["G"])


def test_fit_from_an_init_holds_its_given_constants():
    f = frozen_tucker()
    basis = {"A": np.linalg.qr(np.random.default_rng(0).standard_normal((6, 2)))[0]}
    start = f.random(seed=4, frozen_values=basis)
    target = f.to_dense(f.random(seed=9) | {"A": basis["A"], "B": start["B"]})
    fac, err = f.fit(target, init=start)
    assert err < 1e-8
    assert np.array_equal(fac["A"], basis["A"]) and np.array_equal(fac["B"], start["B"])


def test_fit_of_a_frozen_tied_basis_solves_the_cores():
    f = frozen_basis_usu()
    target, frozen = exact_target(f)
    fac, err = f.fit(target)
    assert err < 1e-8 and np.array_equal(fac["U"], frozen["U"])


def test_fit_is_truthful_when_the_target_is_not_representable():
    f = frozen_tucker()
    target = np.random.default_rng(3).standard_normal(f.shape)
    fac, err = f.fit(target)
    assert err == pytest.approx(np.linalg.norm(target - f.to_dense(fac)) / np.linalg.norm(target), rel=1e-10)
    assert np.array_equal(fac["A"], f.random(seed=0)["A"])


def test_check_format_passes_on_frozen_networks():
    testing.check_format(frozen_tucker())
    testing.check_format(frozen_basis_usu())
