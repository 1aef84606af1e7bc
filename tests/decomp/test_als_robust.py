"""ALS that converges: restarts chosen by the error, the CP sweep, and truthful errors (issue 13)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings

from tensorpeft import decomp, testing
from tensorpeft.decomp import _als

torch = pytest.importorskip("torch")


def block_term(d: int, slices: int = 6, blocks: int = 2, rank: int = 4):
    """``ΔW_s = Σ_k A_k G_sk B_kᵀ``: Tucker-2 blocks summed over the block letter ``k``."""
    sizes = {"o": d, "i": d, "k": blocks, "r": rank, "q": rank, "s": slices}
    return decomp.TensorNetwork(
        "okr,skrq,ikq->soi",
        sizes,
        stack_indices="s",
        out_indices="o",
        in_indices="i",
        factor_names=("A", "G", "B"),
        zero_factor="G",
    )


def true_error(dense, approx) -> float:
    dense, approx = np.asarray(dense, dtype=np.float64), np.asarray(approx, dtype=np.float64)
    return float(np.linalg.norm(dense - approx) / np.linalg.norm(dense))


def test_one_start_stalls_on_the_block_term_network():
    """The failure being fixed: plain ALS from these random starts ends at a local minimum."""
    f = block_term(24)
    target = f.to_dense(f.random(seed=100))
    ops = f.check_dense(target)
    errors = [_als.fit_als(f, target, f.random(seed=s), n_iter_max=200, tol=1e-12, ops=ops)[1] for s in range(6)]
    assert max(errors) > 0.1, errors


@pytest.mark.parametrize("seed", range(6))
def test_block_term_is_recovered_from_every_seed(seed):
    f = block_term(24)
    target = f.to_dense(f.random(seed=100))
    factors, rel_err = f.fit(target, seed=seed)
    assert rel_err < 1e-8
    assert rel_err == pytest.approx(true_error(target, f.to_dense(factors)), rel=1e-6, abs=1e-15)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
def test_block_term_384_from_the_issue(seed):
    f = block_term(384)
    target = f.to_dense(f.random(seed=100))
    assert f.fit(target, seed=seed)[1] < 1e-8


def test_restarts_return_the_best_error_on_a_noisy_tensor():
    """Not exactly representable: the reported error is the true one and no worse than one start's."""
    f = block_term(16)
    target = f.to_dense(f.random(seed=100))
    noise = np.random.default_rng(5).standard_normal(target.shape)
    target = target / np.linalg.norm(target) + 0.1 * noise / np.linalg.norm(noise)
    ops = f.check_dense(target)
    factors, rel_err = f.fit(target, seed=0)
    single = _als.fit_als(f, target, f.random(seed=0), n_iter_max=200, tol=1e-12, ops=ops)[1]
    assert rel_err <= single * (1 + 1e-9)
    assert rel_err == pytest.approx(true_error(target, f.to_dense(factors)), rel=1e-9)
    assert 0.05 < rel_err < 0.1


def test_no_restart_from_a_given_init():
    f = block_term(8)
    target = f.to_dense(f.random(seed=100))
    init = f.random(seed=3)
    _, err_a = f.fit(target, init=init, n_iter_max=5)
    _, err_b = f.fit(target, init=init, n_iter_max=5)
    assert err_a == err_b
    ops = f.check_dense(target)
    ref = _als.fit_als(f, target, _als.start_from(init, target, ops), n_iter_max=5, tol=1e-12, ops=ops)[1]
    assert err_a == pytest.approx(ref, rel=1e-6)


