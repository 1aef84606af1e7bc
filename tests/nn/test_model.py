import copy
import re

import pytest
import torch

import tensorpeft as tp
from tensorpeft.nn import AdapterLinear

FACTORS = "base_model.tensorpeft_stacks.default."  # parameter names of the default adapter on the PeftModel


def wrap(make_model, helpers, kind, fmt, **kw):
    base = make_model(kind)
    with torch.no_grad():
        ref = helpers.output_of(base(torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(1))))
    return base, ref, tp.get_peft_model(base, helpers.FORMATS[fmt](helpers.TARGETS[kind], **kw))


def weights(model):
    return {n: layer.base_layer.weight.detach().clone() for n, layer in model.adapter_layers()}


def test_identity_at_init_trainable_set_and_one_step(make_model, helpers, ids, kind, fmt):
    _, ref, model = wrap(make_model, helpers, kind, fmt)
    out = helpers.output_of(model(ids))
    assert torch.equal(out, ref)

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(FACTORS) for n in trainable)
    assert len(trainable) == sum(len(s.format.factor_names) for s in model.tensor_adapters.values())
    n_adapter = sum(s.format.num_params for s in model.tensor_adapters.values())
    assert model.get_nb_trainable_parameters() == (n_adapter, sum(p.numel() for p in model.parameters()))

    w0 = weights(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    out = helpers.output_of(model(ids))
    # not a function of the norm only (BERT's output is layer-normed)
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(2))).sum().backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        after = helpers.output_of(model(ids))
    assert helpers.rel_err(after, ref) > 1e-6
    assert all(torch.equal(w0[n], w) for n, w in weights(model).items())  # the base is frozen


def test_merge_unmerge_and_merged_outputs(make_model, helpers, ids, kind, fmt):
    _, _, model = wrap(make_model, helpers, kind, fmt)
    helpers.randomize(model)
    w0 = weights(model)
    with torch.no_grad():
        adapted = helpers.output_of(model(ids))
        model.merge_adapter()
        model.merge_adapter()  # idempotent
        merged = helpers.output_of(model(ids))
        assert helpers.rel_err(merged, adapted) <= 1e-5
        assert any(not torch.equal(w0[n], w) for n, w in weights(model).items())
        model.unmerge_adapter()
        for n, w in weights(model).items():
            assert helpers.rel_err(w, w0[n]) <= 1e-6, n
        assert helpers.rel_err(helpers.output_of(model(ids)), adapted) <= 1e-6


def test_layer_state_follows_merge_and_disable():
    model = tp.get_peft_model(_mlp(), tp.Tucker2Config(rank=2, target_modules=["0", "2"]))
    (stack,) = model.tensor_adapters.values()  # one stack of the two 16×16 layers
    layer = model.get_base_model()[2]
    assert layer.slices == {"default": (stack, (1,))}
    assert layer.stack is stack and layer.index == (1,)
    assert set(layer.adapter_dropout) == {"default"}
    line = "adapters={'default': (1,)}, active=['default'], merged=[], disabled=False"
    assert line in repr(layer)
    model.merge_adapter()
    assert layer.merged and layer.merged_adapters == ["default"] and "merged=['default']" in repr(layer)
    model.unmerge_adapter()
    assert not layer.merged and layer.merged_adapters == []
    with model.disable_adapter():
        assert layer.disabled and layer.disable_adapters and "disabled=True" in repr(layer)
    assert not layer.disabled
    with pytest.raises(AttributeError):
        layer.disabled = True  # read-only: disable through the model


def test_merge_and_unload_returns_the_plain_base_class(make_model, helpers, ids, kind, fmt):
    base, _, model = wrap(make_model, helpers, kind, fmt)
    helpers.randomize(model)
    with torch.no_grad():
        adapted = helpers.output_of(model(ids))
    plain = model.merge_and_unload()
    assert plain is base and type(plain) is type(make_model(kind))
    assert not any(isinstance(m, AdapterLinear) for m in plain.modules())
    assert not any("base_layer" in k or "tensorpeft" in k for k in plain.state_dict())
    assert all(p.requires_grad for p in plain.parameters())  # flags restored
    with torch.no_grad():
        assert helpers.rel_err(helpers.output_of(plain(ids)), adapted) <= 1e-5
    with pytest.raises(RuntimeError, match="unloaded"):
        model(ids)


def test_unload_gives_back_the_pretrained_model(make_model, helpers, ids):
    _, ref, model = wrap(make_model, helpers, "bert", "tucker2")
    helpers.randomize(model)
    model.merge_adapter()
    plain = model.unload()
    with torch.no_grad():
        assert helpers.rel_err(helpers.output_of(plain(ids)), ref) <= 1e-6


