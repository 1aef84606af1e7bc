"""The LoRA + KronA gallery entry: a low-rank term plus a Kronecker product, as one ``decomp.Sum``."""

import numpy as np
import pytest
import torch

import tensorpeft as tp
from tensorpeft import decomp, testing
from tensorpeft.gallery._lora_krona import balanced_divisor, lora_krona

WIDTH = 16


def _tiny():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(WIDTH, WIDTH), torch.nn.ReLU(), torch.nn.Linear(WIDTH, WIDTH))


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


def test_custom_config_train_step_merge_and_export(tmp_path):
    peft = pytest.importorskip("peft")
    config = tp.CustomConfig(factory=lora_krona, rank=2, target_modules=["0", "2"], alpha=1.0)
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
    model.export_lora(tmp_path / "lora")
    lora = peft.PeftModel.from_pretrained(_tiny(), tmp_path / "lora")
    with torch.no_grad():
        torch.testing.assert_close(lora(x), adapted, rtol=1e-5, atol=1e-5)
        merged = model.merge_and_unload()(x)
    torch.testing.assert_close(merged, adapted, rtol=1e-5, atol=1e-6)
