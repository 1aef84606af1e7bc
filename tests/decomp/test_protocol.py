"""The format protocol: slice_rank, lora_factors, from_scale/max_scale and init_from_weights of every format."""

import itertools

import numpy as np
import pytest
import torch

from tensorpeft import decomp

FORMATS = {
    "lora": decomp.LoRA(stack=(3,), out_features=6, in_features=5, rank=2),
    "tucker2_r_in_small": decomp.Tucker2(stack=(2, 2), out_features=6, in_features=5, rank=(3, 2)),
    "tucker2_r_out_small": decomp.Tucker2(stack=(2,), out_features=6, in_features=5, rank=(2, 4)),
    "cp": decomp.CP(stack=(2, 3), out_features=6, in_features=5, rank=3),
    "cp_heads": decomp.CP(stack=(2,), out_features=6, in_features=5, rank=4, heads=3),
    "cp_rank_above_dims": decomp.CP(stack=(2,), out_features=3, in_features=2, rank=5),
    "tt_shared": decomp.TensorTrain(
        stack=(2,), out_features=6, in_features=4, rank=2, in_modes=(2, 2), out_modes=(2, 3)
    ),
    "tt_per_slice": decomp.TensorTrain(
        stack=(2,), out_features=6, in_features=4, rank=3, in_modes=(2, 2), out_modes=(3, 2), share_stack=False
    ),
    "orthogonal": decomp.OrthogonalProjection(stack=(2,), out_features=6, in_features=5, rank=2, inner=3),
    "custom": decomp.TensorNetwork(
        "or,lrq,iq->loi", {"o": 6, "r": 2, "l": 3, "q": 2, "i": 5}, stack_indices="l", out_indices="o", in_indices="i"
    ),
}

EXPECTED_SLICE_RANK = {
    "lora": 2,
    "tucker2_r_in_small": 2,
    "tucker2_r_out_small": 2,
    "cp": 3,
    "cp_heads": 4,
    "cp_rank_above_dims": 2,
    "tt_shared": 2,
    "tt_per_slice": 3,
    "orthogonal": 2,
    "custom": 2,  # the generic bound, the smallest cut: bond r (or q), not min(6, 5)
}


def _indices(fmt):
    return list(itertools.product(*(range(n) for n in fmt.stack)))


@pytest.mark.parametrize("name", list(FORMATS))
def test_slice_rank_bounds_the_rank_of_every_slice(name):
    fmt = FORMATS[name]
    assert fmt.slice_rank == EXPECTED_SLICE_RANK[name]
    dense = fmt.to_dense(fmt.random(seed=0, dtype="float64"))
    for index in _indices(fmt):
        assert np.linalg.matrix_rank(dense[index]) <= fmt.slice_rank


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("name", list(FORMATS))
def test_lora_factors_reproduce_every_slice(name, backend):
    fmt = FORMATS[name]
    factors = fmt.random(seed=1, backend=backend, dtype="float64")
    dense = fmt.to_dense(factors)
    width = fmt.rank if name == "cp_rank_above_dims" else fmt.slice_rank  # CP keeps its R components
    for index in _indices(fmt):
        B, A = fmt.lora_factors(factors, index)
        assert tuple(B.shape) == (fmt.out_features, width) and tuple(A.shape) == (width, fmt.in_features)
        assert type(B) is type(dense)
        np.testing.assert_allclose(np.asarray(B @ A), np.asarray(dense[index]), rtol=1e-10, atol=1e-12)