def test_disable_adapter(make_model, helpers, ids, fmt):
    _, ref, model = wrap(make_model, helpers, "llama", fmt)
    helpers.randomize(model)
    with torch.no_grad():
        adapted = helpers.output_of(model(ids))
        with model.disable_adapter():
            assert torch.equal(helpers.output_of(model(ids)), ref)
        assert torch.equal(helpers.output_of(model(ids)), adapted)
        model.merge_adapter()
        with pytest.raises(RuntimeError, match="call unmerge_adapter"), model.disable_adapter():
            pass


def test_shared_factor_counted_once_and_printed(make_model, capsys):
    model = tp.get_peft_model(make_model("bert"), tp.Tucker2Config(rank=4, target_modules=["query", "value"]))
    # two stacks (query, value) of 2 layers: A 32x4 + B 32x4 shared, two 4x4 cores each
    assert model.get_nb_trainable_parameters()[0] == 2 * (32 * 4 + 32 * 4 + 2 * 16)
    model.print_trainable_parameters()
    line = capsys.readouterr().out.strip()
    assert re.fullmatch(r"trainable params: 576 \|\| all params: [\d,]+ \|\| trainable%: \d+\.\d{4}", line)
    layers = [layer for _, layer in model.adapter_layers()]
    assert layers[0].stack is layers[2].stack  # query of layers 0 and 1
    # registered once, by the tuner (not under every layer that reads them)
    assert not any("tensorpeft" in k for k in model.get_base_model().state_dict())
    factor_keys = [k for k in model.state_dict() if "tensorpeft_stacks" in k]
    assert sorted(factor_keys) == sorted(
        f"{FACTORS}{s}.{f}" for s, stack in model.tensor_adapters.items() for f in stack.format.factor_names
    )


def test_state_dict_round_trip_and_to(make_model, helpers, ids):
    _, _, model = wrap(make_model, helpers, "bert", "cp")
    helpers.randomize(model)
    sd = model.state_dict()
    factor_keys = [k for k in sd if k.startswith(FACTORS)]
    assert len(factor_keys) == sum(len(s.format.factor_names) for s in model.tensor_adapters.values())
    assert "base_model.model.encoder.layer.0.attention.self.query.base_layer.weight" in sd
    _, _, other = wrap(make_model, helpers, "bert", "cp", seed=7)
    other.load_state_dict(sd)
    with torch.no_grad():
        assert torch.equal(helpers.output_of(other(ids)), helpers.output_of(model(ids)))
        expected = helpers.output_of(model(ids))
        model.to(torch.float64)
        assert all(p.dtype == torch.float64 for p in model.parameters())
        assert helpers.rel_err(helpers.output_of(model(ids)), expected) <= 1e-5
        model.to("cpu")


def test_bf16_base_with_fp32_adapters(make_model, helpers, ids, kind):
    base32 = make_model(kind)
    base16 = copy.deepcopy(base32).to(torch.bfloat16)
    cfg = helpers.FORMATS["tucker2"](helpers.TARGETS[kind])
    m32, m16 = tp.get_peft_model(base32, cfg), tp.get_peft_model(base16, cfg)
    assert all(p.dtype == torch.float32 for p in m16.tensor_adapters.parameters())
    helpers.randomize(m32, std=0.1)
    m16.tensor_adapters.load_state_dict(m32.tensor_adapters.state_dict())
    out16 = helpers.output_of(m16(ids))
    assert out16.dtype == torch.bfloat16
    (out16.float() * torch.randn(out16.shape, generator=torch.Generator().manual_seed(2))).sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in m16.tensor_adapters.parameters())
    with torch.no_grad():
        assert helpers.rel_err(out16, helpers.output_of(m32(ids))) <= helpers.RTOL[torch.bfloat16]
        m16.merge_adapter()
        assert helpers.rel_err(helpers.output_of(m16(ids)), out16) <= helpers.RTOL[torch.bfloat16]


@pytest.mark.parametrize("name", ["lora", "tucker2", "cp", "tt_shared", "orthogonal"])
def test_init_svd_starts_at_zero_with_pretrained_directions(make_model, helpers, ids, name):
    _, ref, model = wrap(make_model, helpers, "bert", name, init="svd")
    assert torch.equal(helpers.output_of(model(ids)), ref)
    zero = tp.get_peft_model(make_model("bert"), helpers.FORMATS[name](helpers.TARGETS["bert"]))
    for stack_name, stack in model.tensor_adapters.items():
        fmt = stack.format
        for fname, p in stack.factors().items():
            if fname == fmt.zero_factor:
                assert not p.detach().any()
            else:  # same magnitude as the default init, different (fitted) values
                q = zero.tensor_adapters[stack_name].factors()[fname]
                assert torch.allclose(p.norm(), q.norm(), rtol=1e-5)
                assert not torch.allclose(p, q)


