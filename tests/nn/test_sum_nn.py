"""A ``decomp.Sum`` through ``CustomConfig``: inject, train, merge, save/load, export to PEFT LoRA, compile."""

from __future__ import annotations

import copy

import pytest
import torch

import tensorpeft as tp
from tensorpeft import decomp
from tensorpeft.nn._kernels import SumKernel, kernel_for

peft = pytest.importorskip("peft")

TERMS = [decomp.LoRA, decomp.Tucker2]


def lora_plus_tucker(stack, out_features, in_features, rank):
    """LoRA + Tucker-2 at one shared scale ``rank`` (a module-level factory, as CustomConfig needs)."""
    return decomp.Sum.from_scale(rank, terms=TERMS, stack=stack, out_features=out_features, in_features=in_features)


def _base():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 12))


def _model(**kwargs):
    config = tp.CustomConfig(factory=lora_plus_tucker, rank=2, target_modules=["0", "2"], **kwargs)
    return tp.get_peft_model(_base(), config)


def _randomized(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.tensor_adapters.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)
    return model


def test_the_factory_builds_a_sum_whose_factors_are_parameters():
    model = _model()
    stacks = dict(model.tensor_adapters.items())
    assert stacks, "no stack injected"
    for stack in stacks.values():
        fmt = stack.format
        assert isinstance(fmt, decomp.Sum) and [type(t) for t in fmt.terms] == TERMS
        assert fmt.terms[0].rank == 2 and fmt.terms[1].rank == (2, 2)
        assert sorted(n for n, _ in stack.named_parameters()) == sorted(fmt.factor_names)
        assert isinstance(kernel_for(fmt), SumKernel)
    x = torch.randn(4, 12)
    assert torch.equal(model(x), _base()(x))  # ΔW == 0 at init


def test_a_train_step_moves_every_factor_and_lowers_the_loss():
    model = _model()
    x, y = torch.randn(32, 12, generator=torch.Generator().manual_seed(1)), torch.randn(32, 12)
    trainable = [p for p in model.parameters() if p.requires_grad]
    names = {id(p): n for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(trainable, lr=0.05)
    losses = []
    for step in range(3):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        if step == 0:
            for p in trainable:
                # at init only the zero factors and the factors next to them have a gradient; after a step, all
                assert p.grad is not None, names[id(p)]
        if step == 1:
            for p in trainable:
                assert torch.any(p.grad != 0), names[id(p)]
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def test_merge_save_load_and_export_are_exact(tmp_path):
    model = _randomized(_model())
    x = torch.randn(6, 12)
    with torch.no_grad():
        expected = model(x)
    path = tmp_path / "adapter"
    model.save_pretrained(path)
    loaded = tp.TensorPeftModel.from_pretrained(_base(), path, trust_custom_factories=[lora_plus_tucker])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)
    report = model.export_lora(tmp_path / "lora")
    assert set(report.ranks.values()) == {2 + 2}  # LoRA r plus Tucker-2 min(r_out, r_in), per slice
    assert report.max_error <= 1e-6
    lora = peft.PeftModel.from_pretrained(_base(), tmp_path / "lora")
    with torch.no_grad():
        torch.testing.assert_close(lora(x), expected, rtol=1e-5, atol=1e-5)
        merged = copy.deepcopy(model).merge_and_unload()
        torch.testing.assert_close(merged(x), expected, rtol=1e-5, atol=1e-5)


def test_init_svd_starts_at_zero_through_every_term():
    model = _model(init="svd")
    x = torch.randn(4, 12)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _base()(x), rtol=0, atol=0)
    for stack in model.tensor_adapters.values():
        for name in stack.format.zero_factors:
            assert not torch.any(getattr(stack, name))
        others = [n for n in stack.format.factor_names if n not in stack.format.zero_factors]
        assert all(torch.any(getattr(stack, n)) for n in others)


def test_the_sum_kernel_matches_the_format_apply_in_float64():
    fmt = lora_plus_tucker((3,), 16, 12, 2)
    f = fmt.random(seed=0, backend="torch", dtype=torch.float64)
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    kernel = kernel_for(fmt)
    for index in range(3):
        y = kernel.finish(fmt, f, kernel.project(fmt, f, x), (index,), 0.5)
        torch.testing.assert_close(y, 0.5 * fmt.apply(f, x, index), rtol=1e-12, atol=1e-12)


def test_compiled_forward_and_backward_match_eager():
    torch._dynamo.reset()
    model = _randomized(_model())
    x = torch.randn(5, 12)
    eager = model(x)
    eager.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=False)
    out = compiled(x)
    out.sum().backward()
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-6)
    for n, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, grads[n], rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()
