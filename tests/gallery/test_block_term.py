"""The block-term gallery entry: a Tucker-2 block plus a CP block, as one ``decomp.Sum``."""

import math

import numpy as np
import pytest

from tensorpeft import decomp, testing
from tensorpeft.gallery._block_term import block_term


def test_check_format_passes():
    f = block_term((2,), 6, 5, rank=1)
    assert isinstance(f, decomp.Sum) and testing.check_format(f) == testing.CHECKS


@pytest.mark.parametrize(("stack", "out", "inp", "r"), [((6,), 384, 384, 8), ((12, 2), 64, 48, 3), ((), 10, 7, 2)])
def test_num_params_is_the_formula(stack, out, inp, r):
    f = block_term(stack, out, inp, r)
    tucker = r * (out + inp) + math.prod(stack) * r * r
    cp = r * (sum(stack) + out + inp)
    assert f.num_params == tucker + cp
    assert f.slice_rank == min(2 * r, out, inp)


def test_the_blocks_are_a_tucker2_and_a_cp():
    f = block_term((3,), 8, 6, rank=2)
    fac = f.random(seed=0)
    dense = f.to_dense(fac)
    a, g, b = fac["t0_A"], fac["t0_G"], fac["t0_B"]
    c, u, v = fac["t1_stack0"], fac["t1_out"], fac["t1_in"]
    for layer in range(3):
        expected = a @ g[layer] @ b.T + (u * c[layer]) @ v.T
        np.testing.assert_allclose(dense[layer], expected, rtol=1e-12, atol=1e-13)


def test_custom_config_end_to_end(gallery_helpers, tmp_path):
    fmt = gallery_helpers.end_to_end(block_term, 2, tmp_path)
    assert fmt.slice_rank == 4  # two rank-2 blocks


def test_bad_rank_names_it():
    with pytest.raises((TypeError, ValueError), match="`rank"):
        block_term((2,), 6, 5, rank=0)