def test_tucker2_svd_init_spans_the_dominant_subspace(make_model):
    base = make_model("bert")
    W = torch.stack([base.encoder.layer[i].attention.self.query.weight.detach().double() for i in (0, 1)])
    model = tp.get_peft_model(base, tp.Tucker2Config(rank=4, target_modules=["query"], init="svd"))
    stack = model.tensor_adapters["encoder_layer_attention_self_query"]
    A, B = stack.A.detach().double(), stack.B.detach().double()
    pa, pb = A @ torch.linalg.pinv(A), B @ torch.linalg.pinv(B)
    captured = (pa @ W @ pb).norm() / W.norm()
    gen = torch.Generator().manual_seed(0)
    R1, R2 = (
        torch.randn(32, 4, generator=gen, dtype=torch.float64),
        torch.randn(32, 4, generator=gen, dtype=torch.float64),
    )
    random = (R1 @ torch.linalg.pinv(R1) @ W @ R2 @ torch.linalg.pinv(R2)).norm() / W.norm()
    assert captured > random + 0.05


def test_custom_format_end_to_end(make_model, helpers, ids, custom_factory, tmp_path):
    base = make_model("bert")
    with torch.no_grad():
        ref = helpers.output_of(base(ids))
    model = tp.get_peft_model(base, tp.CustomConfig(factory=custom_factory, rank=3, target_modules=["query", "value"]))
    assert torch.equal(helpers.output_of(model(ids)), ref)
    assert model.get_nb_trainable_parameters()[0] == 2 * (32 * 3 + 9 + 2 * 3 + 32 * 3)
    helpers.randomize(model)
    with torch.no_grad():
        adapted = helpers.output_of(model(ids))
        model.merge_adapter()
        assert helpers.rel_err(helpers.output_of(model(ids)), adapted) <= 1e-5
        model.unmerge_adapter()
    model.save_pretrained(tmp_path / "custom")
    loaded = tp.TensorPeftModel.from_pretrained(
        make_model("bert"), tmp_path / "custom", trust_custom_factories=[custom_factory]
    )
    with torch.no_grad():
        assert torch.equal(helpers.output_of(loaded(ids)), adapted)


def test_dropout_is_on_the_adapter_input_only(helpers):
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(16, 16))
    x = torch.randn(64, 16)
    with torch.no_grad():
        ref = base(x)
    model = tp.get_peft_model(base, tp.LoRAConfig(rank=4, dropout=0.5, target_modules=["0"]))
    helpers.randomize(model)
    model.train()
    with torch.no_grad():
        a, b = model(x), model(x)
        assert not torch.equal(a, b)
        with model.disable_adapter():
            assert torch.equal(model(x), ref)  # the base path never sees the dropout
        model.eval()
        assert torch.equal(model(x), model(x))


def test_orthogonality_loss(make_model, helpers):
    model = tp.get_peft_model(make_model("bert"), helpers.FORMATS["orthogonal"](["query"]))
    assert model.orthogonality_loss().item() < 1e-5  # orthonormal planes at init
    helpers.randomize(model)
    loss = model.orthogonality_loss()
    assert loss.item() > 0.1
    loss.backward()
    assert model.tensor_adapters["encoder_layer_0_attention_self_query"].U1.grad.abs().sum() > 0
    other = tp.get_peft_model(make_model("bert"), helpers.FORMATS["lora"](["query"]))
    assert other.orthogonality_loss().item() == 0.0


def test_orthogonality_loss_gradient_is_finite_at_svd_init(make_model, helpers):
    model = tp.get_peft_model(make_model("bert"), helpers.FORMATS["orthogonal"](["query"], init="svd"))
    model.orthogonality_loss().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.tensor_adapters.parameters() if p.grad is not None)


def test_attributes_fall_through_to_the_base_model(make_model):
    base = make_model("bert")
    model = tp.get_peft_model(base, tp.LoRAConfig(rank=2, target_modules=["query"]))
    assert model.config is base.config
    with pytest.raises(AttributeError):
        model.no_such_attribute  # noqa: B018


