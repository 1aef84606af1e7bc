"""``decomp.Sum``: a sum of formats of one shape answers every verb of a format through its terms."""

import numpy as np
import pytest
import torch

from tensorpeft import decomp, testing


def _net(equation, sizes, **kwargs):
    return decomp.TensorNetwork(equation, sizes, stack_indices="l", out_indices="o", in_indices="i", **kwargs)


def _lora_tucker(stack=(3,), out_features=8, in_features=6):
    return decomp.Sum(
        decomp.LoRA(stack, out_features, in_features, rank=1), decomp.Tucker2(stack, out_features, in_features, rank=2)
    )


def _two_networks():
    """A Tucker-2 network and a per-slice rank-1 network: two TensorNetworks of different structure."""
    return decomp.Sum(
        _net("or,lrs,is->loi", {"o": 10, "r": 2, "l": 2, "s": 2, "i": 8}, factor_names=("A", "G", "B")),
        _net("lor,lri->loi", {"o": 10, "r": 1, "l": 2, "i": 8}, factor_names=("U", "V")),
    )


def test_names_are_namespaced_per_term_and_counts_add_up():
    f = _lora_tucker()
    lora, tucker = f.terms
    assert f.factor_names == ("t0_A", "t0_B", "t1_A", "t1_G", "t1_B")
    assert f.factor_shapes["t0_B"] == lora.factor_shapes["B"] and f.factor_shapes["t1_G"] == tucker.factor_shapes["G"]
    assert f.num_params == lora.num_params + tucker.num_params == 3 * (8 + 6) + (8 * 2 + 3 * 4 + 6 * 2)
    assert f.shape == (3, 8, 6) and f.stack == (3,) and f.num_frozen == 0 and f.frozen_names == ()
    assert f.zero_factors == ("t0_" + lora.zero_factor, "t1_" + tucker.zero_factor)
    assert all("." not in n for n in f.factor_names)


def test_identity_repr_and_nesting():
    f = _lora_tucker()
    assert f == _lora_tucker() and hash(f) == hash(_lora_tucker()) and f != _two_networks()
    assert repr(f).startswith("Sum(LoRA(") and "Tucker2(" in repr(f)
    lora, tucker = f.terms
    nested = decomp.Sum(decomp.Sum(lora, tucker), lora)
    assert nested.terms == (lora, tucker, lora) and nested.factor_names[-1] == "t2_B"


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("make", [_lora_tucker, _two_networks])
def test_to_dense_is_the_sum_and_apply_matches_it(make, backend):
    f = make()
    fac = f.random(seed=3, backend=backend, dtype="float64")
    parts = f.split(fac)
    expected = sum(np.asarray(t.to_dense(p)) for t, p in zip(f.terms, parts, strict=True))
    dense = f.to_dense(fac)
    assert type(dense) is type(fac["t0_A"])
    np.testing.assert_allclose(np.asarray(dense), expected, rtol=1e-12, atol=1e-12)
    x_np = np.random.default_rng(0).standard_normal((2, 3, 4, f.in_features))  # three leading dims
    x = x_np if backend == "numpy" else torch.from_numpy(x_np)
    for index in range(f.stack[0]):
        y = np.asarray(f.apply(fac, x, index=index))
        np.testing.assert_allclose(y, x_np @ expected[index].T, rtol=1e-10, atol=1e-12)
    every = np.asarray(f.apply(fac, x, index=None))
    assert every.shape == (*f.stack, 2, 3, 4, f.out_features)
    np.testing.assert_allclose(every[1], x_np @ expected[1].T, rtol=1e-10, atol=1e-12)


def test_apply_never_forms_the_dense_update(monkeypatch):
    f = _lora_tucker()
    fac = f.random(seed=0)

    def refuse(*args, **kwargs):
        raise AssertionError("to_dense called by apply")

    for term in f.terms:
        monkeypatch.setattr(term, "to_dense", refuse)
    monkeypatch.setattr(f, "to_dense", refuse)
    assert f.apply(fac, np.ones((2, 6)), index=0).shape == (2, 8)


