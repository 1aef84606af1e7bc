"""``stack_by="input"``: one fused slice per group of projections that read the same input (q, k, v).

A tiny random LLaMA (grouped-query attention: q, o 64×64, k, v 32×64) built from a config, no download.
Every check compares with a dense reference: the base model with each adapted weight ``W += ΔW`` rows,
``ΔW`` from the format's own equation (``format.to_dense``).
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import tensorpeft as tp
from tensorpeft.nn._grouping import SIBLING_SETS
from tensorpeft.nn._init import pretrained_stack

QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]
CONFIGS = {
    "lora": lambda **kw: tp.LoRAConfig(rank=4, alpha=8, **kw),
    "tucker2": lambda **kw: tp.Tucker2Config(rank=4, alpha=8, **kw),
    "tucker2_wide": lambda **kw: tp.Tucker2Config(rank=(3, 5), alpha=8, **kw),
    "cp_heads": lambda **kw: tp.CPConfig(rank=4, heads="auto", **kw),
    "cp": lambda **kw: tp.CPConfig(rank=4, heads=None, **kw),
    "tt": lambda **kw: tp.TensorTrainConfig(rank=3, alpha=2.0, **kw),
    "orthogonal": lambda **kw: tp.OrthogonalConfig(rank=2, inner=3, **kw),
}
QKV = "model_layers_self_attn_q_proj_k_proj_v_proj"
GATE_UP = "model_layers_mlp_gate_proj_up_proj"


def llama(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=96,
        vocab_size=128,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture
def tokens():
    return torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(1))


def randomize(model, seed=0, std=0.3):
    """Random non-zero factors for every stack of the active adapter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.tensor_adapters.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) * std)
    return model


def adapted(name="tucker2", targets="all-linear", seed=0, **kw):
    base = llama(seed)
    reference = copy.deepcopy(base)
    model = tp.get_peft_model(base, CONFIGS[name](target_modules=targets, stack_by="input", **kw))
    return randomize(model), reference


def dense_reference(model, reference):
    """``reference`` with every adapted weight plus its rows of ``scaling · format.to_dense`` (float64)."""
    tuner = model.base_model
    dense = {}
    for name, stack in tuner.tensor_adapters.items():
        factors = {n: p.detach().double() for n, p in stack.factors().items()}
        dense[name] = stack.format.to_dense(factors) * stack.scaling
    modules = dict(reference.named_modules())
    with torch.no_grad():
        for plan in tuner.plans:
            for (module, index), rows in zip(plan.members, plan.member_rows(), strict=True):
                delta = dense[plan.name][index]
                if rows is not None:
                    delta = delta[rows[0] : rows[1]]
                w = modules[module].weight
                w.copy_((w.double() + delta).to(w.dtype))
    return reference


def logits(model, tokens):
    return model(input_ids=tokens).logits


# ---------------------------------------------------------------------------------------------- grouping
def test_qkv_of_one_layer_form_one_fused_slice_and_o_proj_is_grouped_by_name():
    plans = {
        p.name: p
        for p, _ in tp.nn.plan_stacks(llama(), tp.Tucker2Config(rank=4, target_modules=QKVO, stack_by="input"))
    }
    assert list(plans) == [QKV, "model_layers_self_attn_o_proj"]
    qkv, o = plans[QKV], plans["model_layers_self_attn_o_proj"]
    assert (qkv.stack, qkv.out_features, qkv.in_features) == ((2,), 64 + 32 + 32, 64)
    assert qkv.members == tuple(
        (f"model.layers.{layer}.self_attn.{p}_proj", (layer,)) for layer in range(2) for p in "qkv"
    )
    assert qkv.rows == ((0, 64), (64, 96), (96, 128)) * 2
    assert (o.stack, o.out_features, o.rows) == ((2,), 64, None)
    assert o.member_rows() == (None, None)


def test_gate_and_up_are_fused_with_all_linear_and_down_is_not():
    plans = tp.nn.plan_stacks(llama(), tp.Tucker2Config(rank=4, target_modules="all-linear", stack_by="input"))
    names = [p.name for p, _ in plans]
    assert names == [QKV, "model_layers_self_attn_o_proj", GATE_UP, "model_layers_mlp_down_proj"]
    gate_up = plans[2][0]
    assert (gate_up.out_features, gate_up.in_features, gate_up.rows) == (192, 64, ((0, 96), (96, 192)) * 2)
    assert plans[3][0].rows is None