def test_gram_error_equals_the_dense_error():
    """The error a sweep reports from the normal equations is the dense residual's."""
    f = block_term(10)
    rng = np.random.default_rng(0)
    target = rng.standard_normal(f.shape)
    ops = f.check_dense(target)
    factors = f.random(seed=1)
    factors["A"] = _als._update(f, factors, "A", target, ops)
    new, inner, norm2 = _als._update(f, factors, "B", target, ops, with_fit=True)
    factors["B"] = new
    ref = np.linalg.norm(target)
    gram_err = np.sqrt(ref**2 - 2 * inner + norm2) / ref
    assert gram_err == pytest.approx(_als._plain_error(f, target, factors, ref, ops), rel=1e-10)


# ------------------------------------------------------------------------------------------------- CP


def _modes(f):
    return [f.sizes[c] for c in f._output if f.sizes[c] > 1]


@settings(max_examples=15, deadline=None)
@given(testing.cp_formats(max_rank=4))
def test_cp_recovers_an_exact_tensor_when_the_rank_is_below_every_mode(f):
    """The claim of docs/guide/cp.rst: R smaller than every mode of size > 1 -> round-off."""
    assume(not _modes(f) or f.rank < min(_modes(f)))
    target = f.to_dense(f.random(seed=3))
    factors, rel_err = f.fit(target)
    assert rel_err < 1e-8
    assert rel_err == pytest.approx(true_error(target, f.to_dense(factors)), rel=1e-6, abs=1e-15)


def test_cp_rank_at_a_mode_size_is_the_documented_bound():
    """``CP(stack=(1, 2), 2, 3, rank=3)``: R above two modes; ALS swamps, within the bound the docs state."""
    f = decomp.CP(stack=(1, 2), out_features=2, in_features=3, rank=3)
    errors = [f.fit(f.to_dense(f.random(seed=s)))[1] for s in range(5)]
    assert max(errors) < 1e-3
    assert min(errors) < 1e-8


@pytest.mark.parametrize("heads", [None, 2])
def test_cp_sweep_matches_the_generic_als(heads):
    """The CP sweep (two passes, Gram error) makes the generic ALS's updates: same factors, same error."""
    f = decomp.CP(stack=(3, 2), out_features=8, in_features=10, rank=3, heads=heads)
    rng = np.random.default_rng(0)
    target = f.to_dense(f.random(seed=4)) + 0.05 * rng.standard_normal(f.shape)
    ops = f.check_dense(target)
    start = f.random(seed=7)
    ours, err_ours = f._als(target, dict(start), 30, 0.0, ops)
    theirs, err_theirs = _als.fit_als(f, target, dict(start), n_iter_max=30, tol=0.0, ops=ops)
    assert err_ours == pytest.approx(err_theirs, rel=1e-9)
    np.testing.assert_allclose(f.to_dense(ours), f.to_dense(theirs), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cp_rel_err_is_the_true_error_in_torch(dtype):
    f = decomp.CP(stack=(4,), out_features=12, in_features=9, rank=3)
    gen = torch.Generator().manual_seed(0)
    target = (
        f.to_dense(f.random(seed=1, backend="torch", dtype=torch.float64))
        + 0.1 * torch.randn(f.shape, generator=gen, dtype=torch.float64)
    ).to(dtype)
    factors, rel_err = f.fit(target)
    assert factors["in"].dtype == dtype
    true = true_error(target.double().numpy(), f.to_dense({k: v.double() for k, v in factors.items()}).numpy())
    assert rel_err == pytest.approx(true, rel=1e-5 if dtype == torch.float32 else 1e-10)
    assert 0 < rel_err < 1


def test_cp_fit_with_no_sweep_is_the_svd_start():
    """``n_iter_max=0`` returns the SVD start of every mode (none skipped)."""
    f = decomp.CP(stack=(3,), out_features=6, in_features=5, rank=2)
    target = f.to_dense(f.random(seed=0))
    ops = f.check_dense(target)
    factors, _ = f.fit(target, n_iter_max=0)
    start = f._svd_init(target, ops, 0)
    for name in f.factor_names:
        np.testing.assert_allclose(np.abs(factors[name]), np.abs(start[name]), rtol=1e-12, atol=1e-14)
