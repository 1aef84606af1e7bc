import copy
import json
import re

import pytest
import torch
from safetensors.torch import load_file

import tensorpeft as tp
from tensorpeft.nn import export_lora

peft = pytest.importorskip("peft")


def exported(make_model, helpers, tmp_path, kind, fmt, rank=None):
    model = tp.get_peft_model(make_model(kind), helpers.FORMATS[fmt](helpers.TARGETS[kind]))
    helpers.randomize(model)
    report = model.export_lora(tmp_path / "lora", rank=rank)
    return model, report, peft.PeftModel.from_pretrained(make_model(kind), tmp_path / "lora")


EXPECTED_RANK = {"lora": 4, "tucker2": 4, "tucker2_shape": 3, "cp": 4, "orthogonal": 2}


def test_export_loads_in_peft_and_reproduces_outputs(make_model, helpers, ids, tmp_path, kind, fmt):
    model, report, lora = exported(make_model, helpers, tmp_path, kind, fmt)
    with torch.no_grad():
        ours, theirs = helpers.output_of(model(ids)), helpers.output_of(lora(ids))
    assert helpers.rel_err(theirs, ours) <= 1e-5
    assert report.max_error <= 1e-6
    assert set(report.ranks) == {n for n, _ in model.adapter_layers()}
    if fmt in EXPECTED_RANK:
        assert set(report.ranks.values()) == {EXPECTED_RANK[fmt]}
    cfg = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["fan_in_fan_out"] == (kind == "gpt2")


def test_tt_truncated_export_reports_its_error(make_model, helpers, ids, tmp_path):
    model, report, lora = exported(make_model, helpers, tmp_path, "bert", "tt", rank=1)
    assert set(report.ranks.values()) == {1}
    for name, layer in model.adapter_layers():
        delta = layer.stack.delta_weight(layer.index).double()
        A = lora.base_model.model.get_submodule(name).lora_A["default"].weight.detach().double()
        B = lora.base_model.model.get_submodule(name).lora_B["default"].weight.detach().double()
        measured = float((delta - B @ A).norm() / delta.norm())
        assert report.errors[name] == pytest.approx(measured, rel=1e-4)
        # the truncation is the optimal rank-1 approximation: its error is the SVD tail
        s = torch.linalg.svdvals(delta)
        assert measured == pytest.approx(float(s[1:].norm() / s.norm()), rel=1e-4)
    assert report.max_error > 1e-3
    with torch.no_grad():
        assert helpers.rel_err(helpers.output_of(lora(ids)), helpers.output_of(model(ids))) > 1e-6


def test_export_pads_per_module_ranks_to_one_uniform_rank_exactly(tmp_path):
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16))
    reference = copy.deepcopy(base)
    model = tp.get_peft_model(base, tp.TensorTrainConfig(rank=4, target_modules=["0", "2"]))
    with torch.no_grad():
        for p in model.tensor_adapters.parameters():
            p.normal_()
    report = model.export_lora(tmp_path / "lora")
    assert report.ranks == {"0": 2, "2": 4} and report.rank == 4
    assert report.max_error <= 1e-6
    cfg = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 4
    assert "rank_pattern" not in cfg and "alpha_pattern" not in cfg
    tensors = load_file(tmp_path / "lora" / "adapter_model.safetensors")
    A, B = tensors["base_model.model.0.lora_A.weight"], tensors["base_model.model.0.lora_B.weight"]
    assert A.shape == (4, 2) and B.shape == (16, 4)
    assert torch.equal(A[2:], torch.zeros(2, 2)) and torch.equal(B[:, 2:], torch.zeros(16, 2))  # exact zeros
    layer = dict(model.adapter_layers())["0"]
    delta = layer.stack.delta_weight(layer.index).double()
    assert float((B.double() @ A.double() - delta).norm() / delta.norm()) <= 1e-6  # the product is unchanged
    lora = peft.PeftModel.from_pretrained(reference, tmp_path / "lora")
    x = torch.randn(5, 2)
    with torch.no_grad():
        ours, theirs = model(x), lora(x)
    assert float((ours - theirs).norm() / ours.norm()) <= 1e-5


def test_export_rank_must_be_positive(make_model, tmp_path):
    model = tp.get_peft_model(make_model("bert"), tp.LoRAConfig(rank=2, target_modules=["query"]))
    with pytest.raises(ValueError, match=r"`rank` must be a positive integer or None, got 0"):
        model.export_lora(tmp_path / "x", rank=0)
    assert not (tmp_path / "x").exists()