def test_a_partial_set_fuses_what_is_targeted_and_a_lone_member_is_grouped_by_name():
    plans = tp.nn.plan_stacks(llama(), tp.LoRAConfig(rank=2, target_modules=["q_proj", "v_proj"], stack_by="input"))
    ((plan, fmt),) = plans
    assert plan.name == "model_layers_self_attn_q_proj_v_proj"
    assert (plan.out_features, plan.rows) == (96, ((0, 64), (64, 96)) * 2)
    assert fmt.shape == (2, 96, 64)
    ((plan, _),) = tp.nn.plan_stacks(llama(), tp.LoRAConfig(rank=2, target_modules=["k_proj"], stack_by="input"))
    assert (plan.name, plan.rows, plan.out_features) == ("model_layers_self_attn_k_proj", None, 32)


class _Block(nn.Module):
    def __init__(self, names, ins, out=4):
        super().__init__()
        for name, d in zip(names, ins, strict=True):
            self.add_module(name, nn.Linear(d, out))


def test_siblings_need_the_same_parent_and_in_features():
    net = nn.ModuleDict(
        {
            "a": _Block(["q_proj", "k_proj", "v_proj"], [8, 6, 6]),  # q reads something else
            "b": _Block(["query"], [8]),
            "c": _Block(["key", "value"], [8, 8]),  # other parent than b's query
            "d": _Block(["w1", "w3", "w2"], [8, 8, 5]),
        }
    )
    plans = {
        p.name: p
        for p, _ in tp.nn.plan_stacks(net, tp.LoRAConfig(rank=1, target_modules="all-linear", stack_by="input"))
    }
    assert {n: p.rows for n, p in plans.items()} == {
        "a_q_proj": None,
        "a_k_proj_v_proj": ((0, 4), (4, 8)),
        "b_query": None,
        "c_key_value": ((0, 4), (4, 8)),
        "d_w1_w3": ((0, 4), (4, 8)),
        "d_w2": None,
    }
    assert ("q_proj", "k_proj", "v_proj") in SIBLING_SETS and ("query", "key", "value") in SIBLING_SETS


def test_cp_heads_auto_sees_the_fused_qkv_as_whole_heads():
    plans = {
        p.name: p for p, _ in tp.nn.plan_stacks(llama(), tp.CPConfig(rank=4, target_modules=QKVO, stack_by="input"))
    }
    assert plans[QKV].heads == 4 + 2 * 2  # (n + 2 n_kv) heads of head_dim 16
    assert plans["model_layers_self_attn_o_proj"].heads == 4


def test_input_has_fewer_parameters_than_name():
    def count(stack_by):
        cfg = tp.Tucker2Config(rank=4, target_modules="all-linear", stack_by=stack_by)
        return sum(fmt.num_params for _, fmt in tp.nn.plan_stacks(llama(), cfg))

    assert count("input") < count("name")


# ---------------------------------------------------------------------------------------------- forward
@pytest.mark.parametrize("config_name", list(CONFIGS))
def test_logits_equal_the_dense_reference(config_name, tokens):
    model, reference = adapted(config_name)
    dense = dense_reference(model, reference)
    with torch.no_grad():
        got, want = logits(model, tokens), logits(dense, tokens)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), float((got - want).abs().max())
    assert not torch.allclose(got, logits(llama(), tokens), atol=1e-3)  # the update is not negligible


@pytest.mark.parametrize("config_name", list(CONFIGS))
def test_sharing_on_and_off_give_the_same_outputs_and_gradients(config_name, tokens):
    model, _ = adapted(config_name)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    out_shared = logits(model, tokens)  # through the tuner: sharing on
    grads_shared = torch.autograd.grad(out_shared.square().mean(), params)
    out_plain = model.base_model.model(input_ids=tokens).logits  # the bare model: no sharing
    grads_plain = torch.autograd.grad(out_plain.square().mean(), params)
    assert torch.allclose(out_shared, out_plain, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads_shared, grads_plain, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("config_name", ["tucker2", "cp_heads"])
def test_bert_query_key_value_are_fused_and_exact(config_name):
    from transformers import BertConfig, BertModel

    def bert():
        torch.manual_seed(0)
        cfg = BertConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=100
        )
        return BertModel(cfg).eval()

    reference = bert()
    config = CONFIGS[config_name](target_modules=["query", "key", "value", "output.dense"], stack_by="input")
    model = randomize(tp.get_peft_model(bert(), config))
    plan = model.base_model.plans[0]
    assert (plan.name, plan.out_features, plan.rows[:3]) == (
        "encoder_layer_attention_self_query_key_value",
        96,
        ((0, 32), (32, 64), (64, 96)),
    )
    if config_name == "cp_heads":
        assert plan.heads == 12
    ids = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = model(input_ids=ids).last_hidden_state
        want = dense_reference(model, reference)(input_ids=ids).last_hidden_state
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:.*gradient_checkpointing. is deprecated.*:FutureWarning")
def test_gradient_checkpointing_gives_the_same_gradients(tokens):
    model, _ = adapted("tucker2", targets=QKVO)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    want = torch.autograd.grad(logits(model, tokens).square().mean(), params)
    model.base_model.model.activation_checkpointing_enable({"use_reentrant": False})
    assert model.base_model._checkpointing()  # sharing is off: the recomputation must match the forward
    got = torch.autograd.grad(logits(model, tokens).square().mean(), params)
    for a, b in zip(got, want, strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing. is deprecated.*:FutureWarning")
def test_compiles_without_graph_breaks(tokens):
    model, _ = adapted("cp_heads")
    with torch.no_grad():
        want = logits(model, tokens)
        explained = torch._dynamo.explain(model)(input_ids=tokens)
        got = torch.compile(model, backend="eager")(input_ids=tokens).logits
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)
    assert torch.allclose(got, want, atol=1e-5)


