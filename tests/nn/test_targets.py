import pytest
import torch

import tensorpeft as tp
from tensorpeft.nn import AdapterLinear


def plans(model):
    return {p.name: p for p in model.plans}


def test_suffix_regex_all_linear_and_exclude(make_model):
    m = tp.get_peft_model(make_model("bert"), tp.LoRAConfig(rank=2, target_modules=["query", "value"]))
    names = [n for n, _ in m.adapter_layers()]
    assert names == [f"encoder.layer.{i}.attention.self.{k}" for i in (0, 1) for k in ("query", "value")]

    m = tp.get_peft_model(make_model("bert"), tp.LoRAConfig(rank=2, target_modules=r"encoder\.layer\.1\..*query"))
    assert [n for n, _ in m.adapter_layers()] == ["encoder.layer.1.attention.self.query"]

    g = tp.get_peft_model(make_model("gpt2"), tp.LoRAConfig(rank=2, target_modules="all-linear"))
    names = [n for n, _ in g.adapter_layers()]
    assert len(names) == 8 and "lm_head" not in names  # the output embedding is never adapted

    m = tp.get_peft_model(
        make_model("bert"), tp.LoRAConfig(rank=2, target_modules="all-linear", exclude_modules=["pooler.dense"])
    )
    assert all(not n.startswith("pooler") for n, _ in m.adapter_layers())


@pytest.mark.parametrize(
    ("targets", "words"),
    [
        (["query", "qurey"], ["`target_modules` entry 'qurey'", "matches no module", "'query'"]),
        (["attention"], ["`target_modules`", "BertAttention", "only nn.Linear"]),
        ("nothing.*", ["`target_modules` entry 'nothing.*'", "matches no module"]),
    ],
)
def test_unknown_target_is_a_clear_error_and_model_untouched(make_model, targets, words):
    model = make_model("bert")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as info:
        tp.get_peft_model(model, tp.Tucker2Config(rank=2, target_modules=targets))
    for w in words:
        assert w in str(info.value)
    assert not any(isinstance(m, AdapterLinear) for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())


def test_exclude_everything_is_an_error(make_model):
    with pytest.raises(ValueError, match="leaves no layer to adapt"):
        tp.get_peft_model(make_model("bert"), tp.LoRAConfig(rank=2, target_modules=["query"], exclude_modules=".*"))


def test_rank_exceeding_a_layer_dimension_names_the_stack(make_model):
    model = make_model("llama")
    with pytest.raises(ValueError) as info:
        tp.get_peft_model(model, tp.LoRAConfig(rank=20, target_modules=["k_proj"]))
    msg = str(info.value)
    for w in ["LoRAConfig does not fit stack", "model.layers.0.self_attn.k_proj", "16×32", "`rank`=20", "16"]:
        assert w in msg
    assert not any(isinstance(m, AdapterLinear) for m in model.modules())
    with pytest.raises(ValueError, match=r"rank\[1\]`=40 exceeds `in_features`=32"):
        tp.get_peft_model(make_model("bert"), tp.Tucker2Config(rank=(4, 40), target_modules=["query"]))


def test_adapting_twice_is_an_error(make_model):
    model = make_model("bert")
    peft_model = tp.get_peft_model(model, tp.LoRAConfig(rank=2, target_modules=["query"]))
    with pytest.raises(ValueError, match="already contains tensorpeft adapters"):
        tp.get_peft_model(model, tp.LoRAConfig(rank=2, target_modules=["value"]))
    with pytest.raises(ValueError, match="already contains tensorpeft adapters"):
        tp.get_peft_model(peft_model, tp.LoRAConfig(rank=2, target_modules=["value"]))
    assert "add_adapter" in dir(peft_model)  # the way to a second adapter on the same base


@pytest.mark.parametrize("what", ["adapted model", "peft model", "tuner"])
def test_the_bare_tuner_refuses_an_adapted_model_too(make_model, what):
    model = make_model("bert")
    peft_model = tp.get_peft_model(model, tp.LoRAConfig(rank=2, target_modules=["query"]))
    target = {"adapted model": model, "peft model": peft_model, "tuner": peft_model.base_model}[what]
    before = [(n, type(m)) for n, m in model.named_modules()]
    with pytest.raises(ValueError, match="already contains tensorpeft adapters"):
        tp.nn.TensorPeftModel(target, tp.LoRAConfig(rank=2, target_modules=["value"]))
    assert [(n, type(m)) for n, m in model.named_modules()] == before