def test_equal_to_peft_lora_given_the_same_weights(make_model, helpers, ids, kind):
    targets = helpers.TARGETS[kind]
    base = make_model(kind)
    theirs = peft.get_peft_model(
        copy.deepcopy(base), peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, fan_in_fan_out=kind == "gpt2")
    )
    ours = tp.get_peft_model(base, tp.LoRAConfig(rank=4, alpha=8, target_modules=targets))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, layer in ours.adapter_layers():
            peft_layer = theirs.base_model.model.get_submodule(name)
            A, B = peft_layer.lora_A["default"].weight, peft_layer.lora_B["default"].weight
            B.copy_(torch.randn(B.shape, generator=gen) * 0.3)  # PEFT's B starts at zero too
            stack = layer.stack
            stack.A.copy_(A.reshape(stack.A.shape))
            stack.B.copy_(B.reshape(stack.B.shape))
        assert helpers.rel_err(helpers.output_of(ours(ids)), helpers.output_of(theirs(ids))) <= 1e-6
    assert ours.get_nb_trainable_parameters() == theirs.get_nb_trainable_parameters()


def _tiny_model():
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8))
    return tp.get_peft_model(base, tp.Tucker2Config(rank=2, target_modules=["0", "2"]))


@pytest.mark.parametrize(
    ("rank", "exc", "match"),
    [
        (2.0, TypeError, r"`rank` must be a positive integer or None, got 2.0 \(float\)"),
        (True, TypeError, r"`rank` must be a positive integer or None, got True"),
        ("2", TypeError, r"`rank` must be a positive integer or None, got '2'"),
        (-(10**30), ValueError, r"`rank` must be a positive integer or None, got -1000000000000000000000000000000"),
    ],
)
def test_export_rank_types(tmp_path, rank, exc, match):
    with pytest.raises(exc, match=match):
        export_lora(_tiny_model(), tmp_path / "x", rank=rank)
    assert not (tmp_path / "x").exists()


def test_export_accepts_numpy_and_huge_ranks(tmp_path):
    import numpy as np

    report = export_lora(_tiny_model(), tmp_path / "a", rank=np.int64(1))
    assert report.ranks == {"0": 1, "2": 1} and report.rank == 1 and type(report.rank) is int
    # a rank above every layer's full rank min(out, in) = 8 is lowered to it: the padding stops there, exact
    report = export_lora(_tiny_model(), tmp_path / "b", rank=10**30)
    assert report.ranks == {"0": 2, "2": 2} and report.rank == 8 and report.max_error <= 1e-6
    assert json.loads((tmp_path / "b" / "adapter_config.json").read_text())["r"] == 8


@pytest.mark.parametrize(
    ("path", "exc", "match"),
    [
        (3, TypeError, r"`path` must be a str or os.PathLike directory, got 3 \(int\)"),
        (None, TypeError, r"`path` must be a str or os.PathLike directory, got None"),
        (b"out", TypeError, r"`path` must be a str or os.PathLike directory, got b'out' \(bytes\)"),
        ("", ValueError, r"`path` must be a non-empty directory name"),
        ("a\x00b", ValueError, r"`path` must be a non-empty directory name without NUL"),
        ("x" * 5000, ValueError, r"`path`='x+' cannot be"),
    ],
)
def test_export_path_types(tmp_path, monkeypatch, path, exc, match):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(exc, match=match):
        export_lora(_tiny_model(), path)
    assert list(tmp_path.iterdir()) == []