def test_training_never_materializes_delta_w(make_model, helpers, ids, fmt, monkeypatch):
    from tensorpeft import decomp
    from tensorpeft.nn import AdapterStack

    def forbidden(*args, **kwargs):
        raise AssertionError("ΔW was materialized")

    _, _, model = wrap(make_model, helpers, "bert", fmt)
    helpers.randomize(model)
    monkeypatch.setattr(decomp.TensorNetwork, "to_dense", forbidden)
    monkeypatch.setattr(AdapterStack, "delta_weight", forbidden)
    model.train()
    out = helpers.output_of(model(ids))
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(2))).sum().backward()
    assert all(p.grad is not None for p in model.tensor_adapters.parameters())


def test_deepcopy_keeps_one_stack_per_group(make_model, helpers, ids):
    _, _, model = wrap(make_model, helpers, "bert", "cp")
    helpers.randomize(model)
    twin = copy.deepcopy(model)
    stacks = {id(s) for s in twin.tensor_adapters.values()}
    assert all(id(layer.stack) in stacks for _, layer in twin.adapter_layers())
    with torch.no_grad():
        assert torch.equal(helpers.output_of(twin(ids)), helpers.output_of(model(ids)))


def _snapshot(model):
    """Everything a failed call must leave alone: keys, bytes, flags and module types."""
    return (
        [(k, v.dtype, tuple(v.shape), v.detach().cpu().numpy().tobytes()) for k, v in model.state_dict().items()],
        [(n, p.requires_grad) for n, p in model.named_parameters()],
        [(n, type(m)) for n, m in model.named_modules()],
    )


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16))


@pytest.mark.parametrize("inference_mode", [3, "yes", None, [], 1.0])
def test_bad_inference_mode_is_refused_before_the_base_is_touched(inference_mode):
    """``config.inference_mode`` replaced the tuner's ``trainable=`` flag: a non-bool is refused, as it was."""
    for build in (tp.nn.TensorPeftModel, tp.get_peft_model):
        base = _mlp()
        base[2].weight.requires_grad_(False)  # a mixed pattern of flags must survive too
        before = _snapshot(base)
        with pytest.raises(TypeError, match=r"`inference_mode` must be a bool, got"):
            build(base, tp.LoRAConfig(rank=2, target_modules=["0", "2"], inference_mode=inference_mode))
        assert _snapshot(base) == before


def test_the_removed_trainable_keyword_is_refused_before_the_base_is_touched():
    base = _mlp()
    before = _snapshot(base)
    with pytest.raises(TypeError, match="trainable"):
        tp.nn.TensorPeftModel(base, tp.LoRAConfig(rank=2, target_modules=["0", "2"]), trainable=False)
    assert _snapshot(base) == before


def test_inference_mode_freezes_the_adapter_and_the_default_trains_it():
    for build, prefix in ((tp.nn.TensorPeftModel, "tensorpeft_stacks.default."), (tp.get_peft_model, FACTORS)):
        frozen = build(_mlp(), tp.LoRAConfig(rank=2, target_modules=["0", "2"], inference_mode=True))
        assert not any(p.requires_grad for p in frozen.parameters())
        model = build(_mlp(), tp.LoRAConfig(rank=2, target_modules=["0", "2"]))
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable == {f"{prefix}{s}.{f}" for s in ("0", "2") for f in ("A", "B")}


@pytest.mark.parametrize("name", [3, "a.b", "__base__", "", None])
def test_bad_adapter_name_is_refused_before_the_base_is_touched(name):
    for build in (tp.nn.TensorPeftModel, tp.get_peft_model):
        base = _mlp()
        before = _snapshot(base)
        with pytest.raises((TypeError, ValueError), match=r"`adapter_name` must be"):
            build(base, tp.LoRAConfig(rank=2, target_modules=["0"]), adapter_name=name)
        assert _snapshot(base) == before


@pytest.mark.parametrize(
    ("factors", "exc", "match"),
    [
        (3, TypeError, r"`factors` must be None or a dict"),
        ({"0": 3}, TypeError, r"`factors\['0'\]` must be a dict of tensors, got int"),
        ({"0": {"A": "x", "B": 1}}, TypeError, r"`factors\['0'\]\['A'\]` must be a torch.Tensor, got str"),
        ({"0": {}, "nope": {}}, ValueError, r"`factors` has entries \['nope'\] for no stack"),
        ({"1": {}}, ValueError, r"`factors` has"),
    ],
)
def test_bad_factors_are_refused_before_the_base_is_touched(factors, exc, match):
    base = _mlp()
    before = _snapshot(base)
    with pytest.raises(exc, match=match):
        tp.nn.TensorPeftModel(base, tp.LoRAConfig(rank=2, target_modules=["0"]), factors=factors)
    assert _snapshot(base) == before