class _Counting:
    """A kernel proxy counting calls of its steps (``finish_rows`` calls ``core`` and ``expand`` inside)."""

    def __init__(self, kernel):
        self.kernel, self.calls = kernel, {"project": 0, "finish": 0, "finish_rows": 0, "core": 0, "expand": 0}
        self.shared_inputs = kernel.shared_inputs

    def __getattr__(self, name):
        method = getattr(self.kernel, name)

        def counted(*args, **kwargs):
            self.calls[name] += 1
            return method(*args, **kwargs)

        return counted


@pytest.mark.parametrize("config_name", ["tucker2", "lora", "cp_heads"])
def test_x_b_is_computed_once_per_layer_with_sharing(config_name, tokens):
    model, _ = adapted(config_name, targets=QKVO)
    stack = model.tensor_adapters[QKV]
    counter = stack._kernel = _Counting(stack._kernel)
    model.train()
    logits(model, tokens).sum().backward()
    # 2 layers: x·B and the core once each, then q, k, v multiply by their rows of the output factor
    assert counter.calls == {"project": 2, "finish": 0, "finish_rows": 0, "core": 2, "expand": 6}
    counter.calls = dict.fromkeys(counter.calls, 0)
    model.base_model.model(input_ids=tokens)  # sharing off: each projection computes its own chain
    assert counter.calls == {"project": 6, "finish": 0, "finish_rows": 6, "core": 0, "expand": 0}


def test_with_active_dropout_each_projection_computes_only_its_rows(tokens):
    model, _ = adapted("tucker2", targets=QKVO, dropout=0.5)
    stack = model.tensor_adapters[QKV]
    counter = stack._kernel = _Counting(stack._kernel)
    model.eval()  # dropout is the identity: the fused update is shared
    with torch.no_grad():
        logits(model, tokens)
    assert counter.calls == {"project": 2, "finish": 0, "finish_rows": 0, "core": 2, "expand": 6}
    counter.calls = dict.fromkeys(counter.calls, 0)
    model.train()  # a fresh dropout output per projection: nothing to share
    out = logits(model, tokens)
    assert counter.calls == {"project": 6, "finish": 0, "finish_rows": 6, "core": 0, "expand": 0}
    assert bool(torch.isfinite(out).all())


def test_rows_of_the_kernels_equal_the_full_slice_sliced():
    gen = torch.Generator().manual_seed(0)
    formats = [
        tp.decomp.LoRA(stack=(2,), out_features=12, in_features=5, rank=3),
        tp.decomp.Tucker2(stack=(2,), out_features=12, in_features=5, rank=3),
        tp.decomp.CP(stack=(2,), out_features=12, in_features=5, rank=3),
        tp.decomp.CP(stack=(2,), out_features=12, in_features=5, rank=3, heads=3),
        tp.decomp.OrthogonalProjection(stack=(2,), out_features=12, in_features=5, rank=2, inner=3),
        tp.decomp.TensorTrain(stack=(2,), out_features=12, in_features=5, rank=2),
    ]
    x = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    for fmt in formats:
        factors = {n: torch.randn(s, generator=gen, dtype=torch.float64) for n, s in fmt.factor_shapes.items()}
        stack = tp.nn.AdapterStack(fmt, 1.5, factors)
        full = stack(x, (1,))
        for rows in [(0, 4), (4, 12), (2, 7), (0, 12)]:  # (2, 7) crosses CP's heads of 4 rows
            assert torch.allclose(stack(x, (1,), rows), full[:, rows[0] : rows[1]], atol=1e-12), (fmt, rows)
            stack.set_sharing(True)  # the shared core, expanded to the rows
            assert torch.allclose(stack(x, (1,), rows), full[:, rows[0] : rows[1]], atol=1e-12), (fmt, rows)
            stack.set_sharing(False)
            assert torch.allclose(stack.delta_weight((1,), rows), stack.delta_weight((1,))[rows[0] : rows[1]])


