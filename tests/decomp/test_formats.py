"""Properties of the built-in formats: reconstruction, factored apply, counts, init, dtypes.

Every reference here is written independently of the library: loops over slices, ranks and
elements, with numpy only.
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tensorpeft import decomp, testing
from tensorpeft.testing import assert_close

# ---------------------------------------------------------------------------------------- naive loops


def naive_lora(f, fac):
    dense = np.zeros(f.shape)
    for s in np.ndindex(*f.stack):
        dense[s] = fac["B"][s] @ fac["A"][s]
    return dense


def naive_tucker2(f, fac):
    dense = np.zeros(f.shape)
    for s in np.ndindex(*f.stack):
        dense[s] = fac["A"] @ fac["G"][s] @ fac["B"].T
    return dense


def naive_cp(f, fac):
    """Sum over the rank of outer products; with heads, head h fills rows h*d_head .. (h+1)*d_head - 1."""
    dense = np.zeros(f.shape)
    heads = f.heads or 1
    d_head = f.out_features // heads
    for s in np.ndindex(*f.stack):
        for r in range(f.rank):
            weight = math.prod(fac[f"stack{k}"][s_k, r] for k, s_k in enumerate(s))
            for h in range(heads):
                head_weight = fac["heads"][h, r] if f.heads is not None else 1.0
                rows = slice(h * d_head, (h + 1) * d_head)
                dense[s][rows] += weight * head_weight * np.outer(fac["out"][:, r], fac["in"][:, r])
    return dense


def naive_tt(f, fac):
    """Element by element: a product of one matrix per core, mode indices in row-major order."""
    dense = np.zeros(f.shape)
    n_cores = len(f.factor_shapes)
    for s in np.ndindex(*f.stack):
        for o in range(f.out_features):
            for i in range(f.in_features):
                modes = (*np.unravel_index(i, f.in_modes), *np.unravel_index(o, f.out_modes))
                if f.share_stack:
                    modes = (*s, *modes)
                chain = np.ones((1, 1))
                for k in range(n_cores):
                    core = fac[f"core{k}"] if f.share_stack else fac[f"core{k}"][s]
                    chain = chain @ core[:, modes[k], :]
                dense[(*s, o, i)] = chain[0, 0]
    return dense


def naive_orthogonal(f, fac):
    dense = np.zeros(f.shape)
    for s in np.ndindex(*f.stack):
        dense[s] = fac["U1"][s] @ fac["U2"][s] @ np.diag(fac["lambda"][s]) @ fac["V2"][s] @ fac["V1"][s]
    return dense


NAIVE = {
    decomp.LoRA: naive_lora,
    decomp.Tucker2: naive_tucker2,
    decomp.CP: naive_cp,
    decomp.TensorTrain: naive_tt,
    decomp.OrthogonalProjection: naive_orthogonal,
}


def naive_dense(f, fac):
    return NAIVE[type(f)](f, {n: np.asarray(a, dtype=np.float64) for n, a in fac.items()})


def naive_params(f):
    """The closed formulas of the docstrings."""
    slices = math.prod(f.stack)
    d_out, d_in = f.out_features, f.in_features
    if isinstance(f, decomp.LoRA):
        return slices * f.rank * (d_in + d_out)
    if isinstance(f, decomp.Tucker2):
        r_out, r_in = f.rank
        return r_out * d_out + r_in * d_in + slices * r_out * r_in
    if isinstance(f, decomp.CP):
        if f.heads is None:
            return f.rank * (sum(f.stack) + d_out + d_in)
        return f.rank * (sum(f.stack) + f.heads + d_out // f.heads + d_in)
    if isinstance(f, decomp.TensorTrain):
        train = (*f.stack, *f.in_modes, *f.out_modes) if f.share_stack else (*f.in_modes, *f.out_modes)
        bonds = (1, *f.rank, 1)
        per_train = sum(bonds[k] * n * bonds[k + 1] for k, n in enumerate(train))
        return per_train if f.share_stack else slices * per_train
    if isinstance(f, decomp.OrthogonalProjection):
        k, r = f.inner, f.rank
        return slices * (k * (d_in + d_out) + 2 * k * r + r)
    raise AssertionError(type(f))


# ---------------------------------------------------------------------------------------- reconstruction


@given(testing.formats(), st.integers(0, 2**16))
def test_to_dense_equals_naive_loop(f, seed):
    fac = f.random(seed=seed)
    assert_close(f.to_dense(fac), naive_dense(f, fac), what="to_dense and the naive loop")


@given(testing.formats(max_features=4).flatmap(lambda f: st.tuples(st.just(f), testing.factors(f))))
def test_to_dense_equals_naive_loop_on_drawn_factors(case):
    f, fac = case
    assert_close(f.to_dense(fac), naive_dense(f, fac), what="to_dense and the naive loop")


def test_cp_heads_are_head_major_blocks_of_the_output():
    # Only head 1 and rank component 0 non-zero: rows d_head..2*d_head-1 alone may be non-zero.
    f = decomp.CP(stack=(2,), out_features=6, in_features=4, rank=2, heads=3)
    fac = {n: np.zeros(s) for n, s in f.factor_shapes.items()}
    fac["stack0"][:, 0] = 1.0
    fac["heads"][1, 0] = 1.0
    fac["out"][:, 0] = [1.0, 2.0]
    fac["in"][:, 0] = [1.0, 1.0, 1.0, 1.0]
    dense = f.to_dense(fac)
    expected = np.zeros((2, 6, 4))
    expected[:, 2, :] = 1.0
    expected[:, 3, :] = 2.0
    np.testing.assert_array_equal(dense, expected)


def test_tt_modes_are_row_major():
    # A rank-1 train: ΔW[o, i] = out_core[o_1] ... · in_core[i_1, i_2] with i = i_1 * n_2 + i_2.
    f = decomp.TensorTrain((), 2, 6, rank=1, in_modes=(2, 3), out_modes=(2,))
    fac = {"core0": np.array([1.0, 10.0]).reshape(1, 2, 1), "core1": np.array([1.0, 2.0, 3.0]).reshape(1, 3, 1)}
    fac["core2"] = np.array([1.0, -1.0]).reshape(1, 2, 1)
    expected = np.outer([1.0, -1.0], [1.0, 2.0, 3.0, 10.0, 20.0, 30.0])
    np.testing.assert_array_equal(f.to_dense(fac), expected)


# ---------------------------------------------------------------------------------------- factored apply


@given(
    testing.formats().flatmap(lambda f: st.tuples(st.just(f), testing.inputs(f), testing.indices(f))),
    st.integers(0, 2**16),
)
def test_apply_equals_dense_matmul(case, seed):
    f, x, index = case
    fac = f.random(seed=seed)
    dense = naive_dense(f, fac)
    y = f.apply(fac, x, index=index)
    assert y.shape == (*x.shape[:-1], f.out_features)
    assert_close(y, x @ dense[index].T, scale=np.abs(x) @ np.abs(dense[index]).T, what="apply")


@given(f=testing.formats(), seed=st.integers(0, 2**16))
def test_apply_every_index_and_none(f, seed):
    fac = f.random(seed=seed)
    dense = naive_dense(f, fac)
    x = np.random.default_rng(seed).standard_normal((3, f.in_features))
    every = f.apply(fac, x, index=None)
    assert every.shape == (*f.stack, 3, f.out_features)
    for index in np.ndindex(*f.stack):
        y = f.apply(fac, x, index=index)
        assert_close(y, x @ dense[index].T, scale=np.abs(x) @ np.abs(dense[index]).T, what=f"apply at {index}")
        assert_close(every[index], y, what=f"apply(index=None)[{index}]")


def test_apply_accepts_a_plain_int_for_one_stack_mode():
    f = decomp.Tucker2(stack=(3,), out_features=4, in_features=5, rank=2)
    fac = f.random(seed=1)
    x = np.ones((2, 5))
    np.testing.assert_array_equal(f.apply(fac, x, index=2), f.apply(fac, x, index=(2,)))
    np.testing.assert_array_equal(f.apply(fac, x, index=-1), f.apply(fac, x, index=(2,)))


# ---------------------------------------------------------------------------------------- parameter counts


@given(testing.formats())
def test_num_params_closed_formula_and_factor_sizes(f):
    assert type(f.num_params) is int
    assert f.num_params == sum(math.prod(s) for s in f.factor_shapes.values())
    assert f.num_params == naive_params(f)


@pytest.mark.parametrize(
    ("rank", "expected"), [(1, 1_560), (2, 3_168), (4, 6_528), (8, 13_824), (16, 30_720), (32, 73_728)]
)
def test_tucker2_lotr_counts(rank, expected):
    assert decomp.Tucker2(stack=(24,), out_features=768, in_features=768, rank=rank).num_params == expected


@pytest.mark.parametrize("rank", [1, 4, 8, 32])
def test_cp_lorta_count_is_860_per_rank(rank):
    f = decomp.CP(stack=(12, 4), out_features=768, in_features=768, rank=rank, heads=12)
    assert f.num_params == 860 * rank


def test_tt_lora_count():
    f = decomp.TensorTrain((), 768, 768, rank=5, in_modes=(64, 4, 3), out_modes=(3, 4, 64))
    assert f.num_params == 990


def test_lora_count():
    assert decomp.LoRA(stack=(24,), out_features=768, in_features=768, rank=8).num_params == 294_912


def test_orthogonal_deberta_v3_base_total():
    formats = [
        decomp.OrthogonalProjection(stack=(12, 4), out_features=768, in_features=768, rank=8, inner=8),  # q,k,v,o
        decomp.OrthogonalProjection(stack=(12,), out_features=3072, in_features=768, rank=8, inner=8),  # intermediate
        decomp.OrthogonalProjection(stack=(12,), out_features=768, in_features=3072, rank=8, inner=8),  # output
    ]
    assert sum(f.num_params for f in formats) == 1_336_896


# ---------------------------------------------------------------------------------------- init and dtypes


@given(testing.formats(), st.integers(0, 2**16))
def test_init_is_exactly_zero(f, seed):
    fac = f.init(seed=seed)
    assert not np.any(f.to_dense(fac))
    assert not np.any(f.apply(fac, np.ones((2, f.in_features)), index=None))
    zero = fac[f.zero_factor]
    assert not np.any(zero)
    others = [n for n in fac if n != f.zero_factor]
    assert all(np.any(fac[n]) for n in others)


@given(testing.formats(), st.integers(0, 2**16))
def test_init_gradient_of_zero_factor_is_nonzero(f, seed):
    # ⟨R, ΔW⟩ is linear in the zero factor Z: its gradient is ΔW(Z = e_j) paired with R, for each entry j.
    fac = f.init(seed=seed)
    weights = np.random.default_rng(seed).standard_normal(f.shape)
    name = f.zero_factor
    grad = np.zeros(f.factor_shapes[name])
    for j in np.ndindex(*grad.shape):
        unit = np.zeros(grad.shape)
        unit[j] = 1.0
        grad[j] = np.sum(weights * naive_dense(f, fac | {name: unit}))
    assert np.any(grad != 0)


@pytest.mark.parametrize("dtype", [None, np.float32, np.float64])
@pytest.mark.parametrize("method", ["init", "random"])
def test_numpy_dtypes(method, dtype):
    expected = np.dtype(dtype or np.float64)
    for f in [
        decomp.LoRA((2,), 4, 3, rank=2),
        decomp.Tucker2((2,), 4, 3, rank=(2, 1)),
        decomp.CP((2, 2), 4, 3, rank=2, heads=2),
        decomp.TensorTrain((2,), 4, 6, rank=2),
        decomp.OrthogonalProjection((2,), 4, 3, rank=1, inner=2),
    ]:
        fac = getattr(f, method)(seed=0, dtype=dtype)
        assert {a.dtype for a in fac.values()} == {expected}
        dense = f.to_dense(fac)
        assert isinstance(dense, np.ndarray)
        assert dense.dtype == expected
        assert f.apply(fac, np.ones(f.in_features, dtype=expected), index=(1,) * len(f.stack)).dtype == expected


# ---------------------------------------------------------------------------------------- orthogonal planes


def _plane_deviation(gram):
    eye = np.eye(gram.shape[-1])
    return float(np.sum(np.sqrt(np.sum((gram - eye) ** 2, axis=(-2, -1)))))


@given(testing.orthogonal_formats(), st.integers(0, 2**16))
def test_retract_keeps_delta_and_zeroes_the_penalty(f, seed):
    # Planes scaled away from orthonormality: λ alone cannot hide it.
    fac = {n: a * (1.5 if n != "lambda" else 1.0) for n, a in f.random(seed=seed).items()}
    dense = f.to_dense(fac)
    retracted = f.retract(fac)
    assert_close(f.to_dense(retracted), dense, what="ΔW before and after retract")
    penalty = f.orthogonality_penalty(retracted)
    assert set(penalty) == {"U1", "V1", "U2", "V2", "cross"}
    assert all(float(v) < 1e-10 for v in penalty.values()), penalty


@given(testing.orthogonal_formats().flatmap(lambda f: st.tuples(st.just(f), testing.factors(f, bound=2.0))))
def test_penalty_matches_its_formula(case):
    f, fac = case
    penalty = f.orthogonality_penalty(fac)
    tr = lambda a: np.swapaxes(a, -1, -2)  # noqa: E731
    P, Q = fac["U1"] @ fac["U2"], fac["V2"] @ fac["V1"]
    expected = {
        "U1": _plane_deviation(tr(fac["U1"]) @ fac["U1"]),
        "V1": _plane_deviation(fac["V1"] @ tr(fac["V1"])),
        "U2": _plane_deviation(tr(fac["U2"]) @ fac["U2"]),
        "V2": _plane_deviation(fac["V2"] @ tr(fac["V2"])),
        "cross": _plane_deviation(tr(P) @ P) + _plane_deviation(Q @ tr(Q)),
    }
    for name, value in expected.items():
        assert float(penalty[name]) == pytest.approx(value, rel=1e-10, abs=1e-12), name


@given(testing.orthogonal_formats(), st.integers(0, 2**16))
def test_penalty_positive_off_orthonormal_planes(f, seed):
    fac = {n: a * (1.5 if n != "lambda" else 1.0) for n, a in f.random(seed=seed).items()}
    penalty = f.orthogonality_penalty(fac)
    assert all(float(v) > 0 for v in penalty.values()), penalty


@given(testing.orthogonal_formats(), st.integers(0, 2**16))
def test_random_and_init_planes_are_orthonormal(f, seed):
    for fac in (f.random(seed=seed), f.init(seed=seed)):
        assert all(float(v) < 1e-10 for v in f.orthogonality_penalty(fac).values())


# ---------------------------------------------------------------------------------------- custom networks


def test_check_format_passes_on_custom_networks(custom_network):
    f = decomp.TensorNetwork(**custom_network.kwargs)
    ran = testing.check_format(f, skip=("fit",))
    assert "apply" in ran and "init" in ran


def test_custom_network_dense_equals_elementwise_sum(custom_network):
    spec = custom_network.kwargs
    f = decomp.TensorNetwork(**spec)
    fac = f.random(seed=3)
    lhs, out = spec["equation"].split("->")
    terms = lhs.split(",")
    letters = sorted(set("".join(terms)))
    sizes = spec["sizes"]
    expected = np.zeros([sizes[c] for c in out])
    for values in np.ndindex(*(sizes[c] for c in letters)):
        at = dict(zip(letters, values, strict=True))
        product = 1.0
        for term, factor in zip(terms, f.factor_names, strict=True):
            product *= fac[factor][tuple(at[c] for c in term)]
        expected[tuple(at[c] for c in out)] += product
    assert_close(f.to_dense(fac), expected.reshape(f.shape), what="to_dense and the elementwise sum")


@pytest.mark.parametrize("names", [np.array(0.0), np.array("A")])
def test_factor_names_iterable_in_type_only_is_a_type_error_naming_it(names):
    with pytest.raises(TypeError, match="`factor_names` must be 3 distinct names"):
        decomp.TensorNetwork(
            "or,lrs,is->loi",
            {"o": 4, "r": 2, "l": 3, "s": 2, "i": 5},
            stack_indices="l",
            out_indices="o",
            in_indices="i",
            factor_names=names,
        )