def test_factors_that_do_not_fit_the_memory_are_refused_before_allocation(monkeypatch):
    import tensorpeft.decomp.validate as validate

    # each of the two stacks (rank 2**18 · 32 fp32 scalars = 32 MiB) fits in 48 MiB, both together do not
    monkeypatch.setattr(validate, "physical_memory_bytes", lambda: 48 * 2**20)
    monkeypatch.setattr(torch, "randn", lambda *a, **k: pytest.fail("allocated before the memory check"))
    base = _mlp()
    before = _snapshot(base)
    with pytest.raises(ValueError, match=r"`rank` asks for 16,777,216 scalars \(0.1 GiB\), more than the 0.0 GiB"):
        tp.get_peft_model(base, tp.CPConfig(rank=2**18, target_modules=["0", "2"], stack_by="module"))
    assert _snapshot(base) == before


def test_a_rank_far_beyond_memory_is_a_clear_error():
    base = _mlp()
    before = _snapshot(base)
    with pytest.raises(ValueError, match=r"`rank` asks for .* GiB\), more than the"):
        tp.get_peft_model(base, tp.CPConfig(rank=2**31, target_modules=["0", "2"]))
    assert _snapshot(base) == before


def test_cuda_memory_is_the_free_memory_of_the_device(monkeypatch):
    from tensorpeft.nn._init import _device_memory

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (123, 456))
    assert _device_memory(torch.device("cuda", 0)) == 123
    assert _device_memory(torch.device("cpu")) is None


def test_svd_init_of_non_finite_weights_is_a_value_error():
    base = _mlp()
    with torch.no_grad():
        base[0].weight[0, 0] = float("nan")
    before = _snapshot(base)
    with pytest.raises(ValueError, match=r"`init`='svd' needs finite pretrained weights"):
        tp.get_peft_model(base, tp.Tucker2Config(rank=2, target_modules=["0", "2"], init="svd"))
    assert _snapshot(base) == before


def _lora_stack():
    from tensorpeft import decomp

    fmt = decomp.LoRA(stack=(2,), out_features=4, in_features=3, rank=1)
    return fmt, fmt.init(seed=0, backend="torch")


@pytest.mark.parametrize(
    ("args", "exc", "match"),
    [
        ((3, 1.0, None), TypeError, r"`fmt` must be a tensorpeft.decomp format"),
        (("fmt", "x", "factors"), TypeError, r"`scaling` must be a finite real number, got 'x'"),
        (("fmt", float("nan"), "factors"), TypeError, r"`scaling` must be a finite real number, got nan"),
        (("fmt", 1e300, "factors"), ValueError, r"`scaling` must be in \[-1e\+06, 1e\+06\], got 1e\+300"),
        (("fmt", 1.0, "numpy"), TypeError, r"`factors\['A'\]` must be a torch.Tensor, got ndarray"),
    ],
)
def test_adapter_stack_arguments(args, exc, match):
    fmt, good = _lora_stack()
    sub = {"fmt": fmt, "factors": good, "numpy": {k: v.numpy() for k, v in good.items()}}
    args = [sub.get(a, a) if isinstance(a, str) and a in sub else a for a in args]
    with pytest.raises(exc, match=match):
        tp.nn.AdapterStack(*args)


@pytest.mark.parametrize(
    ("layer", "stack", "index", "dropout", "exc", "match"),
    [
        (3, "stack", (0,), 0.0, TypeError, r"`base_layer` must be an nn.Linear or transformers Conv1D layer, got int"),
        ("linear", 3, (0,), 0.0, TypeError, r"`stack` must be an AdapterStack, got int"),
        (torch.nn.Linear(5, 4), "stack", (0,), 0.0, ValueError, r"`base_layer` is 4×5 \(out × in\), but `stack`"),
        ("linear", "stack", (2,), 0.0, ValueError, r"`index\[0\]`=2 is out of range"),
        ("linear", "stack", (0, 0), 0.0, ValueError, r"`index` must have 1 entries"),
        ("linear", "stack", (0,), "x", TypeError, r"`dropout` must be a real number in \[0, 1\), got 'x'"),
        ("linear", "stack", (0,), 2.0, ValueError, r"`dropout` must be in \[0, 1\), got 2.0"),
    ],
)
def test_adapter_linear_arguments(layer, stack, index, dropout, exc, match):
    fmt, good = _lora_stack()
    layer = torch.nn.Linear(3, 4) if layer == "linear" else layer
    stack = tp.nn.AdapterStack(fmt, 1.0, good) if stack == "stack" else stack
    with pytest.raises(exc, match=match):
        tp.nn.AdapterLinear(layer, stack, index, dropout)


