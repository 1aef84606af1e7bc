"""``torch.compile`` of adapted models: no graph breaks from the adapters, same numbers as eager.

The default backend here is ``"aot_eager"``: Dynamo captures the graph and AOTAutograd builds the joint
forward/backward graph (the parts where graph breaks and recompiles come from), then runs it with eager
kernels. ``"inductor"`` (the default of ``torch.compile``) works too, but on a 2-core CPU it needs about
1.5 minutes per model to generate and build its C++ kernels, so its tests are marked ``slow``.
See ``docs/guide/compile.rst``.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import tensorpeft as tp

pytest.importorskip("transformers")

TARGETS = ["query", "key", "value", "output.dense", "intermediate.dense"]
# One config per built-in kernel (named ``adapter``: conftest parametrizes ``fmt`` over its own configs).
# Tucker-2 grouped by shape so q, k and v share ``x·B`` (the eager cache is active in the reference
# run); TT goes through the generic kernel (the core's contraction eagerly, one einsum compiled).
FORMATS = {
    "lora": lambda: tp.LoRAConfig(rank=4, alpha=8, target_modules=TARGETS),
    "tucker2_shape": lambda: tp.Tucker2Config(rank=4, target_modules=TARGETS, stack_by="shape"),
    "cp": lambda: tp.CPConfig(rank=4, target_modules=TARGETS),
    "tt": lambda: tp.TensorTrainConfig(rank=3, target_modules=TARGETS),
    "orthogonal": lambda: tp.OrthogonalConfig(rank=2, target_modules=TARGETS),
}
TOL = 1e-5  # max absolute difference; outputs are LayerNorm'd (entries O(1)), factors O(0.1)
BACKEND = "aot_eager"


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles new models: start from empty Dynamo caches (no cross-test recompile limit)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        hidden_size=32,
        num_hidden_layers=1,  # one layer holds every case (q/k/v sharing, MLP) at half the trace time
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=100,
        hidden_dropout_prob=0.0,  # deterministic in train mode: compiled and eager steps see one function
        attention_probs_dropout_prob=0.0,
    )
    return BertModel(cfg)


def _adapted(adapter):
    """The tiny BERT with the ``adapter`` config, every trainable factor moved off its init (ΔW != 0)."""
    model = tp.get_peft_model(_bert(), FORMATS[adapter]())
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


def _trainable(model):
    return [p for p in model.parameters() if p.requires_grad]


def _max_abs(a, b) -> float:
    return float((a.detach() - b.detach()).abs().max())


def _graphs_and_breaks(model, ids):
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(input_ids=ids)
    return explained.graph_count, explained.graph_break_count, [str(r.reason) for r in explained.break_reasons]


@pytest.fixture(scope="module")
def ids():
    """Token ids of two sequences of 7 (module-scoped, for :func:`base_graphs`)."""
    return torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def base_graphs(ids):
    """``(graphs, breaks, reasons)`` of the plain BERT, measured once (1 graph, 0 breaks with transformers 5.24)."""
    return _graphs_and_breaks(_bert().eval(), ids)


def _train_steps(model, ids, steps=2):
    """``steps`` SGD steps on a toy loss; returns the first step's output."""
    opt = torch.optim.SGD(_trainable(model), lr=0.1)
    first = None
    for _ in range(steps):
        out = model(input_ids=ids).last_hidden_state
        first = out.detach() if first is None else first
        out.pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    return first


# The train-step test below also asserts one graph per format; explain() (its reasons on failure) runs
# by default on the sharing cache's format, the one that broke the graph 36 times before.
FAST = ("tucker2_shape",)


@pytest.mark.parametrize("adapter", [a if a in FAST else pytest.param(a, marks=pytest.mark.slow) for a in FORMATS])
def test_adapter_adds_no_graph_breaks(adapter, ids, base_graphs):
    """Documented: 0 graph breaks from the adapter code (the base BERT itself compiles as 1 graph, 0 breaks)."""
    graphs, breaks, reasons = _graphs_and_breaks(_adapted(adapter).eval(), ids)
    assert breaks - base_graphs[1] == 0, reasons
    assert graphs == base_graphs[0]


@pytest.mark.parametrize("adapter", list(FORMATS))
def test_compiled_train_step_matches_eager(adapter, ids):
    """Forward ≤ 1e-5 and two SGD steps ≤ 1e-5 (max abs) against the same steps on an identical eager copy."""
    eager, compiled = _adapted(adapter).train(), _adapted(adapter).train()
    base = _bert().eval()(input_ids=ids).last_hidden_state
    counter = CompileCounterWithBackend(BACKEND)
    run = torch.compile(compiled, backend=counter)

    want = _train_steps(eager, ids, steps=1)
    assert _max_abs(want, base) > 1e-3  # the adapter changes the output: the comparison below means something
    got = _train_steps(run, ids, steps=1)
    assert _max_abs(got, want) <= TOL
    assert counter.frame_count == 1  # one graph: no break (as the plain BERT) and no recompile
    # the second step must reuse the compiled graphs: the factors changed in place (``_version``), nothing else
    _train_steps(eager, ids, steps=1)
    with torch.compiler.set_stance("fail_on_recompile"):
        _train_steps(run, ids, steps=1)
    assert counter.frame_count == 1
    for p, q in zip(_trainable(compiled), _trainable(eager), strict=True):
        assert _max_abs(p, q) <= TOL


def test_new_sequence_lengths_compile_once_more():
    """Lengths 7, 9, 11: one recompile (Dynamo's automatic dynamic shapes), then none; the tensor train's
    contraction plan is fixed at trace time, so it does not pin the token count."""
    model = _adapted("tt").eval()
    counter = CompileCounterWithBackend(BACKEND)
    run = torch.compile(model, backend=counter)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for length in (7, 9, 11):
            ids = torch.randint(0, 100, (2, length), generator=gen)
            assert _max_abs(run(input_ids=ids).last_hidden_state, model(input_ids=ids).last_hidden_state) <= TOL
    assert counter.frame_count == 2


def test_merged_model_compiles_as_the_base(ids, base_graphs):
    """After ``merge_adapter`` the forward is the base model's: same graph count, same output as eager."""
    model = _adapted("tucker2_shape").eval()
    model.merge_adapter()
    graphs, breaks, reasons = _graphs_and_breaks(model, ids)
    assert (graphs, breaks) == base_graphs[:2], reasons
    torch._dynamo.reset()
    with torch.no_grad():
        want = model(input_ids=ids).last_hidden_state
        got = torch.compile(model, backend=BACKEND)(input_ids=ids).last_hidden_state
    assert _max_abs(got, want) <= TOL


@pytest.mark.slow
@pytest.mark.filterwarnings(
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
)  # torch importing inductor
@pytest.mark.parametrize("adapter", ["tucker2_shape", "tt"])
def test_inductor_train_step_matches_eager(adapter, ids):
    """The default backend (C++ kernels on CPU): forward and one SGD step ≤ 1e-5 (max abs)."""
    eager, compiled = _adapted(adapter).train(), _adapted(adapter).train()
    want = _train_steps(eager, ids, steps=1)
    got = _train_steps(torch.compile(compiled, backend="inductor"), ids, steps=1)
    assert _max_abs(got, want) <= TOL
    for p, q in zip(_trainable(compiled), _trainable(eager), strict=True):
        assert _max_abs(p, q) <= TOL
