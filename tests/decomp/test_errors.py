"""Bad input raises ValueError or TypeError whose message names the argument (and what came)."""

import re

import numpy as np
import pytest

from tensorpeft import decomp

LoRA, Tucker2, CP, TT, Orth = decomp.LoRA, decomp.Tucker2, decomp.CP, decomp.TensorTrain, decomp.OrthogonalProjection

# (constructor, kwargs, exception, pattern the message must match)
BAD_CONSTRUCTORS = [
    # ranks <= 0
    (LoRA, dict(rank=0), ValueError, r"`rank` must be a positive integer, got 0"),
    (LoRA, dict(rank=-2), ValueError, r"`rank`.*-2"),
    (Tucker2, dict(rank=0), ValueError, r"`rank\[0\]`.*got 0"),
    (Tucker2, dict(rank=(2, 0)), ValueError, r"`rank\[1\]`.*got 0"),
    (CP, dict(rank=0), ValueError, r"`rank`.*got 0"),
    (TT, dict(rank=0), ValueError, r"`rank`.*got 0"),
    (TT, dict(rank=(1, 0)), ValueError, r"`rank\[1\]`.*got 0"),
    (Orth, dict(rank=0), ValueError, r"`rank`.*got 0"),
    (Orth, dict(rank=1, inner=0), ValueError, r"`inner`.*got 0"),
    # non-integer ranks: floats, bools, strings
    (LoRA, dict(rank=1.5), TypeError, r"`rank`.*1\.5.*float"),
    (LoRA, dict(rank=2.0), TypeError, r"`rank`.*2\.0"),
    (LoRA, dict(rank=True), TypeError, r"`rank`.*True.*bool"),
    (Tucker2, dict(rank=2.0), TypeError, r"`rank`.*2\.0"),
    (Tucker2, dict(rank=True), TypeError, r"`rank`.*True"),
    (Tucker2, dict(rank=(2, 1.5)), TypeError, r"`rank\[1\]`.*1\.5"),
    (Tucker2, dict(rank=(1, 2, 3)), TypeError, r"`rank`.*\(1, 2, 3\)"),
    (CP, dict(rank=2.5), TypeError, r"`rank`.*2\.5"),
    (CP, dict(rank=False), TypeError, r"`rank`.*False"),
    (TT, dict(rank=1.5), TypeError, r"`rank`.*1\.5"),
    (TT, dict(rank=True), TypeError, r"`rank`"),
    (TT, dict(rank=(1, True)), TypeError, r"`rank\[1\]`.*True"),
    (TT, dict(rank="2"), TypeError, r"`rank`.*'2'"),
    (Orth, dict(rank=2.0), TypeError, r"`rank`.*2\.0"),
    (Orth, dict(rank=1, inner=True), TypeError, r"`inner`.*True"),
    # ranks above a mode size (stack (2,), out 4, in 6)
    (LoRA, dict(rank=5), ValueError, r"`rank`=5 exceeds min\(out_features, in_features\)=4"),
    (Tucker2, dict(rank=5), ValueError, r"`rank\[0\]`=5 exceeds `out_features`=4"),
    (Tucker2, dict(rank=(4, 7)), ValueError, r"`rank\[1\]`=7 exceeds `in_features`=6"),
    (Tucker2, dict(rank=(5, 2)), ValueError, r"`rank\[0\]`=5 exceeds `out_features`=4"),
    # TT bonds over (2 | 6 | 4): bounds min(2, 24) = 2 and min(12, 4) = 4
    (TT, dict(rank=(3, 2), in_modes=(6,), out_modes=(4,)), ValueError, r"`rank\[0\]`=3 exceeds the bound 2"),
    (TT, dict(rank=(2, 5), in_modes=(6,), out_modes=(4,)), ValueError, r"`rank\[1\]`=5 exceeds the bound 4"),
    (TT, dict(rank=(2, 2, 2), in_modes=(6,), out_modes=(4,)), ValueError, r"`rank` must have 2 bond ranks.*got 3"),
    (Orth, dict(rank=3, inner=2), ValueError, r"`rank`=3 exceeds `inner`=2"),
    (Orth, dict(rank=5), ValueError, r"`inner`=5 exceeds min\(out_features, in_features\)=4"),
    (Orth, dict(rank=2, inner=5), ValueError, r"`inner`=5 exceeds min\(out_features, in_features\)=4"),
    # modes whose product is not the feature size
    (TT, dict(rank=2, in_modes=(2, 2)), ValueError, r"`in_modes`=\(2, 2\) has product 4, but `in_features`=6"),
    (TT, dict(rank=2, out_modes=(3, 2)), ValueError, r"`out_modes`=\(3, 2\) has product 6, but `out_features`=4"),
    (TT, dict(rank=2, in_modes=()), ValueError, r"`in_modes` must have at least one mode"),
    (TT, dict(rank=2, in_modes=(6, 0)), ValueError, r"`in_modes\[1\]`.*got 0"),
    (TT, dict(rank=2, in_modes=(3.0, 2)), TypeError, r"`in_modes\[0\]`.*3\.0"),
    # heads
    (CP, dict(rank=2, heads=3), ValueError, r"`heads`=3 must divide `out_features`=4"),
    (CP, dict(rank=2, heads=0), ValueError, r"`heads`.*got 0"),
    (CP, dict(rank=2, heads=2.0), TypeError, r"`heads`.*2\.0"),
]