def test_get_peft_model_names_its_own_arguments():
    with pytest.raises(TypeError, match=r"`model` must be a torch.nn.Module, got int"):
        tp.get_peft_model(3, tp.LoRAConfig(target_modules=["0"]))
    with pytest.raises(TypeError, match=r"`config` must be a tensorpeft AdapterConfig"):
        tp.get_peft_model(_mlp(), {"rank": 2})


class _PenalizedLoRA(tp.decomp.LoRA):
    """A LoRA whose format asks for a squared-norm penalty on ``B``: orthogonality_loss must add it."""

    def regularizer(self, factors):
        return {"B": (factors["B"] ** 2).sum()}


def test_orthogonality_loss_adds_every_format_regularizer(make_model, helpers):
    cfg = tp.CustomConfig(factory=_PenalizedLoRA, rank=2, target_modules=["query"])
    model = helpers.randomize(tp.get_peft_model(make_model("bert"), cfg))
    expected = sum((stack.B**2).sum() for stack in model.tensor_adapters.values())
    loss = model.orthogonality_loss()
    assert expected.item() > 0 and torch.allclose(loss, expected)
    loss.backward()
    assert all(stack.B.grad.abs().sum() > 0 for stack in model.tensor_adapters.values())


# ---------------------------------------------------------------- the bare tuner and the PeftModel


def test_bare_tuner_identity_trainable_set_and_unload(make_model, helpers, ids):
    base = make_model("bert")
    with torch.no_grad():
        ref = helpers.output_of(base(ids))
    tuner = tp.nn.TensorPeftModel(base, helpers.FORMATS["tucker2"](helpers.TARGETS["bert"]))
    assert tuner.model is base and list(tuner.peft_config) == ["default"]
    assert torch.equal(helpers.output_of(tuner(ids)), ref)
    trainable = {n for n, p in tuner.named_parameters() if p.requires_grad}
    stacks = tuner.tensor_adapters
    assert trainable == {f"tensorpeft_stacks.default.{s}.{f}" for s in stacks for f in stacks[s].format.factor_names}
    assert "model.encoder.layer.0.attention.self.query.base_layer.weight" in tuner.state_dict()
    helpers.randomize(tuner)
    with torch.no_grad():
        adapted = helpers.output_of(tuner(ids))
    assert helpers.rel_err(adapted, ref) > 1e-6
    plain = tuner.merge_and_unload()
    assert plain is base and not any(isinstance(m, AdapterLinear) for m in plain.modules())
    with torch.no_grad():
        assert helpers.rel_err(helpers.output_of(plain(ids)), adapted) <= 1e-5
    with pytest.raises(RuntimeError, match="unloaded"):
        tuner(ids)


def test_get_peft_model_returns_a_peft_model_as_peft_get_peft_model_does(make_model, ids):
    import peft

    base = make_model("bert")
    model = tp.get_peft_model(base, tp.Tucker2Config(rank=2, target_modules=["query", "value"]))
    assert type(model) is peft.PeftModel
    assert type(model.base_model) is tp.nn.TensorPeftModel and model.get_base_model() is base
    assert model.peft_config["default"] is model.active_config and model.active_config.format == "Tucker2"
    assert model.active_config.peft_type == peft.PeftType.TENSORPEFT
    assert model.tensor_adapters is model.base_model.tensorpeft_stacks["default"]  # falls through to the tuner
    other = peft.get_peft_model(make_model("bert"), tp.Tucker2Config(rank=2, target_modules=["query", "value"]))
    assert type(other) is peft.PeftModel and type(other.base_model) is tp.nn.TensorPeftModel
    ours, theirs = model.state_dict(), other.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def _bert_seq_cls():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=100, num_labels=3
    )
    return BertForSequenceClassification(cfg).eval()


def test_seq_cls_task_trains_and_saves_the_classifier(tmp_path, ids):
    import peft
    from peft.utils import ModulesToSaveWrapper
    from safetensors.torch import load_file

    def config():
        return tp.Tucker2Config(rank=2, target_modules=["query", "value"], task_type="SEQ_CLS")

    assert type(peft.get_peft_model(_bert_seq_cls(), config())) is peft.PeftModelForSequenceClassification
    model = tp.get_peft_model(_bert_seq_cls(), config())
    assert type(model) is peft.PeftModelForSequenceClassification
    head = model.get_base_model().classifier
    assert isinstance(head, ModulesToSaveWrapper) and "classifier" in model.active_config.modules_to_save
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    head_names = {f"base_model.model.classifier.modules_to_save.default.{k}" for k in ("weight", "bias")}
    assert head_names <= trainable and all(n.startswith(FACTORS) for n in trainable - head_names)
    original = head.original_module.weight.detach().clone()
    trained = head.modules_to_save["default"].weight.detach().clone()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    model(input_ids=ids, labels=torch.tensor([0, 2])).loss.backward()
    opt.step()
    model.eval()
    assert not torch.equal(head.modules_to_save["default"].weight, trained)  # the head trains
    assert torch.equal(head.original_module.weight, original)  # on a copy
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    model.save_pretrained(tmp_path / "cls")
    saved = load_file(tmp_path / "cls" / "adapter_model.safetensors")
    assert {"base_model.model.classifier.weight", "base_model.model.classifier.bias"} <= saved.keys()
    assert torch.equal(saved["base_model.model.classifier.weight"], head.modules_to_save["default"].weight)
    loaded = tp.nn.load_adapter(_bert_seq_cls(), tmp_path / "cls")
    assert type(loaded) is peft.PeftModelForSequenceClassification
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, logits)