# ---------------------------------------------------------------------------------------------- merge, disable
def test_merge_unmerge_and_merge_and_unload_are_exact(tokens):
    model, reference = adapted("tucker2")
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}
    with torch.no_grad():
        want = logits(model, tokens)
        model.merge_adapter()
        assert torch.allclose(logits(model, tokens), want, atol=1e-5)
        model.unmerge_adapter()
        for n, p in model.named_parameters():
            if n in weights:
                assert torch.allclose(p, weights[n], atol=1e-6), n
        assert torch.allclose(logits(model, tokens), want, atol=1e-6)
        merged = model.merge_and_unload()
        assert not any(isinstance(m, tp.nn.AdapterLinear) for m in merged.modules())
        assert torch.allclose(logits(merged, tokens), logits(dense_reference(model, reference), tokens), atol=1e-5)


def test_disable_adapter_gives_the_base_model(tokens):
    model, _ = adapted("cp_heads")
    with torch.no_grad(), model.disable_adapter():
        assert torch.allclose(logits(model, tokens), logits(llama(), tokens), atol=1e-6)


def test_layers_know_their_rows_and_reject_a_wrong_height():
    model, _ = adapted("lora", targets=QKVO)
    layers = dict(model.base_model.adapter_layers())
    k = layers["model.layers.1.self_attn.k_proj"]
    assert (k.index, k.rows) == ((1,), (64, 96))
    assert "rows={'default': (64, 96)}" in repr(k)
    assert layers["model.layers.0.self_attn.o_proj"].rows is None
    stack = model.tensor_adapters[QKV]
    with pytest.raises(ValueError, match="rows"):
        tp.nn.AdapterLinear(nn.Linear(64, 32), stack, (0,), rows=(0, 64))
    with pytest.raises(ValueError, match="rows"):
        tp.nn.AdapterLinear(nn.Linear(64, 32), stack, (0,), rows=(100, 132))
    with pytest.raises(TypeError, match="rows"):
        tp.nn.AdapterLinear(nn.Linear(64, 32), stack, (0,), rows=(True, 33))
    with pytest.raises(ValueError, match="out × in"):
        tp.nn.AdapterLinear(nn.Linear(64, 32), stack, (0,))


def test_multi_adapter_and_per_row_adapters(tokens):
    model, _ = adapted("tucker2", targets=QKVO)
    model.add_adapter("other", tp.Tucker2Config(rank=2, target_modules=QKVO, stack_by="shape"))
    model.set_adapter("other")
    randomize(model, seed=5)
    model.eval()
    with torch.no_grad():
        other = logits(model, tokens)
        model.set_adapter("default")
        default = logits(model, tokens)
        base = logits(llama(), tokens)
        mixed = model(input_ids=tokens, adapter_names=["other", "default"]).logits
        assert torch.allclose(mixed[0], other[0], atol=1e-5) and torch.allclose(mixed[1], default[1], atol=1e-5)
        mixed = model(input_ids=tokens, adapter_names=["__base__", "default"]).logits
        assert torch.allclose(mixed[0], base[0], atol=1e-5) and torch.allclose(mixed[1], default[1], atol=1e-5)


# ---------------------------------------------------------------------------------------------- init
def test_pretrained_stack_concatenates_the_member_rows():
    base = llama()
    (plan, fmt), *_ = tp.nn.plan_stacks(base, tp.Tucker2Config(rank=4, target_modules=QKVO, stack_by="input"))
    modules = dict(base.named_modules())
    members = [(modules[n], i, r) for (n, i), r in zip(plan.members, plan.member_rows(), strict=True)]
    dense = pretrained_stack(members, fmt.shape, torch.float32)
    for layer in range(2):
        attn = base.model.layers[layer].self_attn
        want = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
        assert torch.equal(dense[layer], want)


