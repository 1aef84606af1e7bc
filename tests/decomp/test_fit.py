"""fit: exact recovery of representable tensors, and no worse than tensorly at the same rank."""

import numpy as np
import pytest
import tensorly as tl
from hypothesis import given
from hypothesis import strategies as st
from tensorly.decomposition import parafac, partial_tucker, tensor_train

from tensorpeft import decomp, testing

EXACT = 1e-10  # float64 round-off: SVD-based fits (LoRA, Tucker-2, TT-SVD, LoRA²)
ITERATIVE = 1e-4  # CP-ALS (and ALS of CP-like custom networks): iterative, may crawl through swamps
TENSORLY_SLACK = 1e-9  # relative slack when comparing our error with tensorly's

# tensorly warns when it caps an SVD at a mode smaller than the rank; the caps are intended here.
pytestmark = pytest.mark.filterwarnings("ignore:Trying to compute SVD with n_eigenvecs:UserWarning")


def rel_err(dense, approx):
    return float(np.linalg.norm(dense - approx) / np.linalg.norm(dense))


def noisy(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape)


# ---------------------------------------------------------------------------------------- exact recovery


@given(
    st.one_of(
        testing.lora_formats(),
        testing.tucker2_formats(),
        testing.tensor_train_formats(),
        testing.orthogonal_formats(),
    ),
    st.integers(0, 2**16),
)
def test_fit_recovers_exactly_low_rank(f, seed):
    dense = f.to_dense(f.random(seed=seed))
    fac, err = f.fit(dense)
    f.check_factors(fac)
    assert err < EXACT
    assert rel_err(dense, f.to_dense(fac)) < EXACT
    assert err == pytest.approx(rel_err(dense, f.to_dense(fac)), abs=1e-14)


@pytest.mark.parametrize(
    "f",
    [
        decomp.CP((3,), 5, 4, rank=2),
        decomp.CP((2, 3), 6, 4, rank=3, heads=2),
        decomp.CP((2, 3), 4, 4, rank=2),
        decomp.CP((3,), 6, 6, rank=4, heads=3),
        decomp.CP((), 6, 5, rank=2),
        decomp.CP((2,), 2, 2, rank=5),  # rank above every mode: random columns pad the SVD start
    ],
    ids=repr,
)
@pytest.mark.parametrize("seed", [0, 1])
def test_cp_fit_recovers_exactly_low_rank(f, seed):
    dense = f.to_dense(f.random(seed=seed))
    fac, err = f.fit(dense)
    assert err < ITERATIVE
    assert rel_err(dense, f.to_dense(fac)) == pytest.approx(err, abs=1e-12)


@pytest.mark.parametrize(
    "f",
    [
        decomp.Tucker2((), 6, 3, rank=(5, 2)),  # r_out above the columns of the stacked unfolding
        decomp.Tucker2((1,), 6, 6, rank=(4, 1)),
        decomp.Tucker2((2,), 3, 8, rank=(1, 3)),
        decomp.TensorTrain((), 4, 32, rank=(1, 4, 4, 1), in_modes=(2, 2, 8), out_modes=(2, 2)),  # above r_{k-1}·n_k
        decomp.TensorTrain((2,), 4, 6, rank=(2, 3, 2), share_stack=False, in_modes=(3, 2), out_modes=(2, 2)),
        decomp.OrthogonalProjection((2,), 5, 4, rank=1, inner=3),
        decomp.LoRA((2, 2), 3, 5, rank=3),
    ],
    ids=repr,
)
def test_fit_edge_ranks(f):
    dense = f.to_dense(f.random(seed=7))
    fac, err = f.fit(dense)
    f.check_factors(fac)
    assert err < EXACT


@pytest.mark.parametrize("share_stack", [True, False])
def test_tt_als_sweeps_after_tt_svd(share_stack):
    # n_iter_max > 0 runs generic ALS, whose end cores carry size-1 bonds no other core has.
    f = decomp.TensorTrain((2,), 4, 4, rank=2, share_stack=share_stack, in_modes=(2, 2), out_modes=(2, 2))
    dense = noisy(f.shape, 0)
    _, svd_err = f.fit(dense)
    fac, err = f.fit(dense, n_iter_max=20)
    f.check_factors(fac)
    assert err <= svd_err * (1 + TENSORLY_SLACK)
    exact = f.to_dense(f.random(seed=1))
    assert f.fit(exact, n_iter_max=5)[1] < EXACT


