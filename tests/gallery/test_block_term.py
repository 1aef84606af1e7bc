"""The block-term gallery entry: a Tucker-2 block plus a CP block, as one ``decomp.Sum``."""

import math

import numpy as np
import pytest
import torch

import tensorpeft as tp
from tensorpeft import decomp, testing
from tensorpeft.gallery._block_term import block_term

WIDTH = 16


def _tiny():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(WIDTH, WIDTH), torch.nn.ReLU(), torch.nn.Linear(WIDTH, WIDTH))


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


def test_custom_config_train_step_and_merge():
    config = tp.CustomConfig(factory=block_term, rank=2, target_modules=["0", "2"], alpha=1.0)
    model = tp.get_peft_model(_tiny(), config)
    x, y = torch.randn(8, WIDTH), torch.randn(8, WIDTH)
    with torch.no_grad():
        assert torch.equal(model(x), _tiny()(x))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    losses = []
    for step in range(2):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        if step == 1:
            dead = [n for n, p in model.tensor_adapters.named_parameters() if p.grad is None or not torch.any(p.grad)]
            assert not dead
        opt.step()
        losses.append(loss.item())
    assert losses[1] < losses[0]
    with torch.no_grad():
        adapted = model(x)
        merged = model.merge_and_unload()(x)
    torch.testing.assert_close(merged, adapted, rtol=1e-5, atol=1e-6)


def test_bad_rank_names_it():
    with pytest.raises((TypeError, ValueError), match="`rank"):
        block_term((2,), 6, 5, rank=0)