def test_lora_factors_of_a_single_matrix_take_an_empty_index():
    fmt = decomp.Tucker2(stack=(), out_features=4, in_features=3, rank=2)
    factors = fmt.random(seed=0, dtype="float64")
    B, A = fmt.lora_factors(factors)
    np.testing.assert_allclose(B @ A, fmt.to_dense(factors), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("name", ["lora", "tucker2_r_in_small", "cp", "orthogonal", "tt_shared", "custom"])
def test_lora_factors_refuse_a_bad_index_naming_it(name):
    fmt = FORMATS[name]
    factors = fmt.random(seed=0)
    with pytest.raises(ValueError, match=r"`index"):
        fmt.lora_factors(factors, (99,) * len(fmt.stack))
    with pytest.raises(ValueError, match=r"`factors` is missing"):
        fmt.lora_factors({}, (0,) * len(fmt.stack))


def test_public_budget_hooks():
    shape = {"stack": (4,), "out_features": 8, "in_features": 6}
    assert decomp.Tucker2.from_scale(3, rank_out=2, **shape).rank == (2, 3)
    assert decomp.Tucker2.max_scale(rank_in=5, **shape) == 8
    assert decomp.CP.max_scale(**shape) is None
    assert decomp.LoRA.from_scale(4, **shape) == decomp.LoRA(rank=4, **shape)
    assert decomp.LoRA.max_scale(**shape) == 6
    assert decomp.OrthogonalProjection.from_scale(2, **shape).inner == 2
    assert decomp.OrthogonalProjection.max_scale(inner=3, **shape) == 3
    tt = decomp.TensorTrain.max_scale(stack=(), out_features=4, in_features=4, in_modes=(2, 2), out_modes=(2, 2))
    assert tt == 4  # the middle bond's bound, min(2·2, 2·2)
    assert not hasattr(decomp.Tucker2, "_from_scale") and not hasattr(decomp.Tucker2, "_max_scale")


class _Recorded(decomp.CP):
    """A CP that records the keyword arguments of its fits."""

    def fit(self, dense, **kwargs):
        self.calls = [*getattr(self, "calls", []), kwargs]
        return super().fit(dense, **kwargs)


def test_init_from_weights_fits_the_weights():
    gen = np.random.default_rng(0)
    fmt = decomp.LoRA(stack=(3,), out_features=6, in_features=5, rank=2)
    dense = gen.standard_normal((3, 6, 2)) @ gen.standard_normal((3, 2, 5))
    factors = fmt.init_from_weights(dense)
    assert fmt.relative_error(dense, factors) < 1e-10
    tensor = torch.as_tensor(dense)
    assert isinstance(
        decomp.Tucker2(stack=(3,), out_features=6, in_features=5, rank=2).init_from_weights(tensor)["A"], torch.Tensor
    )


def test_init_from_weights_stops_iterative_fits_early():
    fmt = _Recorded(stack=(2,), out_features=4, in_features=3, rank=2)
    fmt.init_from_weights(np.ones((2, 4, 3)))
    assert fmt.calls == [{"n_iter_max": fmt.init_sweeps}] and fmt.init_sweeps == 50


@pytest.mark.parametrize(("backend", "dtype"), [("numpy", "float16"), ("torch", torch.bfloat16)])
def test_generic_lora_factors_keep_a_half_precision_dtype(backend, dtype):
    fmt = FORMATS["tt_shared"]
    factors = fmt.random(seed=0, backend=backend, dtype=dtype)
    B, A = fmt.lora_factors(factors, (1,))
    assert B.dtype == factors["core0"].dtype and A.dtype == factors["core0"].dtype
    product = np.asarray(B.astype("float32") @ A.astype("float32")) if backend == "numpy" else (B.float() @ A.float())
    reference = fmt.to_dense(factors)[1]
    reference = reference.astype("float32") if backend == "numpy" else reference.float()
    np.testing.assert_allclose(np.asarray(product), np.asarray(reference), atol=0.05)


@pytest.mark.parametrize("name", FORMATS)
def test_regularizer_is_empty_but_for_the_orthogonal_penalty(name):
    fmt = FORMATS[name]
    factors = fmt.random(seed=1)
    terms = fmt.regularizer(factors)
    if name == "orthogonal":
        expected = fmt.orthogonality_penalty(factors)
        assert sorted(terms) == sorted(expected) == ["U1", "U2", "V1", "V2", "cross"]
        assert all(np.allclose(terms[k], expected[k]) for k in terms) and sum(terms.values()) > 0
    else:
        assert terms == {}


def test_regularizer_refuses_bad_factors_naming_them():
    with pytest.raises(ValueError, match="factors"):
        FORMATS["lora"].regularizer({"A": np.zeros((3, 2, 5))})


@pytest.mark.parametrize("name", FORMATS)
def test_rank_components_name_factors_along_one_rank_axis(name):
    fmt = FORMATS[name]
    components = fmt.rank_components
    if name != "orthogonal":
        assert components is None
        return
    shapes, stack = fmt.factor_shapes, fmt.stack
    gate = next(iter(components))
    assert gate == "lambda" and shapes[gate] == (*stack, fmt.rank)
    for factor, axis in components.items():
        assert axis in (-1, -2) and shapes[factor][: len(stack)] == stack
        assert shapes[factor][axis] == fmt.rank and len(shapes[factor]) - len(stack) in (1, 2)
