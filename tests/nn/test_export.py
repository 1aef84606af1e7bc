import copy
import json

import pytest
import torch

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


def test_export_with_per_module_ranks_uses_rank_pattern(tmp_path):
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16))
    reference = copy.deepcopy(base)
    model = tp.get_peft_model(base, tp.TensorTrainConfig(rank=4, target_modules=["0", "2"]))
    with torch.no_grad():
        for p in model.tensor_adapters.parameters():
            p.normal_()
    report = model.export_lora(tmp_path / "lora")
    assert report.ranks == {"0": 2, "2": 4}
    cfg = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["rank_pattern"] == {"0": 2} and cfg["alpha_pattern"] == {"0": 2}
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

    assert export_lora(_tiny_model(), tmp_path / "a", rank=np.int64(1)).ranks == {"0": 1, "2": 1}
    assert export_lora(_tiny_model(), tmp_path / "b", rank=10**30).ranks == {"0": 2, "2": 2}


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
    with pytest.raises(TypeError, match=r"`model` must be a TensorPeftModel, got Sequential"):
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