@pytest.mark.parametrize(("cls", "kwargs", "exc", "match"), BAD_CONSTRUCTORS)
def test_bad_constructor_arguments(cls, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        cls(stack=(2,), out_features=4, in_features=6, **kwargs)


@pytest.mark.parametrize("cls", [LoRA, Tucker2, CP, TT, Orth])
@pytest.mark.parametrize(
    ("field", "value", "exc", "match"),
    [
        ("stack", (2, 0), ValueError, r"`stack\[1\]`.*got 0"),
        ("stack", (2.0,), TypeError, r"`stack\[0\]`.*2\.0"),
        ("stack", "ab", TypeError, r"`stack`.*'ab'"),
        ("out_features", 0, ValueError, r"`out_features`.*got 0"),
        ("in_features", 6.0, TypeError, r"`in_features`.*6\.0"),
        ("in_features", True, TypeError, r"`in_features`.*True"),
    ],
)
def test_bad_common_arguments(cls, field, value, exc, match):
    kwargs = dict(stack=(2,), out_features=4, in_features=6, rank=1) | {field: value}
    with pytest.raises(exc, match=match):
        cls(**kwargs)


# ---------------------------------------------------------------------------------------- factors, x, index

FORMAT = Tucker2(stack=(2, 3), out_features=4, in_features=5, rank=2)


def _factors():
    return FORMAT.random(seed=0)


def test_factors_not_a_dict():
    with pytest.raises(TypeError, match=r"`factors` must be a dict of factors, got list"):
        FORMAT.to_dense(list(_factors().values()))


def test_missing_factor():
    fac = _factors()
    del fac["G"]
    with pytest.raises(ValueError, match=r"`factors` is missing factor\(s\) \['G'\]"):
        FORMAT.to_dense(fac)
    with pytest.raises(ValueError, match=r"`factors` is missing factor\(s\) \['G'\]"):
        FORMAT.apply(fac, np.ones(5), index=(0, 0))


def test_extra_factor():
    with pytest.raises(ValueError, match=r"`factors` has unexpected factor\(s\) \['C'\]"):
        FORMAT.to_dense(_factors() | {"C": np.ones(2)})


@pytest.mark.parametrize(("name", "shape"), [("A", (4, 3)), ("G", (2, 3, 2)), ("B", (2, 5))])
def test_mis_shaped_factor(name, shape):
    fac = _factors() | {name: np.ones(shape)}
    expected = FORMAT.factor_shapes[name]
    with pytest.raises(ValueError, match=re.escape(f"`factors['{name}']` must have shape {expected}, got {shape}.")):
        FORMAT.to_dense(fac)


def test_integer_and_mixed_dtype_factors():
    with pytest.raises(TypeError, match=r"`factors\['A'\]` must be floating point, got int64"):
        FORMAT.to_dense(_factors() | {"A": np.ones((4, 2), dtype=np.int64)})
    with pytest.raises(TypeError, match=r"`factors` mixes dtypes \['float32', 'float64'\]"):
        FORMAT.to_dense(_factors() | {"A": np.ones((4, 2), dtype=np.float32)})


def test_factor_of_another_library():
    with pytest.raises(TypeError, match=r"`factors` must be numpy arrays, torch tensors or jax arrays, got list"):
        FORMAT.to_dense(_factors() | {"A": [[1.0, 2.0]] * 4})


def test_mixed_numpy_and_torch():
    torch = pytest.importorskip("torch")
    fac = _factors()
    mixed = fac | {"A": torch.from_numpy(fac["A"])}
    with pytest.raises(TypeError, match=r"`factors` mixes numpy arrays and torch tensors"):
        FORMAT.to_dense(mixed)
    with pytest.raises(TypeError, match=r"`x` is a torch array but the factors are numpy arrays"):
        FORMAT.apply(fac, torch.ones(5, dtype=torch.float64), index=(0, 0))
    with pytest.raises(TypeError, match=r"`x` is a numpy array but the factors are torch arrays"):
        FORMAT.apply({n: torch.from_numpy(a) for n, a in fac.items()}, np.ones(5), index=(0, 0))


@pytest.mark.parametrize("shape", [(4,), (3, 6), (2, 5, 1)])
def test_x_with_wrong_last_dimension(shape):
    with pytest.raises(ValueError, match=rf"`x` must have last dimension `in_features`=5, got shape \({shape[0]},"):
        FORMAT.apply(_factors(), np.ones(shape), index=(0, 0))


def test_x_scalar_and_not_an_array():
    with pytest.raises(ValueError, match=r"`x` must have last dimension `in_features`=5, got shape \(\)"):
        FORMAT.apply(_factors(), np.ones(()), index=(0, 0))
    with pytest.raises(TypeError, match=r"`x` must be numpy arrays, torch tensors or jax arrays, got list"):
        FORMAT.apply(_factors(), [1.0] * 5, index=(0, 0))


@pytest.mark.parametrize(
    ("index", "exc", "match"),
    [
        ((2, 0), ValueError, r"`index\[0\]`=2 is out of range for stack mode of size 2"),
        ((0, 3), ValueError, r"`index\[1\]`=3 is out of range for stack mode of size 3"),
        ((0, -4), ValueError, r"`index\[1\]`=-4 is out of range"),
        ((0,), ValueError, r"`index` must have 2 entries for stack \(2, 3\), got \(0,\)"),
        ((0, 0, 0), ValueError, r"`index` must have 2 entries"),
        ((), ValueError, r"`index` must have 2 entries"),
        (0, ValueError, r"`index` must have 2 entries"),
        ([0, 0], TypeError, r"`index` must be a tuple of ints"),
        ((0, 1.0), TypeError, r"`index\[1\]` must be an int, got 1\.0"),
        ((True, 0), TypeError, r"`index\[0\]` must be an int, got True"),
    ],
)
def test_bad_index(index, exc, match):
    with pytest.raises(exc, match=match):
        FORMAT.apply(_factors(), np.ones(5), index=index)


def test_index_on_an_unstacked_format():
    f = LoRA((), 3, 4, rank=1)
    with pytest.raises(ValueError, match=r"`index` must have 0 entries for stack \(\), got \(0,\)"):
        f.apply(f.random(), np.ones(4), index=0)


# ---------------------------------------------------------------------------------------- fit input


@pytest.mark.parametrize(
    "fmt",
    [
        LoRA((2,), 4, 3, rank=1),
        Tucker2((2,), 4, 3, rank=1),
        CP((2,), 4, 3, rank=1),
        TT((2,), 4, 3, rank=1),
        Orth((2,), 4, 3, rank=1),
        decomp.TensorNetwork("or,ri->oi", {"o": 4, "r": 1, "i": 3}, out_indices="o", in_indices="i"),
    ],
    ids=lambda f: type(f).__name__,
)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_fit_rejects_non_finite(fmt, bad):
    dense = np.ones(fmt.shape)
    dense.flat[-1] = bad
    with pytest.raises(ValueError, match=r"`dense` contains NaN or infinite values"):
        fmt.fit(dense)


def test_fit_rejects_non_finite_torch():
    torch = pytest.importorskip("torch")
    dense = torch.ones(2, 4, 3, dtype=torch.float64)
    dense[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"`dense` contains NaN"):
        Tucker2((2,), 4, 3, rank=1).fit(dense)


def test_fit_rejects_wrong_shape_and_dtype():
    f = Tucker2((2,), 4, 3, rank=1)
    with pytest.raises(ValueError, match=r"`dense` must have shape \(2, 4, 3\), got \(4, 3\)"):
        f.fit(np.ones((4, 3)))
    with pytest.raises(TypeError, match=r"`dense` must be floating point, got int64"):
        f.fit(np.ones((2, 4, 3), dtype=np.int64))
    with pytest.raises(TypeError, match=r"`dense` must be numpy arrays, torch tensors or jax arrays, got list"):
        f.fit([[[1.0] * 3] * 4] * 2)


def test_fit_rejects_bad_init():
    f = CP((2,), 4, 3, rank=2)
    init = f.random()
    del init["in"]
    with pytest.raises(ValueError, match=r"`init` is missing factor\(s\) \['in'\]"):
        f.fit(np.ones(f.shape), init=init)


# ---------------------------------------------------------------------------------------- TensorNetwork

SIZES = {"o": 4, "r": 2, "l": 3, "s": 2, "i": 5}
GOOD = dict(stack_indices="l", out_indices="o", in_indices="i")


@pytest.mark.parametrize(
    ("equation", "exc", "match"),
    [
        ("or,lrs,is", ValueError, r"`equation` must be an explicit einsum string.*'or,lrs,is'"),
        ("or,lrs,is->loi->x", ValueError, r"`equation` must be an explicit einsum string"),
        ("or,,is->loi", ValueError, r"`equation` has an empty operand"),
        ("oor,lrs,is->loi", ValueError, r"`equation` term 'oor' repeats an index"),
        ("or,lrs,is->lloi", ValueError, r"`equation` term 'lloi' repeats an index"),
        ("or,lr1,is->loi", ValueError, r"`equation` indices must be letters, got term 'lr1'"),
        ("...or,lrs,is->loi", ValueError, r"`equation` term '\.\.\.or'"),
        ("or,lrs,is->lox", ValueError, r"`sizes` has no size for indices \['x'\]"),
        (None, ValueError, r"`equation` must be an explicit einsum string.*None"),
        ("or,lrs->loi", ValueError, r"output indices \['i'\] of `equation` appear in no factor"),
    ],
)
def test_malformed_equations(equation, exc, match):
    with pytest.raises(exc, match=match):
        decomp.TensorNetwork(equation, SIZES, **GOOD)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (dict(sizes=SIZES | {"r": 0}), ValueError, r"`sizes\['r'\]`.*got 0"),
        (dict(sizes=SIZES | {"r": 2.0}), TypeError, r"`sizes\['r'\]`.*2\.0"),
        (dict(sizes=[("o", 4)]), TypeError, r"`sizes` must be a mapping"),
        (dict(stack_indices="o", out_indices="l"), ValueError, r"`stack_indices`\+`out_indices`\+`in_indices` = 'oli'"),
        (dict(out_indices="i", in_indices="o"), ValueError, r"must equal the output of `equation`, 'loi'"),
        (dict(stack_indices="lo", out_indices="", in_indices="i"), ValueError, r"`out_indices` and `in_indices`"),
        (dict(factor_names=("A", "B")), ValueError, r"`factor_names` must be 3 distinct names"),
        (dict(factor_names=("A", "A", "B")), ValueError, r"`factor_names` must be 3 distinct names"),
        (dict(zero_factor="Z"), ValueError, r"`zero_factor` must be one of \('F0', 'F1', 'F2'\), got 'Z'"),
    ],
)
def test_bad_network_arguments(kwargs, exc, match):
    args = dict(sizes=SIZES, **GOOD) | kwargs
    with pytest.raises(exc, match=match):
        decomp.TensorNetwork("or,lrs,is->loi", **args)