@pytest.mark.parametrize(
    "f", [decomp.LoRA((2,), 4, 3, rank=2), decomp.OrthogonalProjection((2,), 4, 3, rank=2)], ids=repr
)
def test_svd_fits_are_eckart_young_optimal(f):
    dense = noisy(f.shape, 3)
    _, err = f.fit(dense)
    s = np.linalg.svd(dense, compute_uv=False)
    optimal = np.sqrt(np.sum(s[:, 2:] ** 2)) / np.linalg.norm(dense)
    assert err == pytest.approx(optimal, rel=1e-10)


@pytest.mark.parametrize(
    "f",
    [
        decomp.LoRA((2,), 4, 3, rank=2),
        decomp.Tucker2((2,), 4, 3, rank=2),
        decomp.CP((2,), 4, 3, rank=2, heads=2),
        decomp.TensorTrain((2,), 4, 3, rank=2),
        decomp.OrthogonalProjection((2,), 4, 3, rank=2),
    ],
    ids=repr,
)
def test_fit_of_zero_is_exactly_zero(f):
    fac, err = f.fit(np.zeros(f.shape))
    assert err == 0.0
    assert not np.any(f.to_dense(fac))


# ---------------------------------------------------------------------------------------- custom networks (ALS)


def test_als_recovers_custom_networks(custom_network):
    f = decomp.TensorNetwork(**custom_network.kwargs)
    tol = ITERATIVE if custom_network.cp_like else 1e-8
    for seed in range(3):
        dense = f.to_dense(f.random(seed=100 + seed))
        fac, err = f.fit(dense, seed=seed, n_iter_max=1000)
        f.check_factors(fac)
        assert err < tol, seed
        assert rel_err(dense, f.to_dense(fac)) == pytest.approx(err, abs=1e-12)


def test_als_on_torch_keeps_backend(custom_network):
    torch = pytest.importorskip("torch")
    f = decomp.TensorNetwork(**custom_network.kwargs)
    dense = f.to_dense(f.random(seed=100, backend="torch", dtype=torch.float64))
    # CP-like networks converge slowly (covered in numpy above): here only the backend is at stake.
    fac, err = f.fit(dense, n_iter_max=50 if custom_network.cp_like else 1000)
    assert all(isinstance(a, torch.Tensor) and a.dtype == torch.float64 for a in fac.values())
    assert err < (1.0 if custom_network.cp_like else 1e-8)


def test_als_single_factor_network_is_the_target():
    # (an index summed inside one factor must have size 1: a larger one only adds redundant parameters)
    f = decomp.TensorNetwork("oir->oi", {"o": 3, "i": 4, "r": 1}, out_indices="o", in_indices="i")
    dense = noisy(f.shape, 1)
    _, err = f.fit(dense)
    assert err < EXACT


@given(testing.tensor_networks(), st.integers(0, 2**16))
def test_als_on_random_networks_never_worse_than_zero(f, seed):
    dense = noisy(f.shape, seed)
    fac, err = f.fit(dense, n_iter_max=5)
    f.check_factors(fac)
    assert err <= 1 + 1e-12
    assert rel_err(dense, f.to_dense(fac)) == pytest.approx(err, abs=1e-12)


def test_cp_fit_agrees_with_generic_als():
    # CP overrides only the start; from the same start, its sweeps are the generic ones.
    f = decomp.CP((3,), 4, 5, rank=2)
    dense = noisy(f.shape, 4)
    init = f.random(seed=2)
    ours, err = f.fit(dense, init=init, n_iter_max=10)
    generic, generic_err = decomp.TensorNetwork.fit(f, dense, init=init, n_iter_max=10)
    assert err == pytest.approx(generic_err, rel=1e-12)
    testing.assert_close(f.to_dense(ours), f.to_dense(generic), what="CP fit and generic ALS")


# ---------------------------------------------------------------------------------------- against tensorly


def tensorly_tucker2_error(dense, rank):
    (core, factors), _ = partial_tucker(dense, rank=list(rank), modes=[1, 2])
    return rel_err(dense, tl.tenalg.multi_mode_dot(core, factors, modes=[1, 2]))