def test_init_is_zero_through_every_term_with_gradients():
    f = _two_networks()
    fac = {n: a.requires_grad_() for n, a in f.init(seed=0, backend="torch", dtype=torch.float64).items()}
    assert not torch.any(f.to_dense(fac))
    for name in f.zero_factors:
        assert not torch.any(fac[name])
    x = torch.randn(5, f.in_features, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    weights = torch.randn(*f.stack, 5, f.out_features, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    (f.apply(fac, x, index=None) * weights).sum().backward()
    for name in f.zero_factors:
        assert torch.any(fac[name].grad != 0), name
    again = f.init(seed=0, backend="torch", dtype=torch.float64)
    assert all(torch.equal(again[n], fac[n].detach()) for n in fac)


def test_random_draws_every_term_from_its_own_seed():
    lora = decomp.LoRA((2,), 5, 4, rank=1)
    f = decomp.Sum(lora, lora)
    fac = f.random(seed=0)
    assert not np.array_equal(fac["t0_A"], fac["t1_A"])  # equal terms start apart
    assert all(np.array_equal(fac[n], f.random(seed=0)[n]) for n in fac)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize(("make", "target_seed"), [(_lora_tucker, 11), (_lora_tucker, 12), (_two_networks, 13)])
def test_fit_recovers_exactly_representable_sums(make, target_seed, backend):
    f = make()
    target = f.to_dense(f.random(seed=target_seed))
    dense = target if backend == "numpy" else torch.from_numpy(target)
    fac, err = f.fit(dense)
    assert err < 1e-8
    actual = np.linalg.norm(np.asarray(f.to_dense(fac)) - target) / np.linalg.norm(target)
    assert abs(err - actual) <= 1e-12 + 1e-8 * actual


def test_fit_reports_the_true_error_at_any_scale_and_of_a_zero_tensor():
    f = _two_networks()
    target = np.random.default_rng(0).standard_normal(f.shape) * 2.0**40  # not representable, far from 1
    fac, err = f.fit(target, n_iter_max=5)
    actual = np.linalg.norm(f.to_dense(fac) - target) / np.linalg.norm(target)
    assert 0 < err < 1 and abs(err - actual) < 1e-10
    fac, err = f.fit(np.zeros(f.shape))
    assert err == 0.0 and not np.any(f.to_dense(fac))


def test_fit_from_given_factors_never_raises_the_error():
    f = _lora_tucker()
    target = np.random.default_rng(1).standard_normal(f.shape)
    start = f.random(seed=4)
    before = f.relative_error(target, start)
    _, err = f.fit(target, init=start, n_iter_max=3)
    assert err < before


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_lora_factors_concatenate_the_terms(backend):
    f = _lora_tucker()
    fac = f.random(seed=2, backend=backend, dtype="float64")
    dense = f.to_dense(fac)
    assert f.slice_rank == 1 + 2
    for index in range(3):
        B, A = f.lora_factors(fac, index)
        assert tuple(B.shape) == (8, 3) and tuple(A.shape) == (3, 6) and type(B) is type(dense)
        np.testing.assert_allclose(np.asarray(B @ A), np.asarray(dense[index]), rtol=1e-10, atol=1e-12)
        B0, A0 = f.terms[0].lora_factors(f.split(fac)[0], index)
        np.testing.assert_array_equal(np.asarray(B[:, :1]), np.asarray(B0))
        np.testing.assert_array_equal(np.asarray(A[:1]), np.asarray(A0))


def test_lora_factors_wider_than_the_matrix_fall_back_to_its_svd():
    f = decomp.Sum(decomp.LoRA((), 4, 3, rank=2), decomp.LoRA((), 4, 3, rank=2))
    fac = f.random(seed=0)
    B, A = f.lora_factors(fac)
    assert f.slice_rank == 3 and B.shape == (4, 3) and A.shape == (3, 3)
    np.testing.assert_allclose(B @ A, f.to_dense(fac), rtol=1e-10, atol=1e-12)


def test_regularizer_and_init_from_weights_go_through_the_terms():
    orth = decomp.OrthogonalProjection((2,), 6, 5, rank=2)
    f = decomp.Sum(decomp.LoRA((2,), 6, 5, rank=1), orth)
    fac = f.random(seed=0)
    terms = f.regularizer(fac)
    assert sorted(terms) == sorted(f"t1_{k}" for k in orth.regularizer(f.split(fac)[1]))
    assert _lora_tucker().regularizer(_lora_tucker().random(seed=0)) == {}
    g = _lora_tucker()
    weights = np.random.default_rng(5).standard_normal(g.shape)
    fitted = g.init_from_weights(weights)  # one start, `init_sweeps` sweeps: directions, not a full fit
    assert set(fitted) == set(g.factor_names)
    assert g.relative_error(weights, fitted) < min(1.0, g.relative_error(weights, g.random(seed=0)))


def test_check_format_passes():
    f = decomp.Sum(decomp.LoRA((2,), 6, 5, rank=1), decomp.Tucker2((2,), 6, 5, rank=1))
    assert testing.check_format(f) == testing.CHECKS


def test_the_budget_search_shares_one_scale():
    shape = {"stack": (4,), "out_features": 16, "in_features": 16}
    f = decomp.rank_for_budget(decomp.Sum, 600, terms=[decomp.LoRA, decomp.Tucker2], **shape)
    assert isinstance(f, decomp.Sum) and f.num_params <= 600
    assert f.terms[0].rank == 3 and f.terms[1].rank == (3, 3) and f.num_params == 4 * 3 * 32 + (2 * 16 * 3 + 4 * 9)
    bigger = decomp.Sum.from_scale(4, terms=[decomp.LoRA, decomp.Tucker2], **shape)
    assert bigger.num_params > 600
    assert decomp.Sum.max_scale(terms=[decomp.LoRA, decomp.Tucker2], **shape) == 16
    assert decomp.Sum.max_scale(terms=[decomp.LoRA, (decomp.CP, {"heads": 2})], **shape) is None
    capped = decomp.Sum.from_scale(9, terms=[decomp.LoRA, decomp.LoRA], stack=(), out_features=8, in_features=4)
    assert [t.rank for t in capped.terms] == [4, 4]  # each term at its own bound


def test_errors_name_the_argument():
    lora = decomp.LoRA((2,), 5, 4, rank=1)
    with pytest.raises(ValueError, match=r"`terms` must be at least 2"):
        decomp.Sum(lora)
    with pytest.raises(ValueError, match=r"`terms\[1\]` has shape \(3, 5, 4\)"):
        decomp.Sum(lora, decomp.LoRA((3,), 5, 4, rank=1))
    with pytest.raises(TypeError, match=r"`terms\[1\]` must be a format"):
        decomp.Sum(lora, np.zeros((2, 5, 4)))
    f = decomp.Sum(lora, decomp.Tucker2((2,), 5, 4, rank=2))
    fac = f.random(seed=0)
    with pytest.raises(ValueError, match=r"`factors` is missing factor\(s\) \['t1_G'\]"):
        f.to_dense({n: a for n, a in fac.items() if n != "t1_G"})
    with pytest.raises(ValueError, match=r"`factors` has unexpected factor\(s\) \['G'\]"):
        f.apply(fac | {"G": fac["t1_G"]}, np.ones(4))
    with pytest.raises(ValueError, match=r"`factors\['t0_B'\]` must have shape \(2, 5, 1\)"):
        f.to_dense(fac | {"t0_B": np.zeros((2, 5, 2))})
    with pytest.raises(ValueError, match=r"`dense` must have shape"):
        f.fit(np.ones((2, 5, 5)))
    with pytest.raises(ValueError, match=r"`frozen_values` names \['t0_A'\]"):
        f.random(frozen_values={"t0_A": fac["t0_A"]})
    with pytest.raises(TypeError, match=r"`terms\[0\]` must be a format class"):
        decomp.Sum.from_scale(2, terms=["LoRA", decomp.LoRA], stack=(), out_features=4, in_features=4)
    with pytest.raises(ValueError, match=r"`terms` must name at least 2"):
        decomp.Sum.from_scale(2, terms=[decomp.LoRA], stack=(), out_features=4, in_features=4)