# ---------------------------------------------------------------------------------------- huge arguments


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: decomp.balanced_modes(2**61 - 1), ValueError, r"`n` must be at most 2,147,483,648"),
        (lambda: decomp.balanced_modes(2**31 + 1), ValueError, r"`n` must be at most"),
        (lambda: TT((), 4, 2**61 - 1, 1), ValueError, r"`in_features` must be at most 2,147,483,648"),
        (lambda: LoRA((2**40,), 4, 6, 1), ValueError, r"`stack\[0\]` must be at most"),
        (lambda: Tucker2((), 2**31 + 1, 6, 1), ValueError, r"`out_features` must be at most"),
        (lambda: CP((2,), 4, 6, rank=10**20), ValueError, r"`rank` must be at most 9,223,372,036,854,775,807"),
        (lambda: Tucker2((2,), 4, 6, rank=(1, 2**64)), ValueError, r"`rank\[1\]` must be at most"),
        (lambda: TT((), 4, 6, rank=(1, 2**64), in_modes=(6,), out_modes=(2, 2)), ValueError, r"`rank\[1\]`"),
        (lambda: TT((), 4, 6, 1, in_modes=(2**40, 1)), ValueError, r"`in_modes\[0\]` must be at most"),
        (
            lambda: decomp.TensorNetwork("or,ri->oi", {"o": 2**32, "r": 1, "i": 2}, out_indices="o", in_indices="i"),
            ValueError,
            r"`sizes\['o'\]` must be at most 2,147,483,648",
        ),
        (
            lambda: decomp.TensorNetwork(
                "ar,br,ri->abi", {"a": 2**16, "b": 2**16, "r": 1, "i": 2}, out_indices="ab", in_indices="i"
            ),
            ValueError,
            r"`out_indices`='ab' gives 4,294,967,296 features",
        ),
    ],
)
def test_huge_sizes_are_refused_at_once(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_balanced_modes_with_more_modes_than_prime_factors():
    assert decomp.balanced_modes(768, 10**12) == decomp.balanced_modes(768, 9) == (3, 2, 2, 2, 2, 2, 2, 2, 2)
    assert decomp.balanced_modes(2**31 - 1) == (2**31 - 1,)  # a prime at the bound: trial division is quick


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_factors_that_cannot_fit_in_memory_are_a_value_error_before_allocating(backend):
    if backend == "torch":
        pytest.importorskip("torch")
    f = CP((2,), 4, 6, rank=2**40)
    assert f.num_params == 12 * 2**40  # a Python int, no overflow
    for method in (f.random, f.init):
        with pytest.raises(ValueError, match=r"`rank` asks for 13,194,139,533,312 scalars .* more than the"):
            method(backend=backend)
    network = decomp.TensorNetwork("or,ri->oi", {"o": 4, "r": 2**50, "i": 3}, out_indices="o", in_indices="i")
    with pytest.raises(ValueError, match=r"`sizes` asks for"):
        network.random(backend=backend)


def test_to_dense_and_apply_check_the_memory_they_would_allocate():
    sizes = {"s": 2**12, "t": 2**12, "o": 2**12, "i": 2**12}
    f = decomp.TensorNetwork("s,t,o,i->stoi", sizes, stack_indices="st", out_indices="o", in_indices="i")
    fac = f.random()
    assert sum(a.size for a in fac.values()) == 4 * 2**12
    with pytest.raises(ValueError, match=r"`factors` asks for 281,474,976,710,656 scalars"):
        f.to_dense(fac)
    with pytest.raises(ValueError, match=r"`x` asks for"):
        f.apply(fac, np.ones(2**12), index=None)
    x = np.broadcast_to(np.ones(2**12), (2**20, 2**20, 2**12))  # a view: nothing allocated
    with pytest.raises(ValueError, match=r"`x` asks for"):
        f.apply(fac, x, index=(0, 0))
    assert f.apply(fac, np.ones(2**12), index=(1, 2)).shape == (2**12,)


# ---------------------------------------------------------------------------------------- einsum letters


def test_formats_with_more_einsum_letters_than_numpy_and_torch_have_are_refused():
    with pytest.raises(ValueError, match=r"`stack` asks for a format with 52 einsum index letters"):
        LoRA((1,) * 49, 4, 6, 1)
    with pytest.raises(ValueError, match=r"`stack` must have at most 51 entries"):
        LoRA((1,) * 100, 4, 6, 1)
    with pytest.raises(ValueError, match=r"`stack` \+ `in_modes` \+ `out_modes` asks for a format with 5\d einsum"):
        TT((), 4, 6, 1, in_modes=(1,) * 20 + (6,), out_modes=(4,) + (1,) * 5)
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    sizes = dict.fromkeys(letters, 1)
    with pytest.raises(ValueError, match=r"`equation` asks for a format with 52 einsum index letters"):
        decomp.TensorNetwork(
            f"{letters[:-2]},{letters[-2:]}->{letters}", sizes, out_indices=letters[:-1], in_indices=letters[-1]
        )


def test_the_largest_formats_that_fit_the_letters_work():
    f = LoRA((1,) * 48, 4, 6, 1)  # 48 + o, i, r = 51 letters; apply's batch is the 52nd
    fac = f.random()
    x = np.ones((2, 6))
    assert np.allclose(f.apply(fac, x, index=None), x @ np.swapaxes(f.to_dense(fac), -1, -2))
    t = TT((), 4, 6, 1, in_modes=(1,) * 11 + (6,), out_modes=(4,) + (1,) * 11)
    fac = t.random()
    assert np.allclose(t.apply(fac, x), x @ t.to_dense(fac).T)


@pytest.mark.parametrize("term", ["éb", "aβ", "a1"])
def test_non_ascii_letters_are_refused_naming_equation(term):
    with pytest.raises(ValueError, match=r"`equation` indices must be letters, got term .*a-z and A-Z only"):
        decomp.TensorNetwork(
            f"{term},bi->{term[0]}i", {term[0]: 2, term[1]: 2, "b": 1, "i": 3}, out_indices=term[0], in_indices="i"
        )


def test_contract_renames_letters_einsum_does_not_accept():
    from tensorpeft.decomp._backend import ops_named
    from tensorpeft.decomp._contract import contract, einsum_letters

    assert einsum_letters("àb,bç->àç") == "ab,bc->ac"
    a, b, c = np.arange(6.0).reshape(2, 3), np.arange(12.0).reshape(3, 4), np.ones((4, 2))
    assert np.array_equal(contract("àb,bç,çd->àd", a, b, c, ops=ops_named("numpy")), a @ b @ c)
    with pytest.raises(ValueError, match=r"`equation` has 53 distinct indices"):
        einsum_letters("".join(chr(0x100 + k) for k in range(53)) + "->")


# ---------------------------------------------------------------------------------------- constructor types


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: LoRA(np.array(3), 4, 6, 1), TypeError, r"`stack` must be a tuple of positive integers, got array"),
        (lambda: LoRA({2: 1}, 4, 6, 1), TypeError, r"`stack` must be a tuple"),
        (lambda: TT((2,), 4, 6, 1, share_stack="no"), TypeError, r"`share_stack` must be True or False, got 'no'"),
        (lambda: TT((2,), 4, 6, 1, share_stack=1), TypeError, r"`share_stack`"),
        (
            lambda: decomp.TensorNetwork(
                "ar,ri->ai", SIZES | {"a": 2}, out_indices="a", in_indices="i", factor_names="XY"
            ),
            TypeError,
            r"`factor_names` must be 2 distinct names .*got 'XY'",
        ),
        (
            lambda: decomp.TensorNetwork(
                "ar,ri->ai", SIZES | {"a": 2}, out_indices="a", in_indices="i", factor_names=(1, 2)
            ),
            TypeError,
            r"`factor_names` .* of type str",
        ),
        (
            lambda: decomp.TensorNetwork(
                "ar,ri->ai", SIZES | {"a": 2}, out_indices="a", in_indices="i", factor_names=iter(str, 1)
            ),
            ValueError,
            r"`factor_names` must be 2 distinct names",
        ),
        (
            lambda: decomp.TensorNetwork(
                "ar,ri->ai", SIZES | {"a": 2}, stack_indices=None, out_indices="a", in_indices="i"
            ),
            TypeError,
            r"`stack_indices` must be a str of index letters, got None",
        ),
        (
            lambda: decomp.TensorNetwork("ar,ri->ai", SIZES | {"a": 2}, out_indices=["a"], in_indices="i"),
            TypeError,
            r"`out_indices` must be a str",
        ),
        (
            lambda: decomp.TensorNetwork(
                "ar,ri->ai", SIZES | {"a": 2}, out_indices="a", in_indices="i", zero_factor=["F0"]
            ),
            ValueError,
            r"`zero_factor` must be one of",
        ),
    ],
)
def test_constructor_arguments_of_the_wrong_type(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (np.ones(5, dtype=complex), r"`x` must be a real .* got dtype complex128"),
        (np.ones(5, dtype=bool), r"`x` must be a real .* got dtype bool"),
        (np.array(["a"] * 5), r"`x` must be a real"),
        (np.ones(5, dtype=object), r"`x` must be a real"),
    ],
)
def test_apply_refuses_non_real_x(x, match):
    with pytest.raises(TypeError, match=match):
        FORMAT.apply(_factors(), x, index=(0, 0))
    assert FORMAT.apply(_factors(), np.ones(5, dtype=np.int32), index=(0, 0)).dtype == np.float64