def tensorly_cp_error(dense, rank):
    return rel_err(dense, tl.cp_to_tensor(parafac(dense, rank)))


def tensorly_tt_error(f, dense):
    """tensorly's TT-SVD on the same train: modes (stack, in_modes, out_modes), as the format orders them."""
    p, n_out, n_in = len(f.stack), len(f.out_modes), len(f.in_modes)
    train = dense.reshape((*f.stack, *f.out_modes, *f.in_modes))
    train = train.transpose([*range(p), *(p + n_out + k for k in range(n_in)), *(p + k for k in range(n_out))])
    return rel_err(train, tl.tt_to_tensor(tensor_train(train, rank=[1, *f.rank, 1])))


TUCKER2_CASES = [((4,), 6, 5, (2, 3)), ((1,), 5, 5, (2, 2)), ((8,), 4, 7, (4, 1)), ((3,), 9, 6, (5, 5))]
CP_CASES = [((4,), 6, 5, 2), ((3,), 5, 5, 3), ((6,), 4, 7, 4), ((2,), 8, 3, 1)]
TT_CASES = [((), 8, 12, 3, True), ((3,), 6, 4, 2, True), ((2,), 9, 8, 3, True), ((2,), 8, 6, 2, False)]


@pytest.mark.parametrize(("stack", "d_out", "d_in", "rank"), TUCKER2_CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tucker2_no_worse_than_partial_tucker(stack, d_out, d_in, rank, seed):
    f = decomp.Tucker2(stack, d_out, d_in, rank=rank)
    dense = noisy(f.shape, seed)
    _, err = f.fit(dense)
    assert err <= tensorly_tucker2_error(dense, rank) * (1 + TENSORLY_SLACK)


@pytest.mark.parametrize(("stack", "d_out", "d_in", "rank"), CP_CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cp_no_worse_than_parafac(stack, d_out, d_in, rank, seed):
    f = decomp.CP(stack, d_out, d_in, rank=rank)
    dense = noisy(f.shape, seed)
    _, err = f.fit(dense)
    assert err <= tensorly_cp_error(dense, rank) * (1 + TENSORLY_SLACK)


@pytest.mark.parametrize(("stack", "d_out", "d_in", "rank", "share"), TT_CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_tt_no_worse_than_tensor_train(stack, d_out, d_in, rank, share, seed):
    f = decomp.TensorTrain(stack, d_out, d_in, rank=rank, share_stack=share)
    dense = noisy(f.shape, seed)
    _, err = f.fit(dense)
    if share:
        reference = tensorly_tt_error(f, dense)
    else:  # one train per slice: the errors add in squares
        per_slice = decomp.TensorTrain((), d_out, d_in, rank=rank, in_modes=f.in_modes, out_modes=f.out_modes)
        slices = dense.reshape((-1, d_out, d_in))
        squares = [(tensorly_tt_error(per_slice, s) * np.linalg.norm(s)) ** 2 for s in slices]
        reference = np.sqrt(sum(squares)) / np.linalg.norm(dense)
    assert err <= reference * (1 + TENSORLY_SLACK)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_larger_fits_no_worse_than_tensorly(seed):
    """Realistic shapes: a 16-layer stack of 128x192 matrices, a Tucker-2 signal plus noise."""
    rng = np.random.default_rng(seed)
    stack, d_out, d_in = (16,), 128, 192
    source = decomp.Tucker2(stack, d_out, d_in, rank=16)
    signal = source.to_dense(source.random(seed))
    dense = signal / np.linalg.norm(signal) + 0.3 * rng.standard_normal(signal.shape) / np.sqrt(signal.size)

    tucker = decomp.Tucker2(stack, d_out, d_in, rank=(12, 10))
    assert tucker.fit(dense)[1] <= tensorly_tucker2_error(dense, (12, 10)) * (1 + TENSORLY_SLACK)

    cp = decomp.CP(stack, d_out, d_in, rank=10)
    assert cp.fit(dense)[1] <= tensorly_cp_error(dense, 10) * (1 + TENSORLY_SLACK)

    tt = decomp.TensorTrain(stack, d_out, d_in, rank=8, in_modes=(12, 16), out_modes=(8, 16))
    assert tt.fit(dense)[1] <= tensorly_tt_error(tt, dense) * (1 + TENSORLY_SLACK)
