"""Frozen factors in a model: buffers, not parameters; trained, merged, saved, loaded, exported exactly (issue 13)."""

from __future__ import annotations

import json

import peft
import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

import tensorpeft as tp
from tensorpeft.gallery import vera
from tensorpeft.nn import _serialization

WEIGHTS, CONFIG = "adapter_model.safetensors", "adapter_config.json"
TRUST = [vera]


def tiny(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8))


def config(**kwargs):
    return tp.CustomConfig(factory=vera, rank=4, target_modules=["0", "2"], stack_by="shape", **kwargs)


@pytest.fixture
def model():
    return tp.get_peft_model(tiny(), config())


def trained(model, steps=2):
    """A few SGD steps on a fixed batch, so both scales move off their init."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        opt.zero_grad()
        model(x).pow(2).sum().backward()
        opt.step()
    return model


def fingerprint(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_frozen_factors_are_buffers_and_not_counted(model):
    (stack,) = model.tensor_adapters.values()
    assert [n for n, _ in stack.named_parameters()] == ["lambda_b", "lambda_d"]
    assert sorted(n for n, _ in stack.named_buffers()) == ["A", "B"]
    assert not stack.A.requires_grad and not stack.B.requires_grad
    assert set(stack.factors()) == {"lambda_b", "B", "lambda_d", "A"}
    fmt = stack.format
    trainable, total = model.get_nb_trainable_parameters()
    assert trainable == fmt.num_params == 2 * (8 + 4)
    assert total == trainable + sum(p.numel() for p in tiny().parameters())  # buffers are not parameters
    assert "frozen=64" in repr(stack)
    assert any(k.endswith("shape_8x8.A") for k in model.state_dict())  # but in the state dict


def test_the_optimizer_sees_only_trainable_factors_and_a_step_changes_only_them(model):
    (stack,) = model.tensor_adapters.values()
    params = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in params} == {id(stack.lambda_b), id(stack.lambda_d)}
    before = fingerprint(model)
    trained(model, steps=1)
    after = model.state_dict()
    changed = sorted(k.rsplit(".", 1)[1] for k in before if not torch.equal(before[k], after[k]))
    assert changed == ["lambda_b"]  # λ_d gets its gradient through λ_b, zero at the first step
    trained(model, steps=1)
    assert not torch.equal(
        before[next(k for k in before if k.endswith("lambda_d"))],
        model.state_dict()[next(k for k in before if k.endswith("lambda_d"))],
    )
    for name in ("A", "B"):
        key = next(k for k in before if k.endswith(f"shape_8x8.{name}"))
        assert torch.equal(before[key], model.state_dict()[key])


def test_the_adapter_starts_at_the_base_and_merge_equals_the_adapter_output(model):
    x = torch.randn(5, 8)
    assert torch.equal(model(x), tiny()(x))
    trained(model)
    y = model(x)
    merged = model.merge_and_unload()
    torch.testing.assert_close(merged(x), y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("how", ["save_adapter", "save_pretrained"])
def test_save_then_load_is_exact_and_keeps_the_constants_buffers(model, tmp_path, how):
    trained(model)
    x = torch.randn(5, 8)
    y = model(x)
    if how == "save_adapter":
        tp.nn.save_adapter(model, tmp_path)
    else:
        model.save_pretrained(tmp_path)
    saved = st_load((tmp_path / WEIGHTS).read_bytes())
    assert sorted(saved) == ["shape_8x8.A", "shape_8x8.B", "shape_8x8.lambda_b", "shape_8x8.lambda_d"]
    loaded = tp.nn.load_adapter(tiny(), tmp_path, is_trainable=True, trust_custom_factories=TRUST)
    assert torch.equal(loaded(x), y)
    (stack,) = loaded.tensor_adapters.values()
    assert sorted(n for n, _ in stack.named_buffers()) == ["A", "B"]
    assert loaded.get_nb_trainable_parameters()[0] == 24
    through_peft = peft.PeftModel.from_pretrained(
        tiny(), tmp_path, config=tp.AdapterConfig.from_pretrained(tmp_path, trust_custom_factories=TRUST)
    )
    assert torch.equal(through_peft(x), y)


def test_export_lora_reproduces_the_adapter_in_peft(model, tmp_path):
    trained(model)
    x = torch.randn(5, 8)
    y = model(x)
    report = model.export_lora(tmp_path)
    assert report.rank == 4 and report.max_error < 1e-6
    lora = peft.PeftModel.from_pretrained(tiny(), tmp_path)
    torch.testing.assert_close(lora(x), y, rtol=1e-5, atol=1e-6)


def tamper(path, edit):
    """Rewrite the weights with ``edit(tensors)`` and record their checksum, as a careful attacker would."""
    tensors = dict(st_load((path / WEIGHTS).read_bytes()))
    edit(tensors)
    (path / WEIGHTS).write_bytes(st_save(tensors, metadata={"format": "pt"}))
    meta = json.loads((path / CONFIG).read_text())
    meta["tensorpeft"]["sha256"] = _serialization._digest(tensors)
    (path / CONFIG).write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda t: t.update({"shape_8x8.A": torch.zeros(5, 8)}), ["'shape_8x8.A'", "shape (5, 8); expected (4, 8)"]),
        (lambda t: t.update({"shape_8x8.B": t["shape_8x8.B"].double()}), ["mix dtypes"]),
        (lambda t: t.update({"shape_8x8.A": t["shape_8x8.A"].to(torch.int32)}), ["'shape_8x8.A'", "int32"]),
        (lambda t: t["shape_8x8.B"].__setitem__((0, 0), float("nan")), ["'shape_8x8.B'", "non-finite"]),
        (lambda t: t.pop("shape_8x8.A"), ["missing tensors ['shape_8x8.A']"]),
    ],
)
@pytest.mark.parametrize("route", ["load_adapter", "peft"])
def test_a_tampered_constant_is_refused_before_the_model_changes(model, tmp_path, edit, words, route):
    tp.nn.save_adapter(model, tmp_path)
    tamper(tmp_path, edit)
    base = tiny()
    before = fingerprint(base)
    with pytest.raises(ValueError) as info:
        if route == "load_adapter":
            tp.nn.load_adapter(base, tmp_path, trust_custom_factories=TRUST)
        else:
            cfg = tp.AdapterConfig.from_pretrained(tmp_path, trust_custom_factories=TRUST)
            peft.PeftModel.from_pretrained(base, tmp_path, config=cfg)
    for word in words:
        assert word in str(info.value)
    assert all(isinstance(m, torch.nn.Linear | torch.nn.ReLU) for m in base)
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())


def test_svd_init_keeps_the_seeded_constants_and_starts_at_the_base():
    zero = tp.get_peft_model(tiny(), config())
    svd = tp.get_peft_model(tiny(), config(init="svd"))
    (a,), (b,) = zero.tensor_adapters.values(), svd.tensor_adapters.values()
    assert torch.equal(a.A, b.A) and torch.equal(a.B, b.B)
    assert not torch.any(b.lambda_b) and torch.any(b.lambda_d)
    x = torch.randn(3, 8)
    assert torch.equal(svd(x), tiny()(x))


def test_given_constants_reach_the_stack_through_factors():
    base = tiny()
    cfg = config()
    ((plan, fmt),) = tp.nn.plan_stacks(base, cfg)
    basis = torch.linalg.qr(torch.randn(8, 4, generator=torch.Generator().manual_seed(0)))[0]
    factors = {plan.name: fmt.init(seed=0, backend="torch", frozen_values={"B": basis})}
    model = tp.nn.TensorPeftModel(base, cfg, factors=factors)
    (stack,) = model.tensor_adapters.values()
    assert torch.equal(stack.B, basis) and isinstance(stack.B, torch.Tensor) and not stack.B.requires_grad
    assert "B" in dict(stack.named_buffers())
