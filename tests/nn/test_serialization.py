import json
import os

import pytest
import torch

import tensorpeft as tp
from tensorpeft.nn import AdapterLinear


def saved(make_model, helpers, tmp_path, kind="bert", fmt="tucker2"):
    model = tp.get_peft_model(make_model(kind), helpers.FORMATS[fmt](helpers.TARGETS[kind]))
    helpers.randomize(model)
    path = tmp_path / "adapter"
    model.save_pretrained(path)
    return model, path


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_untouched(model, before):
    assert not any(isinstance(m, AdapterLinear) for m in model.modules())
    state = model.state_dict()
    assert state.keys() == before.keys() and all(torch.equal(before[k], state[k]) for k in before)
    assert all(p.requires_grad for p in model.parameters())


def test_round_trip_is_bit_exact(make_model, helpers, ids, tmp_path, fmt):
    model, path = saved(make_model, helpers, tmp_path, fmt=fmt)
    assert sorted(os.listdir(path)) == ["adapter_config.json", "adapter_model.safetensors"]
    loaded = tp.TensorPeftModel.from_pretrained(make_model("bert"), path)
    assert loaded.peft_config == model.peft_config
    for name, stack in model.tensor_adapters.items():
        for fname, p in stack.factors().items():
            q = loaded.tensor_adapters[name].factors()[fname]
            assert torch.equal(p, q) and p.dtype == q.dtype
            assert not q.requires_grad
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(helpers.output_of(loaded(ids)), helpers.output_of(model(ids)))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_round_trip_other_architectures_trainable(make_model, helpers, ids, tmp_path, arch):
    model, path = saved(make_model, helpers, tmp_path, kind=arch, fmt="cp")
    loaded = tp.TensorPeftModel.from_pretrained(make_model(arch), path, is_trainable=True)
    assert all(p.requires_grad for p in loaded.tensor_adapters.parameters())
    with torch.no_grad():
        assert torch.equal(helpers.output_of(loaded(ids)), helpers.output_of(model(ids)))


def test_failed_save_leaves_the_previous_adapter_intact(make_model, helpers, tmp_path, monkeypatch):
    model, path = saved(make_model, helpers, tmp_path)
    before = {f: (path / f).read_bytes() for f in os.listdir(path)}
    helpers.randomize(model, seed=5)

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(path)
    assert {f: (path / f).read_bytes() for f in os.listdir(path)} == before  # no temp files, nothing replaced


@pytest.mark.parametrize(
    ("other", "words"),
    [
        ({"hidden_size": 48, "num_attention_heads": 4}, ["`out_features`=32", "48", "another shape"]),
        ({"layers": 3}, ["`stack`=(2,)", "(3,)", "another shape"]),
    ],
)
def test_loading_onto_a_model_of_another_shape(make_model, helpers, tmp_path, other, words):
    from transformers import BertConfig, BertModel

    _, path = saved(make_model, helpers, tmp_path)
    layers = other.pop("layers", 2)
    cfg = {"hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64, "vocab_size": 100} | other
    target = BertModel(BertConfig(num_hidden_layers=layers, **cfg))
    before = snapshot(target)
    with pytest.raises(ValueError) as info:
        tp.TensorPeftModel.from_pretrained(target, path)
    for w in words:
        assert w in str(info.value)
    assert_untouched(target, before)


def test_loading_onto_another_architecture(make_model, helpers, tmp_path):
    _, path = saved(make_model, helpers, tmp_path)
    target = make_model("gpt2")
    before = snapshot(target)
    with pytest.raises(ValueError, match="`target_modules` entry 'query' matches no module of GPT2LMHeadModel"):
        tp.TensorPeftModel.from_pretrained(target, path)
    assert_untouched(target, before)


def corrupt_payload(file):
    data = bytearray(file.read_bytes())
    data[-3] ^= 0xFF  # a byte inside the last tensor
    file.write_bytes(bytes(data))


def corrupt_header(file):
    data = bytearray(file.read_bytes())
    data[8:12] = b"\x00\xff{]"
    file.write_bytes(bytes(data))


def truncate(file):
    data = file.read_bytes()
    file.write_bytes(data[: len(data) - 40])


def empty(file):
    file.write_bytes(b"")


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (corrupt_payload, ["does not match the checksum", "corrupted"]),
        (corrupt_header, ["corrupted or truncated"]),
        (truncate, ["corrupted or truncated"]),
        (empty, ["corrupted or truncated"]),
    ],
)
def test_damaged_safetensors_file(make_model, helpers, tmp_path, damage, words):
    _, path = saved(make_model, helpers, tmp_path)
    damage(path / "adapter_model.safetensors")
    target = make_model("bert")
    before = snapshot(target)
    with pytest.raises(ValueError) as info:
        tp.TensorPeftModel.from_pretrained(target, path)
    for w in words:
        assert w in str(info.value)
    assert "adapter_model.safetensors" in str(info.value)
    assert_untouched(target, before)


def edit_config(path, edit):
    file = path / "adapter_config.json"
    meta = json.loads(file.read_text())
    edit(meta)
    file.write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("damage", "exc", "words"),
    [
        (lambda p: (p / "adapter_config.json").unlink(), ValueError, ["has no adapter_config.json"]),
        (lambda p: (p / "adapter_model.safetensors").unlink(), ValueError, ["has no adapter_model.safetensors"]),
        (lambda p: (p / "adapter_config.json").write_text("{not json"), ValueError, ["is not valid JSON"]),
        (
            lambda p: edit_config(p, lambda m: m.update(peft_type="LORA")),
            ValueError,
            ["`peft_type`='TENSORPEFT'", "'LORA'"],
        ),
        (
            lambda p: edit_config(p, lambda m: m["config"].update(rank=0)),
            ValueError,
            ["`rank` must be a positive integer, got 0"],
        ),
        (lambda p: edit_config(p, lambda m: m["config"].update(rank=3)), ValueError, ["has shape", "expected"]),
        (
            lambda p: edit_config(p, lambda m: m["stacks"][0].update(name="renamed")),
            ValueError,
            ["'renamed'", "another model"],
        ),
        (lambda p: edit_config(p, lambda m: m.pop("sha256")), ValueError, ["lacks the 'sha256' entry"]),
    ],
)
def test_bad_adapter_directory(make_model, helpers, tmp_path, damage, exc, words):
    _, path = saved(make_model, helpers, tmp_path)
    damage(path)
    target = make_model("bert")
    before = snapshot(target)
    with pytest.raises(exc) as info:
        tp.TensorPeftModel.from_pretrained(target, path)
    for w in words:
        assert w in str(info.value)
    assert_untouched(target, before)


def test_missing_directory(make_model, tmp_path):
    with pytest.raises(ValueError, match="is not a directory"):
        tp.TensorPeftModel.from_pretrained(make_model("bert"), tmp_path / "nope")
