"""The LoRA + KronA gallery entry: a low-rank term plus a Kronecker product, as one ``decomp.Sum``."""

import numpy as np
import pytest

from tensorpeft import decomp, testing
from tensorpeft.gallery._lora_krona import balanced_divisor, lora_krona


def test_check_format_passes():
    f = lora_krona((2,), 6, 4, rank=1)
    assert isinstance(f, decomp.Sum) and testing.check_format(f) == testing.CHECKS


@pytest.mark.parametrize(("n", "a"), [(384, 16), (768, 24), (16, 4), (6, 2), (7, 1), (12, 3)])
def test_balanced_divisor(n, a):
    assert balanced_divisor(n) == a and n % a == 0


@pytest.mark.parametrize(("stack", "out", "inp", "r"), [((6,), 384, 384, 4), ((12, 2), 768, 3072, 8), ((), 10, 7, 2)])
def test_num_params_is_the_formula(stack, out, inp, r):
    f = lora_krona(stack, out, inp, r)
    a, c = balanced_divisor(out), balanced_divisor(inp)
    layers = int(np.prod(stack))
    assert f.num_params == layers * (r * (out + inp) + a * c + (out // a) * (inp // c))
    assert f.factor_shapes["t1_K"] == (*stack, a, c) and f.factor_shapes["t1_M"] == (*stack, out // a, inp // c)


def test_every_slice_is_low_rank_plus_kronecker():
    f = lora_krona((2,), 6, 8, rank=1)
    fac = f.random(seed=1)
    dense = f.to_dense(fac)
    for layer in range(2):
        expected = fac["t0_B"][layer] @ fac["t0_A"][layer] + np.kron(fac["t1_K"][layer], fac["t1_M"][layer])
        np.testing.assert_allclose(dense[layer], expected, rtol=1e-12, atol=1e-13)


def test_custom_config_end_to_end(gallery_helpers, tmp_path):
    fmt = gallery_helpers.end_to_end(lora_krona, 2, tmp_path)
    assert fmt.terms[1].slice_rank == 16  # 4 x 4 blocks of 4 x 4: a Kronecker product is full rank here
