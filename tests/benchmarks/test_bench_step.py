"""Smoke test of benchmarks/bench_step.py's decoder cases (issue 12) on a tiny random LLaMA.

No timing of the real SmolLM2 (minutes, see benchmarks/README.md): the rank choice, the cases, the
memory accounting and one pass through ``main`` with the model loader swapped for a tiny one.
"""

import importlib
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def bs(monkeypatch, tmp_path):
    """The script as a module, writing its JSON under ``tmp_path``; torch's thread count restored after."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the scripts import `_common` as a sibling
    common = importlib.import_module("_common")
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add overhead on a busy machine
    yield importlib.import_module("bench_step")
    torch.set_num_threads(threads)


def tiny_llama():
    """A LlamaModel body with SmolLM2's proportions, shrunk: GQA (4 heads, 2 kv), MLP 2.5× wider."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return transformers.LlamaModel(cfg).eval()


def n_params(bs, model, cfg):
    return sum(fmt.num_params for _, fmt in bs.tp.nn.plan_stacks(model, cfg))


@pytest.mark.parametrize("targets", ["qkvo", "all"])
def test_decoder_configs_are_10x_smaller_than_lora_r8(bs, targets):
    model = tiny_llama()
    cfgs = bs.decoder_configs(model, bs.DECODER_TARGETS[targets])
    lora = n_params(bs, model, cfgs["tp LoRA r=8"])
    assert lora == n_params(bs, model, bs.tp.LoRAConfig(rank=8, target_modules=bs.DECODER_TARGETS[targets]))
    names = set(cfgs) - {"tp LoRA r=8"}
    assert {n.split(" r=")[0] for n in names} >= {"tp Tucker2", "tp CP", "tp TT", "tp LoRA2"}
    if bs.has_stack_by_input():
        assert any(n.endswith(" input") for n in names)
    for name in names:
        cfg = cfgs[name]
        count = n_params(bs, model, cfg)
        if name.startswith("tp LoRA2"):  # its smallest adapter is over the budget: r = k = 1, reported as MISS
            assert cfg.rank == 1
            continue
        assert lora >= bs.FEWER * count, (name, lora, count)
        # the largest such rank: one more is over the budget (or adds nothing)
        bigger = n_params(bs, model, type(cfg)(**{**cfg.to_dict(), "rank": cfg.rank + 1}))
        assert bigger > lora // bs.FEWER or bigger == count, (name, bigger)


def test_largest_rank_is_the_largest_within_budget(bs):
    model = tiny_llama()
    targets = bs.DECODER_TARGETS["qkvo"]

    def make(r):
        return bs.tp.Tucker2Config(rank=r, target_modules=targets)

    counts = {r: n_params(bs, model, make(r)) for r in range(1, 33)}  # k_proj is 32 x 64: rank <= 32
    for budget in (counts[1], counts[3] + 1, counts[7], counts[20] - 1, counts[32] * 2):
        rank, count = bs.largest_rank(model, make, budget)  # ranks above 32 are refused: over any budget
        assert count == counts[rank] <= budget
        assert rank == 32 or counts[rank + 1] > budget
    assert bs.largest_rank(model, make, counts[32], top=5) == (5, counts[5])
    assert bs.largest_rank(model, make, counts[1] - 1) == (1, counts[1])  # over budget even at rank 1


def test_cases_share_targets_and_skip_lm_head(bs):
    model = tiny_llama()
    bs.embedding_grad_hook(model)
    models = bs.build_cases(model, "all", kind="smollm2")
    assert bs.BASE in models and bs.PEFT in models
    names = bs.adapted_names(models[bs.PEFT])
    assert len(names) == 4 * 7 and not any("lm_head" in n for n in names)
    inputs = bs.make_inputs(model, 2, 8, "smollm2")
    assert inputs["use_cache"] is False
    memory = bs.measure_memory(models, inputs, collect=False)
    assert set(memory) == set(models)
    for name, m in memory.items():
        assert m["saved_mb"] > 0 and m["peak_mb"] >= 0, name
    # adapters save more for backward than the frozen base (their inputs and low-rank products)
    assert memory[bs.PEFT]["saved_mb"] > memory[bs.BASE]["saved_mb"]


def test_verdicts(bs):
    assert bs.params_verdict(10.0) == "ok" and bs.params_verdict(9.9) == "MISS"
    assert bs.memory_verdict(100.0, 100.0) == "ok"
    assert bs.memory_verdict(100.0 + bs.MEM_RESOLUTION_MB, 100.0) == "tie"
    assert bs.memory_verdict(102.5, 100.0) == "MISS"


def test_main_on_a_tiny_decoder(bs, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bs, "load_model", lambda kind: tiny_llama())
    argv = ["--models", "smollm2", "--quick", "--rounds", "1", "--infer-rounds", "1", "--no-memory"]
    payload = bs.main([*argv, "--batch", "1", "--seq", "8"])
    out = capsys.readouterr().out
    assert "Training step" in out and "x fewer" in out
    data = json.loads((tmp_path / "bench_step_smollm2_quick.json").read_text())
    step = data["results"]["smollm2"]["qkvo"]["step"]
    assert set(step) == set(payload["results"]["smollm2"]["qkvo"]["step"])
    assert step[bs.PEFT]["fewer_than_lora_r8"] == 1.0
    for name, row in step.items():
        if name.startswith("tp ") and name != "tp LoRA r=8":
            assert row["verdict_params"] == ("MISS" if name.startswith("tp LoRA2") else "ok"), name


def test_unknown_target_set_is_an_error(bs):
    with pytest.raises(SystemExit):
        bs.main(["--models", "smollm2", "--targets", "qv", "--no-json"])