@pytest.mark.parametrize("config_name", ["tucker2", "cp_heads", "lora", "orthogonal"])
def test_svd_init_starts_at_the_base_model(config_name, tokens):
    base = llama()
    model = tp.get_peft_model(llama(), CONFIGS[config_name](target_modules="all-linear", stack_by="input", init="svd"))
    with torch.no_grad():
        assert torch.allclose(logits(model, tokens), logits(base, tokens), atol=1e-6)
    fitted = model.tensor_adapters[QKV].factors()
    assert all(bool(p.abs().sum() > 0) for n, p in fitted.items() if n != model.tensor_adapters[QKV].format.zero_factor)


# ---------------------------------------------------------------------------------------------- files
def test_save_load_round_trip_gives_identical_logits(tmp_path, tokens):
    model, _ = adapted("cp_heads")
    tp.nn.save_adapter(model, tmp_path / "a")
    model.save_pretrained(tmp_path / "b")
    saved = json.loads((tmp_path / "a" / "adapter_config.json").read_text())["tensorpeft"]["stacks"]
    assert [s.get("rows") for s in saved] == [[[0, 64], [64, 96], [96, 128]] * 2, None, [[0, 96], [96, 192]] * 2, None]
    assert "rows" not in saved[1]  # a stack of whole slices is written as before
    with torch.no_grad():
        want = logits(model, tokens)
        loaded = tp.nn.load_adapter(llama(), tmp_path / "a")
        assert torch.equal(logits(loaded, tokens), want)
        assert loaded.base_model.plans == model.base_model.plans

        from peft import PeftModel

        via_peft = PeftModel.from_pretrained(llama(), tmp_path / "b")
        assert torch.equal(logits(via_peft, tokens), want)


@pytest.mark.parametrize("config_name", list(CONFIGS))
def test_export_lora_reproduces_the_fused_model(config_name, tmp_path, tokens):
    from peft import PeftModel

    model, _ = adapted(config_name)
    report = tp.nn.export_lora(model, tmp_path)
    assert report.max_error < 1e-5
    if config_name == "tucker2_wide":
        assert report.ranks["model.layers.0.self_attn.k_proj"] == 3
    exported = PeftModel.from_pretrained(llama(), tmp_path)
    with torch.no_grad():
        assert torch.allclose(logits(exported, tokens), logits(model, tokens), atol=1e-5)


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([[0, 64], [32, 96], [96, 128]] * 2, "overlap"),
        ([[0, 64], [64, 96], [96, 129]] * 2, "out_features"),
        ([[0, 64], [64, 96]] * 2, "per member"),
        ([[0, 64], [64, 96], [96, 96]] * 2, "start < stop"),
        ([[0, 64], [64, 96], [96.0, 128]] * 2, "integer"),
        ([[0, 64], [64, 96], [False, 128]] * 2, "integer"),
        ([[0, 64], [64, 96], [96, 128, 1]] * 2, r"\[start, stop\]"),
        ([[0, 64], [64, 96], {"a": 1}] * 2, "list"),
        ("rows", "list"),
        ([[0, 64], [64, 96], [96, 128], [0, 32], [32, 64], [64, 128]], "rows"),  # valid, but not this model's
    ],
)
def test_malformed_rows_in_a_file_are_refused(tmp_path, rows, match):
    model, _ = adapted("lora", targets=QKVO)
    tp.nn.save_adapter(model, tmp_path)
    config = tmp_path / "adapter_config.json"
    data = json.loads(config.read_text())
    data["tensorpeft"]["stacks"][0]["rows"] = rows
    config.write_text(json.dumps(data))
    target = llama()
    with pytest.raises(ValueError, match=match) as info:
        tp.nn.load_adapter(target, tmp_path)
    assert "stacks" in str(info.value) or "rows" in str(info.value)
    assert not any(isinstance(m, tp.nn.AdapterLinear) for m in target.modules())


def test_plans_round_trip_and_files_without_rows_read_as_whole_slices():
    (plan, _), (other, _) = tp.nn.plan_stacks(llama(), tp.LoRAConfig(rank=2, target_modules=QKVO, stack_by="input"))
    assert tp.nn.StackPlan.from_dict(plan.to_dict()) == plan
    old = other.to_dict()
    assert "rows" not in old
    assert tp.nn.StackPlan.from_dict(old).rows is None
    assert tp.nn.StackPlan.from_dict({**old, "rows": None}) == other


# ---------------------------------------------------------------------------------------------- pruning
def test_rank_pruner_refuses_fused_stacks():
    model = tp.get_peft_model(llama(), tp.LoRA2Config(rank=2, target_modules=QKVO, stack_by="input"))
    with pytest.raises(ValueError, match="fused"):
        tp.RankPruner(model, target_rank=1, total_steps=4, warmup_steps=0, final_steps=1, interval=1)