# ---------------------------------------------------------------- several adapters (PEFT's API)

TARGETS_A = ["query", "value"]  # "default": Tucker2
TARGETS_B = ["value", "output.dense"]  # "b": CP; value is adapted by both, output.dense by "b" only


def _randomize_adapter(model, adapter, seed=0, std=0.3):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.base_model.tensorpeft_stacks[adapter].parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) * std)


def _two_adapters(make_model, helpers, ids):
    """A BERT with "default" (Tucker2) and "b" (CP), both randomized; returns (ref, model, out_default)."""
    base = make_model("bert")
    with torch.no_grad():
        ref = helpers.output_of(base(ids))
    model = tp.get_peft_model(base, tp.Tucker2Config(rank=2, target_modules=TARGETS_A))
    helpers.randomize(model)
    with torch.no_grad():
        out_default = helpers.output_of(model(ids))
    model.add_adapter("b", tp.CPConfig(rank=3, target_modules=TARGETS_B))
    _randomize_adapter(model, "b", seed=1)
    return ref, model, out_default


def _names(model, adapter):
    return {
        f"base_model.tensorpeft_stacks.{adapter}.{s}.{f}"
        for s, stack in model.base_model.tensorpeft_stacks[adapter].items()
        for f in stack.format.factor_names
    }


def test_add_adapter_of_another_format_has_its_own_stacks(make_model, helpers, ids):
    _, model, _ = _two_adapters(make_model, helpers, ids)
    stacks = model.base_model.tensorpeft_stacks
    assert list(model.peft_config) == ["default", "b"] and model.active_adapter == "default"
    assert {s.format.__class__.__name__ for s in stacks["b"].values()} == {"CP"}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == _names(model, "default")
    assert not {id(p) for p in stacks["default"].parameters()} & {id(p) for p in stacks["b"].parameters()}
    for name, layer in model.adapter_layers():
        expected = {a for a, ts in (("default", TARGETS_A), ("b", TARGETS_B)) if any(name.endswith(t) for t in ts)}
        assert set(layer.slices) == expected, name
        for adapter, (stack, _) in layer.slices.items():
            assert any(stack is s for s in stacks[adapter].values()), (name, adapter)
    # a second adapter of the same format and config still gets stacks of its own
    model.add_adapter("c", tp.Tucker2Config(rank=2, target_modules=TARGETS_A))
    own = {id(p) for p in stacks["c"].parameters()}
    assert own and not own & {id(p) for a in ("default", "b") for p in stacks[a].parameters()}
    with torch.no_grad():
        before = helpers.output_of(model(ids))
        for p in stacks["c"].parameters():
            p.add_(1.0)
        assert torch.equal(helpers.output_of(model(ids)), before)  # "c" is not active: nothing changes


def test_set_adapter_switches_outputs_and_trainable_factors(make_model, helpers, ids):
    _, model, out_default = _two_adapters(make_model, helpers, ids)
    with torch.no_grad():
        assert torch.equal(helpers.output_of(model(ids)), out_default)  # adding "b" changed nothing
    model.set_adapter("b")
    assert model.active_adapter == "b" and model.active_config.format == "CP"
    assert model.tensor_adapters is model.base_model.tensorpeft_stacks["b"]
    assert {n for n, p in model.named_parameters() if p.requires_grad} == _names(model, "b")
    with torch.no_grad():
        out_b = helpers.output_of(model(ids))
    assert helpers.rel_err(out_b, out_default) > 1e-3
    alone = tp.get_peft_model(make_model("bert"), tp.CPConfig(rank=3, target_modules=TARGETS_B))
    alone.tensor_adapters.load_state_dict(model.tensor_adapters.state_dict())
    with torch.no_grad():
        assert helpers.rel_err(helpers.output_of(alone(ids)), out_b) <= 1e-6  # "b" alone, "default" off

    default = {k: v.detach().clone() for k, v in model.base_model.tensorpeft_stacks["default"].state_dict().items()}
    b = {k: v.detach().clone() for k, v in model.tensor_adapters.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    out = helpers.output_of(model(ids))
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(2))).sum().backward()
    opt.step()
    model.eval()
    after = model.base_model.tensorpeft_stacks
    assert all(torch.equal(v, after["default"].state_dict()[k]) for k, v in default.items())
    assert any(not torch.equal(v, after["b"].state_dict()[k]) for k, v in b.items())
    model.set_adapter("default")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == _names(model, "default")
    with torch.no_grad():
        assert torch.equal(helpers.output_of(model(ids)), out_default)