def test_apply_refuses_integer_torch_x_under_autocast():
    torch = pytest.importorskip("torch")
    fac = {n: torch.from_numpy(a).float() for n, a in _factors().items()}
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(TypeError, match=r"`x` must be a real"):
        FORMAT.apply(fac, torch.ones(5, dtype=torch.int64), index=(0, 0))


# ---------------------------------------------------------------------------------------- welore


def test_welore_refuses_huge_shapes_non_str_names_and_complex_tensors():
    with pytest.raises(ValueError, match=r"`matrices\['a'\].shape\[1\]` must be at most"):
        decomp.welore_ranks({"a": decomp.Spectrum([1.0, 2.0], (2, 2**40))})
    with pytest.raises(TypeError, match=r"`matrices` must be keyed by str names, got key 3"):
        decomp.welore_ranks({3: np.ones((2, 2))})
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"`matrices\['c'\]` must be a real tensor, got dtype torch.complex64"):
        decomp.welore_ranks({"c": torch.ones(2, 2, dtype=torch.complex64)})


def test_retract_checks_keep_delta_and_works_in_half_precision():
    torch = pytest.importorskip("torch")
    fmt = decomp.OrthogonalProjection((2,), 6, 5, rank=2)
    factors = fmt.random(seed=0, backend="torch", dtype=torch.bfloat16)
    for bad in (1, "yes", None, torch.zeros(0)):
        with pytest.raises(TypeError, match="`keep_delta`"):
            fmt.retract(factors, keep_delta=bad)
    out = fmt.retract(factors)
    assert all(v.dtype == torch.bfloat16 for v in out.values())
    wide = {n: v.double() for n, v in factors.items()}
    delta = (fmt.to_dense({n: v.double() for n, v in out.items()}) - fmt.to_dense(wide)).norm() / fmt.to_dense(
        wide
    ).norm()
    assert delta < 0.05  # ΔW kept up to bf16 rounding