def test_export_under_an_existing_file_writes_nothing(tmp_path):
    (tmp_path / "file").write_text("keep")
    for path in (tmp_path / "file", tmp_path / "file" / "sub"):
        with pytest.raises(ValueError, match=r"`path`=.* is not a directory: .* is an existing file"):
            export_lora(_tiny_model(), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"] and (tmp_path / "file").read_text() == "keep"


def test_export_model_must_be_a_live_tensor_peft_model(tmp_path):
    with pytest.raises(TypeError, match=r"`model` must be a peft.PeftModel of a tensorpeft adapter .*; got Sequential"):
        export_lora(torch.nn.Sequential(torch.nn.Linear(2, 2)), tmp_path / "x")
    model = _tiny_model()
    model.unload()
    with pytest.raises(ValueError, match=r"`model` was unloaded"):
        export_lora(model, tmp_path / "x")
    assert not (tmp_path / "x").exists()


class SharedRight(tp.decomp.TensorNetwork):
    """``ΔW_s = U_s V`` (V shared), a custom format that answers its own slice rank and LoRA factors."""

    def __init__(self, stack, out_features, in_features, rank):
        s = "l" * len(stack)
        sizes = {"o": out_features, "r": rank, "i": in_features} | ({"l": stack[0]} if stack else {})
        super().__init__(f"{s}or,ri->{s}oi", sizes, stack_indices=s, out_indices="o", in_indices="i",
                         factor_names=("U", "V"), zero_factor="U")  # fmt: skip
        self.rank = rank

    @property
    def slice_rank(self):
        return self.rank

    def lora_factors(self, factors, index=()):
        return factors["U"][tuple(index)], factors["V"]


def test_export_asks_a_custom_format_for_its_lora_factors(tmp_path):
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16))
    reference = copy.deepcopy(base)
    config = tp.CustomConfig(factory=SharedRight, rank=2, target_modules=["0", "2"])
    model = tp.get_peft_model(base, config)
    with torch.no_grad():
        for p in model.tensor_adapters.parameters():
            p.normal_()
    report = model.export_lora(tmp_path / "lora")
    assert set(report.ranks.values()) == {2}  # the format's width, not the SVD's min(16, 16)
    assert report.max_error <= 1e-6
    lora = peft.PeftModel.from_pretrained(reference, tmp_path / "lora")
    x = torch.randn(5, 16)
    with torch.no_grad():
        ours, theirs = model(x), lora(x)
    assert float((ours - theirs).norm() / ours.norm()) <= 1e-5


# --- the rules the servers check -----------------------------------------------------------------------------
# vLLM (vllm/lora/peft_helper.py, lora_model.py): adapter_config.json needs `r`, `lora_alpha`, `target_modules`;
# r <= --max-lora-rank; modules_to_save must be None; no DoRA; bias "none"; scaling lora_alpha / r (rank_pattern
# and alpha_pattern are not read); every tensor `base_model.model.<module>.lora_A.weight` / `.lora_B.weight`
# whose last name part is a supported module. llama.cpp (convert_lora_to_gguf.py): one global float `lora_alpha`,
# the scale of a tensor pair is alpha / its own rank; only lora_A/lora_B tensors (else it exits), in A/B pairs of
# matching inner rank, each naming a weight of the base model.

LORA_KEY = re.compile(r"base_model\.model\.(?P<module>.+)\.lora_(?P<ab>[AB])\.weight")


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=128)  # fmt: skip
    return LlamaForCausalLM(cfg).eval()  # GQA: k_proj, v_proj are 32x64, q_proj, o_proj 64x64


SERVER_MODELS = {
    "bert": ("bert", ["query", "key", "value", "output.dense", "intermediate.dense"]),
    "llama_gqa": (_tiny_llama, ["q_proj", "k_proj", "v_proj", "o_proj"]),
}