def test_stack_by_name_groups_across_layers(make_model):
    m = tp.get_peft_model(make_model("bert"), tp.Tucker2Config(rank=2, target_modules=["query", "value"]))
    p = plans(m)
    assert set(p) == {"encoder_layer_attention_self_query", "encoder_layer_attention_self_value"}
    q = p["encoder_layer_attention_self_query"]
    assert q.stack == (2,) and [i for _, i in q.members] == [(0,), (1,)]


def test_gqa_shapes_go_to_separate_stacks_never_padded(make_model):
    m = tp.get_peft_model(
        make_model("llama"), tp.CPConfig(rank=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    )
    p = plans(m)
    assert set(p) == {"shape_32x32", "shape_16x32"}
    qo, kv = p["shape_32x32"], p["shape_16x32"]
    # LoRTA's layout: (layers, matrix kinds), heads split on the output (head_dim 8)
    assert qo.stack == (2, 2) and kv.stack == (2, 2)
    assert (qo.heads, kv.heads) == (4, 2)
    assert dict(kv.members)["model.layers.1.self_attn.v_proj"] == (1, 1)
    assert m.tensor_adapters["shape_16x32"].format.shape == (2, 2, 16, 32)


def test_stack_by_module_shares_nothing(make_model):
    m = tp.get_peft_model(make_model("bert"), tp.Tucker2Config(rank=2, target_modules=["query"], stack_by="module"))
    assert [p.stack for p in m.plans] == [(), ()]
    assert len({id(layer.stack) for _, layer in m.adapter_layers()}) == 2


def test_shape_grouping_flattens_an_incomplete_grid(make_model):
    # the pooler has no layer index: the 32x32 group is not a (layers, kinds) grid
    m = tp.get_peft_model(make_model("bert"), tp.CPConfig(rank=2, target_modules=["query", "pooler.dense"]))
    assert plans(m)["shape_32x32"].stack == (3,)


def test_cp_heads_auto_fixed_and_off(make_model):
    gpt = tp.get_peft_model(make_model("gpt2"), tp.CPConfig(rank=2, target_modules=["c_attn", "c_fc"]))
    assert {p.name: p.heads for p in gpt.plans} == {"shape_96x32": 12, "shape_128x32": None}  # fused qkv: 3x4 heads
    fixed = tp.get_peft_model(make_model("bert"), tp.CPConfig(rank=2, heads=2, target_modules=["query"]))
    assert fixed.plans[0].heads == 2
    off = tp.get_peft_model(make_model("bert"), tp.CPConfig(rank=2, heads=None, target_modules=["query"]))
    assert off.plans[0].heads is None
    with pytest.raises(ValueError, match=r"`heads`=5 must divide `out_features`=32"):
        tp.get_peft_model(make_model("bert"), tp.CPConfig(rank=2, heads=5, target_modules=["query"]))


def test_plain_torch_model():
    base = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16), torch.nn.Linear(16, 8))
    m = tp.get_peft_model(base, tp.Tucker2Config(rank=2, target_modules=["0", "2", "3"]))
    shapes = sorted((p.out_features, p.in_features, p.stack) for p in m.plans)
    assert shapes == [(8, 16, (1,)), (16, 8, (1,)), (16, 16, (1,))]


def test_configs_and_compression_share_one_selector_check():
    from tensorpeft.nn._selector import ALL_LINEAR, ModuleSelector

    selector = ModuleSelector.of({"value", "query"}, exclude_modules="layer\\.0\\..*")
    assert selector == ModuleSelector(("query", "value"), "layer\\.0\\..*")
    assert ModuleSelector.of(ALL_LINEAR).target_modules == ALL_LINEAR
    with pytest.raises(ValueError, match="`exclude_modules`"):
        ModuleSelector.of(["query"], exclude_modules=ALL_LINEAR + "(")
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    for call in (
        lambda: tp.LoRAConfig(rank=1, target_modules=[""]),
        lambda: tp.compress_low_rank(model, reduction=0.5, target_modules=[""]),
    ):
        with pytest.raises(TypeError, match=r"`target_modules\[0\]` must be a non-empty string, got ''"):
            call()
