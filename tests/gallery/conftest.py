"""Fixtures of the gallery tests: a tiny torch model, and one end-to-end check of a factory through CustomConfig."""

from __future__ import annotations

import pytest
import torch

import tensorpeft as tp

WIDTH, LAYERS = 16, 3  # three 16 x 16 layers named "0", "2", "4": one stack (3,) under stack_by="name"


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread(single_threaded_linear_algebra):
    yield


def tiny(seed=0):
    torch.manual_seed(seed)
    layers = []
    for k in range(LAYERS):
        layers += [torch.nn.Linear(WIDTH, WIDTH)] + ([torch.nn.ReLU()] if k < LAYERS - 1 else [])
    return torch.nn.Sequential(*layers)


TARGETS = [str(2 * k) for k in range(LAYERS)]


def _factors(model):
    return dict(model.tensor_adapters.named_parameters())


def end_to_end(factory, rank, tmp_path, seed=0):
    """Inject ``factory`` into ``tiny()``, train, merge, save and load (no trust flag); return the format.

    Asserts: the config names the factory by its gallery name; ΔW = 0 at the start; the trainable count is
    the format's ``num_params``; the zero factor has a gradient at the first step and every factor after one
    SGD step, which lowers the loss; merged weights give the adapter's output; the saved adapter loads with
    no ``trust_custom_factories`` and gives the same output; the plain LoRA export (at the format's
    ``slice_rank``) loads in PEFT and gives the same output.
    """
    cfg = tp.CustomConfig(factory=factory, rank=rank, target_modules=TARGETS, alpha=1.0)
    assert cfg.factory == f"tensorpeft.gallery:{factory.__name__}"
    fmt = cfg.build_format((LAYERS,), WIDTH, WIDTH)
    x = torch.randn(5, WIDTH, generator=torch.Generator().manual_seed(seed))
    target = torch.randn(5, WIDTH, generator=torch.Generator().manual_seed(seed + 1))
    base = tiny()
    with torch.no_grad():
        ref = base(x)
    model = tp.get_peft_model(base, cfg)
    assert model.get_nb_trainable_parameters()[0] == fmt.num_params
    with torch.no_grad():
        assert torch.equal(model(x), ref)  # ΔW = 0 exactly at the start

    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for step in range(2):
        opt.zero_grad()
        loss = ((model(x) - target) ** 2).mean()
        loss.backward()
        losses.append(loss.item())
        grads = {name: p.grad for name, p in _factors(model).items()}
        if step == 0:  # (a decomp.Sum has one zero factor per term)
            zeros = getattr(fmt, "zero_factors", None) or (fmt.zero_factor,)
            for z in zeros:
                zero = next(g for name, g in grads.items() if name.endswith(f".{z}"))
                assert zero.abs().max() > 0, f"the zero factor {z} gets no gradient at the first step"
        else:
            dead = [name for name, g in grads.items() if g is None or not g.abs().max() > 0]
            assert not dead, f"no gradient on {dead} after one step"
        opt.step()
    assert losses[1] < losses[0]

    with torch.no_grad():
        adapted = model(x)
    assert not torch.allclose(adapted, ref)
    model.save_pretrained(tmp_path / "adapter")
    loaded = tp.TensorPeftModel.from_pretrained(tiny(), tmp_path / "adapter")  # no trust_custom_factories
    assert loaded.peft_config["default"].factory == cfg.factory
    with torch.no_grad():
        assert torch.equal(loaded(x), adapted)
        merged = model.merge_and_unload()
        out = merged(x)
    assert float((out - adapted).norm() / adapted.norm()) < 1e-5

    peft = pytest.importorskip("peft")
    loaded.export_lora(tmp_path / "lora")
    lora = peft.PeftModel.from_pretrained(tiny(), tmp_path / "lora")
    assert all(p.shape[0] <= fmt.slice_rank for n, p in lora.named_parameters() if "lora_A" in n)
    with torch.no_grad():
        exported = lora(x)
    assert float((exported - adapted).norm() / adapted.norm()) < 1e-5
    return fmt


@pytest.fixture
def gallery_helpers():
    """Plain functions shared by the gallery tests (importlib import mode: no cross-test imports)."""

    class H:
        pass

    h = H()
    h.tiny, h.end_to_end, h.TARGETS, h.WIDTH, h.LAYERS = tiny, end_to_end, TARGETS, WIDTH, LAYERS
    return h