def _by_width(stack, out_features, in_features, rank):
    """A custom format whose rank depends on the layer: ``rank · out / 32`` (so k/v and q/o differ)."""
    return SharedRight(stack, out_features, in_features, max(1, rank * out_features // 32))


SERVER_FORMATS = {
    "lora": lambda t: tp.LoRAConfig(rank=4, alpha=8, target_modules=t),
    "tucker2": lambda t: tp.Tucker2Config(rank=(3, 4), alpha=8, target_modules=t, stack_by="shape"),
    "cp": lambda t: tp.CPConfig(rank=4, target_modules=t),
    "lora2": lambda t: tp.LoRA2Config(rank=2, inner=4, target_modules=t),
    "tt": lambda t: tp.TensorTrainConfig(rank=48, alpha=2.0, target_modules=t),  # bonds capped per layer
    "custom": lambda t: tp.CustomConfig(factory=_by_width, rank=2, target_modules=t),
}


def check_server_rules(directory, base, report, modules_to_save=()):
    """Assert the written files pass the checks of vLLM, llama.cpp's converter and PEFT; return the config."""
    cfg = json.loads((directory / "adapter_config.json").read_text())
    tensors = load_file(directory / "adapter_model.safetensors")
    assert sorted(p.name for p in directory.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    r = cfg["r"]
    assert type(r) is int and r == report.rank >= 1
    assert cfg["lora_alpha"] == r  # every server's scaling is alpha / r = 1
    assert "rank_pattern" not in cfg and "alpha_pattern" not in cfg
    assert cfg["peft_type"] == "LORA" and cfg["bias"] == "none" and not cfg["use_dora"] and not cfg["use_rslora"]
    assert (cfg["modules_to_save"] or []) == sorted(modules_to_save)
    base_modules = dict(base.named_modules())
    base_weights = base.state_dict()
    pairs = {}
    for key, tensor in tensors.items():
        assert tensor.dtype == torch.float32 and tensor.is_contiguous()
        match = LORA_KEY.fullmatch(key)
        if match is None:  # only a module asked for in modules_to_save
            name = key.removeprefix("base_model.model.")
            assert key.startswith("base_model.model.") and name.rsplit(".", 1)[0] in modules_to_save, key
            assert base_weights[name].shape == tensor.shape
            continue
        pairs.setdefault(match["module"], {})[match["ab"]] = tensor
    assert set(pairs) == set(cfg["target_modules"]) == set(report.ranks) == set(report.errors)
    for name, ab in pairs.items():
        layer = base_modules[name]  # names match the base model's modules
        assert type(layer) is torch.nn.Linear, name
        assert f"{name}.weight" in base_weights  # llama.cpp: the tensor name with lora_A/lora_B removed
        A, B = ab["A"], ab["B"]  # both of the pair
        assert A.shape == (r, layer.in_features) and B.shape == (layer.out_features, r), name
        k = report.ranks[name]
        assert 1 <= k <= r
        assert torch.equal(A[k:], torch.zeros_like(A[k:])) and torch.equal(B[:, k:], torch.zeros_like(B[:, k:]))
    return cfg


def _randomized(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.tensor_adapters.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) * 0.3)
    return model


def _output(result):
    return result if isinstance(result, torch.Tensor) else result[0]


@pytest.mark.parametrize("server_fmt", list(SERVER_FORMATS))
@pytest.mark.parametrize("model_kind", list(SERVER_MODELS))
def test_export_follows_the_servers_rules(make_model, ids, tmp_path, model_kind, server_fmt):
    make, targets = SERVER_MODELS[model_kind]
    fresh = (lambda: make_model(make)) if isinstance(make, str) else make
    model = _randomized(tp.get_peft_model(fresh(), SERVER_FORMATS[server_fmt](targets)))
    report = model.export_lora(tmp_path / "lora")
    base = fresh()
    check_server_rules(tmp_path / "lora", base, report)
    assert report.rank == max(report.ranks.values())
    assert report.max_error <= 1e-6  # exact: closed forms (LoRA, Tucker-2, CP, LoRA²), the slice's SVD (TT, custom)
    if model_kind == "llama_gqa" and server_fmt in ("tt", "custom"):
        # k/v (32x64) and q/o (64x64) have different ranks: the smaller are zero-padded to one r
        assert len(set(report.ranks.values())) == 2
    tensors = load_file(tmp_path / "lora" / "adapter_model.safetensors")
    for name, layer in model.adapter_layers():  # B A of the file = scaling · ΔW (scaling 1 on every server)
        delta = layer.stack.delta_weight(layer.index).double()
        A, B = (tensors[f"base_model.model.{name}.lora_{ab}.weight"].double() for ab in "AB")
        assert float((B @ A - delta).norm() / delta.norm()) <= 1e-6 and float(delta.norm()) > 0
    lora = peft.PeftModel.from_pretrained(base, tmp_path / "lora")
    with torch.no_grad():
        ours, theirs = _output(model(ids)).double(), _output(lora(ids)).double()
    assert float((theirs - ours).norm() / ours.norm()) <= 1e-5


@pytest.mark.parametrize("rank", [1, 40, 64])
def test_export_rank_sets_the_uniform_rank(ids, tmp_path, rank):
    """``rank=`` truncates the layers above it (their SVD tail) and zero-pads those below (exactly)."""
    model = _randomized(tp.get_peft_model(_tiny_llama(), SERVER_FORMATS["tt"](SERVER_MODELS["llama_gqa"][1])))
    natural = {n: int(layer.stack.format.slice_rank) for n, layer in model.adapter_layers()}
    assert set(natural.values()) == {32, 48}
    report = model.export_lora(tmp_path / "lora", rank=rank)
    base = _tiny_llama()
    check_server_rules(tmp_path / "lora", base, report)
    assert report.rank == rank and report.ranks == {n: min(k, rank) for n, k in natural.items()}
    for name, layer in model.adapter_layers():
        s = torch.linalg.svdvals(layer.stack.delta_weight(layer.index).double())
        tail = float(s[rank:].norm() / s.norm())  # the optimal rank-`rank` error (0 when not truncated)
        assert report.errors[name] == pytest.approx(tail, rel=1e-3, abs=1e-6)
    lora = peft.PeftModel.from_pretrained(base, tmp_path / "lora")
    for name, layer in model.adapter_layers():  # PEFT's loaded update is off by exactly the reported error
        delta = layer.stack.delta_weight(layer.index).double()
        theirs = lora.base_model.model.get_submodule(name).get_delta_weight("default").double()
        assert float((theirs - delta).norm() / delta.norm()) == pytest.approx(report.errors[name], rel=1e-3, abs=1e-6)
    with torch.no_grad():
        ours, theirs = _output(model(ids)).double(), _output(lora(ids)).double()
    err = float((theirs - ours).norm() / ours.norm())
    if rank >= 48:
        assert report.max_error <= 1e-6 and err <= 1e-5
    else:
        assert report.max_error > 1e-3 and err > 1e-6


def _tiny_bert_classifier(seed=0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                     vocab_size=100, num_labels=3)  # fmt: skip
    return BertForSequenceClassification(cfg).eval()


def test_export_modules_to_save_only_when_asked(ids, tmp_path):
    model = tp.get_peft_model(_tiny_bert_classifier(), tp.Tucker2Config(rank=4, target_modules=["query", "value"],
                                                                         task_type="SEQ_CLS"))  # fmt: skip
    _randomized(model)
    head = model.base_model.model.classifier.modules_to_save["default"]
    with torch.no_grad():  # a trained head, different from the base's
        head.weight.normal_()
        head.bias.normal_()
    report = model.export_lora(tmp_path / "plain")
    cfg = check_server_rules(tmp_path / "plain", _tiny_bert_classifier(), report)
    assert cfg["modules_to_save"] is None  # vLLM refuses anything else
    assert all(LORA_KEY.fullmatch(k) for k in load_file(tmp_path / "plain" / "adapter_model.safetensors"))

    for exporter in (model.export_lora, lambda p, **kw: export_lora(model, p, **kw)):  # tuner and PeftModel
        report = exporter(tmp_path / "heads", modules_to_save=True)
        cfg = check_server_rules(tmp_path / "heads", _tiny_bert_classifier(), report, modules_to_save=["classifier"])
        tensors = load_file(tmp_path / "heads" / "adapter_model.safetensors")
        assert torch.equal(tensors["base_model.model.classifier.weight"], head.weight.detach())
        assert torch.equal(tensors["base_model.model.classifier.bias"], head.bias.detach())
        lora = peft.PeftModel.from_pretrained(_tiny_bert_classifier(), tmp_path / "heads")
        with torch.no_grad():
            ours, theirs = model(ids).logits, lora(ids).logits
        assert float((theirs - ours).norm() / ours.norm()) <= 1e-5

    plain = tp.get_peft_model(torch.nn.Sequential(torch.nn.Linear(4, 4)), tp.LoRAConfig(rank=2, target_modules=["0"]))
    with pytest.raises(ValueError, match=r"`modules_to_save`=True, but this model has no modules_to_save"):
        plain.export_lora(tmp_path / "none", modules_to_save=True)
    assert not (tmp_path / "none").exists()


def _written_name(directory):
    return json.loads((directory / "adapter_config.json").read_text())["base_model_name_or_path"]


def test_export_fills_base_model_name_or_path(make_model, tmp_path):
    from transformers import AutoModel

    def lora(base):
        return tp.get_peft_model(base, tp.LoRAConfig(rank=2, target_modules=["query"]))

    make_model("bert").save_pretrained(tmp_path / "base")
    model = lora(AutoModel.from_pretrained(tmp_path / "base"))
    model.export_lora(tmp_path / "a")
    assert _written_name(tmp_path / "a") == str(tmp_path / "base")  # what the servers load the base from
    peft.PeftModel.from_pretrained(AutoModel.from_pretrained(_written_name(tmp_path / "a")), tmp_path / "a")

    model.export_lora(tmp_path / "b", base_model_name_or_path="org/tiny-bert")  # explicit wins
    assert _written_name(tmp_path / "b") == "org/tiny-bert"

    base = make_model("bert")  # built from a config: no name until one is set on its config
    assert not base.name_or_path
    base.config._name_or_path = "org/from-config"
    lora(base).export_lora(tmp_path / "c")
    assert _written_name(tmp_path / "c") == "org/from-config"
    lora(make_model("bert")).export_lora(tmp_path / "d")
    assert _written_name(tmp_path / "d") is None