def test_delete_adapter_restores_the_base_layers_and_removes_the_stacks(make_model, helpers, ids):
    base = make_model("bert")
    with torch.no_grad():
        ref = helpers.output_of(base(ids))
    originals = dict(base.named_modules())
    model = tp.get_peft_model(base, tp.Tucker2Config(rank=2, target_modules=TARGETS_A))
    helpers.randomize(model)
    with torch.no_grad():
        out_default = helpers.output_of(model(ids))
    model.add_adapter("b", tp.CPConfig(rank=3, target_modules=TARGETS_B))
    _randomize_adapter(model, "b", seed=1)
    only_b = [n for n, layer in model.adapter_layers() if set(layer.slices) == {"b"}]
    assert only_b and all(n.endswith("output.dense") for n in only_b)

    model.set_adapter("b")
    model.delete_adapter("b")
    assert list(model.peft_config) == ["default"] and model.active_adapter == "default"
    assert "b" not in model.base_model.tensorpeft_stacks
    assert not any(".b." in k for k in model.state_dict())
    inner = model.base_model.model
    for name in only_b:  # back to the very base layer
        assert inner.get_submodule(name) is originals[name] and type(originals[name]) is torch.nn.Linear
    assert all(set(layer.slices) == {"default"} for _, layer in model.adapter_layers())
    assert {n for n, p in model.named_parameters() if p.requires_grad} == _names(model, "default")
    with torch.no_grad():
        assert torch.equal(helpers.output_of(model(ids)), out_default)

    model.delete_adapter("default")  # no adapter left anywhere: the plain base model
    assert not any(isinstance(m, AdapterLinear) for m in inner.modules())
    assert len(model.base_model.tensorpeft_stacks) == 0
    with torch.no_grad():
        assert torch.equal(helpers.output_of(inner(ids)), ref)


def test_disable_adapter_with_several_adapters_gives_the_base_output(make_model, helpers, ids):
    ref, model, out_default = _two_adapters(make_model, helpers, ids)
    model.set_adapter("b")
    with torch.no_grad():
        out_b = helpers.output_of(model(ids))
        with model.disable_adapter():
            assert torch.equal(helpers.output_of(model(ids)), ref)
        assert torch.equal(helpers.output_of(model(ids)), out_b)
        model.set_adapter("default")
        with model.disable_adapter():
            assert torch.equal(helpers.output_of(model(ids)), ref)
        assert torch.equal(helpers.output_of(model(ids)), out_default)


def test_mixed_batch_equals_each_row_alone_with_its_adapter(make_model, helpers):
    rows = torch.randint(0, 100, (5, 7), generator=torch.Generator().manual_seed(3))
    _, model, _ = _two_adapters(make_model, helpers, rows)
    names = ["default", "b", "__base__", "b", "default"]
    model.set_adapter("b")
    model.eval()
    with torch.no_grad():
        mixed = helpers.output_of(model(rows, adapter_names=names))
        assert model.active_adapter == "b"
        assert torch.equal(helpers.output_of(model(rows)), helpers.output_of(model(rows)))
        for i, name in enumerate(names):
            if name == "__base__":
                with model.disable_adapter():
                    alone = helpers.output_of(model(rows[i : i + 1]))
            else:
                model.set_adapter(name)
                alone = helpers.output_of(model(rows[i : i + 1]))
            assert float((mixed[i : i + 1] - alone).abs().max()) <= 1e-6, (i, name)
        model.set_adapter("b")
        assert helpers.rel_err(helpers.output_of(model(rows))[1], mixed[1]) <= 1e-6  # per-row choice is not kept
        assert helpers.rel_err(helpers.output_of(model(rows))[0], mixed[0]) > 1e-3
        with pytest.raises(ValueError, match="unknown adapters"):
            model(rows, adapter_names=["default", "nope", "b", "b", "b"])
    model.train()
    with pytest.raises(ValueError, match="inference"):
        model(rows, adapter_names=names)
