"""The generic ``TensorNetwork.slice_rank``: the network's smallest cut, a true and tight bound on each slice's rank."""

import numpy as np
from hypothesis import given

from tensorpeft import decomp, testing


def test_kronecker_product_bound_is_the_product_of_the_smaller_sides():
    f = decomp.TensorNetwork("ab,cd->acbd", {"a": 2, "b": 3, "c": 4, "d": 5}, out_indices="ac", in_indices="bd")
    assert f.slice_rank == 8  # min(2, 3) * min(4, 5), below min(out, in) = min(8, 15) only by the cut through A
    fac = f.random(seed=0)
    assert np.linalg.matrix_rank(f.to_dense(fac)) == 8


def test_tensor_ring_bound_is_the_two_bonds_cut():
    # out (o) on G1, in (i) on G2, a ring of bonds r, s between them: rank <= r * s, well below 12
    f = decomp.TensorNetwork(
        "lros,lsir->loi", {"l": 2, "o": 12, "i": 12, "r": 2, "s": 3}, stack_indices="l", out_indices="o", in_indices="i"
    )
    assert f.slice_rank == 6
    fac = f.random(seed=1)
    B, A = f.lora_factors(fac, 1)
    assert B.shape == (12, 6) and A.shape == (6, 12)
    testing.assert_close(B @ A, f.to_dense(fac)[1], what="exported slice")


def test_no_bottleneck_keeps_min_of_features():
    f = decomp.TensorNetwork("oi->oi", {"o": 3, "i": 5}, out_indices="o", in_indices="i")
    assert f.slice_rank == 3


@given(testing.tensor_networks(max_size=4))
def test_bound_holds_and_the_export_is_exact(f):
    fac = f.random(seed=0)
    dense = f.to_dense(fac).reshape(-1, f.out_features, f.in_features)
    assert 1 <= f.slice_rank <= min(f.out_features, f.in_features)
    for k in range(dense.shape[0]):
        assert np.linalg.matrix_rank(dense[k], tol=1e-10 * max(1.0, np.abs(dense[k]).max())) <= f.slice_rank
    index = np.unravel_index(dense.shape[0] - 1, f.stack) if f.stack else ()
    B, A = f.lora_factors(fac, tuple(int(v) for v in index))
    assert B.shape == (f.out_features, f.slice_rank) and A.shape == (f.slice_rank, f.in_features)
    testing.assert_close(B @ A, dense[-1], what="exported slice")