@pytest.mark.parametrize(
    ("value", "kwargs", "expected"),
    [
        (3, {}, 3),
        (np.int64(3), {}, 3),
        ([4, 2], {}, (4, 2)),
        ((4, np.int32(2)), {"length": 2}, (4, 2)),
        (2**40, {}, 2**40),
    ],
)
def test_check_int_or_tuple_accepts_an_int_or_a_sequence(value, kwargs, expected):
    from tensorpeft.decomp.validate import check_int_or_tuple

    got = check_int_or_tuple(value, "rank", **kwargs)
    assert got == expected and type(got) is type(expected)
    assert all(type(r) is int for r in (got if isinstance(got, tuple) else (got,)))


@pytest.mark.parametrize(
    ("value", "kwargs", "exc", "pattern"),
    [
        (True, {}, TypeError, r"`rank` must be an int or a tuple of positive integers, got True"),
        ("2", {}, TypeError, r"`rank`.*'2'"),
        (np.array([2, 2]), {}, TypeError, r"`rank`"),
        (2.0, {"expected": "a pair"}, TypeError, r"`rank` must be an int or a pair, got 2\.0"),
        ((), {}, ValueError, r"`rank` must not be empty"),
        ((1, 2, 3), {"length": 2}, ValueError, r"`rank` must have 2 entries, got 3: \(1, 2, 3\)"),
        ((2, 0), {}, ValueError, r"`rank\[1\]` must be a positive integer, got 0"),
        ((2, False), {}, TypeError, r"`rank\[1\]`.*False"),
        ((2, 2**40), {"check": decomp.validate.check_size}, ValueError, r"`rank\[1\]` must be at most"),
        (2**40, {"check": decomp.validate.check_size}, ValueError, r"`rank` must be at most"),
    ],
)
def test_check_int_or_tuple_refuses_naming_the_argument(value, kwargs, exc, pattern):
    from tensorpeft.decomp.validate import check_int_or_tuple

    with pytest.raises(exc, match=pattern):
        check_int_or_tuple(value, "rank", **kwargs)


def test_every_int_or_tuple_rank_is_parsed_alike():
    """The two formats and their configs share one parser: same entry names, same types, lists as tuples."""
    import tensorpeft as tp

    makers = [
        lambda r: Tucker2((2,), 4, 6, rank=r).rank,
        lambda r: TT((2,), 4, 6, rank=r, in_modes=(6,), out_modes=(4,)).rank,
        lambda r: tp.Tucker2Config(rank=r, target_modules=["q"]).rank,
        lambda r: tp.TensorTrainConfig(rank=r, target_modules=["q"]).rank,
    ]
    for make in makers:
        assert make([2, 1]) == (2, 1)
        with pytest.raises(TypeError, match=r"`rank\[1\]`.*1\.5"):
            make([2, 1.5])
        with pytest.raises(ValueError, match=r"`rank\[0\]`.*got -1"):
            make((-1, 2))
        with pytest.raises(TypeError, match=r"`rank`.*\{2\}"):
            make({2})
