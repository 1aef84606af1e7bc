"""Fuzz every public entry point of ``tensorpeft.nn`` that takes user arguments.

Each call gets garbage (ints, huge ints, floats, NaN/inf, None, bools, strings, numpy scalars and
arrays, torch dtypes and tensors, wrong-length tuples, lists, dicts) in one argument or several. Only
a ``ValueError``/``TypeError`` whose message names an argument in backticks may escape, and a failed
call must leave the model (state-dict keys and bytes, ``requires_grad`` flags, module types) and the
files it was to write untouched. A call that succeeds must give a model whose output is the base's.

Counts (calls, accepted calls, exception types, calls that changed state) are kept in :data:`COUNTS`
and written as JSON to the file named by the environment variable ``TENSORPEFT_FUZZ_COUNTS``, e.g.
``HYPOTHESIS_PROFILE=thorough TENSORPEFT_FUZZ_COUNTS=/tmp/fuzz.json pytest tests/nn/test_fuzz.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import numbers
import os
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import peft
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tensorpeft as tp
from tensorpeft import decomp

COUNTS: Counter = Counter()

CONFIGS = [tp.LoRAConfig, tp.Tucker2Config, tp.CPConfig, tp.TensorTrainConfig, tp.OrthogonalConfig, tp.CustomConfig]
VALID = {cls: {"target_modules": ["0", "2"], "rank": 2} for cls in CONFIGS}
VALID[tp.CustomConfig]["factory"] = decomp.LoRA
# The fields the PEFT integration added: PEFT's own (task_type, revision, ...) and `format`/`tensorpeft`.
PEFT_FIELD_NAMES = {f.name for f in dataclasses.fields(peft.PeftConfig)} | {"format", "tensorpeft"}
FIELDS = [(cls, f.name) for cls in CONFIGS for f in dataclasses.fields(cls) if f.name not in PEFT_FIELD_NAMES]
PEFT_FIELDS = [(cls, f.name) for cls in CONFIGS for f in dataclasses.fields(cls) if f.name in PEFT_FIELD_NAMES]


@pytest.fixture(scope="module", autouse=True)
def _dump_counts():
    """Write :data:`COUNTS` to ``$TENSORPEFT_FUZZ_COUNTS`` once the module's tests are done."""
    yield
    path = os.environ.get("TENSORPEFT_FUZZ_COUNTS")
    if path:
        summary = dict(sorted(COUNTS.items()))
        summary["distinct exception types"] = sorted(k.split(" ", 1)[1] for k in COUNTS if k.startswith("raised "))
        Path(path).write_text(json.dumps(summary, indent=2) + "\n")


# ---------------------------------------------------------------------- garbage
SPECIAL_NUMBERS = [2**31, 2**31 + 1, 2**40, 2**63, 2**64, 10**20, -(10**20), 1e308, -1e308, 1e-300, 0.0, -0.0, 0.5]
NUMPY_SCALARS = [np.int64(2), np.int32(-1), np.uint8(3), np.float32(0.5), np.float64(np.nan), np.bool_(True)]
TORCH_THINGS = [torch.float64, torch.float32, torch.bfloat16, torch.int64, torch.tensor(2), torch.tensor([0.1, 0.2])]
WORDS = ["auto", "name", "shape", "module", "zero", "svd", "all-linear", "0", "2", "query", "(", ".*", "", " "]

scalars = st.one_of(
    st.integers(-3, 40),
    st.sampled_from(SPECIAL_NUMBERS),
    st.floats(allow_nan=True, allow_infinity=True),
    st.none(),
    st.booleans(),
    st.text(st.characters(exclude_characters=":"), max_size=6),  # no "module:function" to import
    st.sampled_from(WORDS),
    st.sampled_from(NUMPY_SCALARS),
    st.sampled_from(TORCH_THINGS),
    st.just(np.array([2, 4])),
    st.just(b"0"),
)
garbage = st.one_of(
    scalars,
    st.tuples(),
    st.lists(st.integers(-2, 20), max_size=4).map(tuple),
    st.lists(scalars, max_size=3),
    st.dictionaries(st.sampled_from(["0", "r", 1]), scalars, max_size=2),
    st.frozensets(st.sampled_from(["0", "2", 3]), max_size=2),
)


def half(valid, invalid=garbage):
    """``valid`` in half of the examples (``st.one_of`` would flatten it into one of many branches)."""
    return st.booleans().flatmap(lambda ok: valid if ok else invalid)


# ---------------------------------------------------------------------- state and calls
def _bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def model_state(model: torch.nn.Module):
    """State-dict keys, dtypes and bytes, ``requires_grad`` flags and module types."""
    return (
        [(k, v.dtype, tuple(v.shape), _bytes(v)) for k, v in model.state_dict().items()],
        [(n, p.requires_grad) for n, p in model.named_parameters()],
        [(n, type(m).__name__) for n, m in model.named_modules()],
    )


def files_state(root: Path):
    """Every path under ``root`` with the bytes of its files."""
    return sorted((str(p.relative_to(root)), p.read_bytes() if p.is_file() else None) for p in root.rglob("*"))


def attempt(label: str, fn, watched=(), names=None):
    """Call ``fn()``: return its result, or the ValueError/TypeError it raised.

    Checks that the error names an argument (one of ``names`` if given) and that every ``watched()``
    state is unchanged; any other exception propagates and fails the test.
    """
    before = [w() for w in watched]
    COUNTS["calls"] += 1
    COUNTS[f"calls {label}"] += 1
    try:
        result = fn()
    except (ValueError, TypeError) as exc:
        COUNTS[f"raised {type(exc).__name__}"] += 1
        changed = [w() for w in watched] != before
        COUNTS["changed state"] += int(changed)
        assert not changed, f"{label}: a failed call changed state ({exc})"
        message = str(exc)
        assert "`" in message, f"{label}: the message names no argument: {message}"
        if names is not None:
            assert any(f"`{n}" in message for n in names), f"{label}: expected one of {names} in: {message}"
        return exc
    except Exception as exc:
        COUNTS[f"raised {type(exc).__name__}"] += 1
        COUNTS["escaped"] += 1
        raise
    COUNTS["accepted"] += 1
    COUNTS[f"accepted {label}"] += 1
    return result


def mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8))


X = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))


def wrap_and_check(base, config, x, label="get_peft_model"):
    """``get_peft_model`` of a valid config: refused cleanly, or a model equal to the base at init."""
    with torch.no_grad():
        reference = base(**x) if isinstance(x, dict) else base(x)
    out = attempt(label, lambda: tp.get_peft_model(base, config), [lambda: model_state(base)])
    if isinstance(out, Exception):
        return None
    with torch.no_grad():
        got = out(**x) if isinstance(x, dict) else out(x)
    got = got if isinstance(got, torch.Tensor) else got.last_hidden_state
    reference = reference if isinstance(reference, torch.Tensor) else reference.last_hidden_state
    assert torch.equal(got, reference), "ΔW must be exactly zero at init"
    return out


# ---------------------------------------------------------------------- configs and get_peft_model
@given(field=st.sampled_from(FIELDS), value=garbage)
def test_config_field(field, value):
    check_config_field(field, value)


# A valid name of a base model that the wrapped model (no `name_or_path`) does not have: PEFT warns, harmlessly.
@pytest.mark.filterwarnings("ignore:The PEFT config's `base_model_name_or_path` was renamed:UserWarning")
@given(field=st.sampled_from(PEFT_FIELDS), value=garbage)
def test_config_peft_field(field, value):
    """The fields of every ``peft.PeftConfig`` (``task_type``, ``revision``, ...), ``format`` and ``tensorpeft`` too."""
    check_config_field(field, value)


def check_config_field(field, value):
    cls, name = field
    kwargs = VALID[cls] | {name: value}
    cfg = attempt(f"{cls.__name__}", lambda: cls(**kwargs), names=[name])
    if not isinstance(cfg, Exception):
        assert tp.AdapterConfig.from_json(cfg.to_json(), trust_custom_factories=True) == cfg
        wrap_and_check(mlp(), cfg, X)


@given(
    cls=st.sampled_from(CONFIGS),
    values=st.fixed_dictionaries(
        {},
        optional={
            "rank": garbage,
            "alpha": garbage,
            "dropout": garbage,
            "stack_by": garbage,
            "init": garbage,
            "seed": garbage,
            "target_modules": garbage,
            "exclude_modules": garbage,
        },
    ),
)
def test_config_several_fields(cls, values):
    kwargs = VALID[cls] | values
    cfg = attempt(cls.__name__, lambda: cls(**kwargs))
    if not isinstance(cfg, Exception):
        wrap_and_check(mlp(), cfg, X)


@given(model=garbage, config=garbage)
def test_get_peft_model_arguments(model, config):
    attempt("get_peft_model", lambda: tp.get_peft_model(model, config), names=["model", "config"])
    base = mlp()
    attempt("get_peft_model", lambda: tp.get_peft_model(base, config), [lambda: model_state(base)], ["config"])


@given(adapter_name=garbage, factors=garbage)
def test_tensor_peft_model_keywords(adapter_name, factors):
    cfg = tp.LoRAConfig(rank=2, target_modules=["0", "2"])
    for name, value in (("adapter_name", adapter_name), ("factors", factors)):
        base = mlp()
        call = lambda: tp.nn.TensorPeftModel(base, cfg, **{name: value})  # noqa: E731, B023 - called at once
        attempt("TensorPeftModel", call, [lambda: model_state(base)], [name])  # noqa: B023


def test_tensor_peft_model_has_no_trainable_keyword():
    """``trainable=`` is gone (the adapter trains unless ``config.inference_mode``): refused, the model untouched."""
    for value in (True, False, None):
        base = mlp()
        before = model_state(base)
        with pytest.raises(TypeError, match="trainable"):
            tp.nn.TensorPeftModel(base, tp.LoRAConfig(rank=2, target_modules=["0", "2"]), trainable=value)
        assert model_state(base) == before
    frozen = tp.nn.TensorPeftModel(mlp(), tp.LoRAConfig(rank=2, target_modules=["0", "2"], inference_mode=True))
    assert not any(p.requires_grad for p in frozen.parameters())


@given(
    cls=st.sampled_from(CONFIGS),
    rank=st.one_of(st.integers(1, 24), st.sampled_from([2**31, (2, 2**31), (2**31, 2)])),
    init=st.sampled_from(["zero", "svd"]),
    stack_by=st.sampled_from(["name", "shape", "module"]),
    targets=st.one_of(
        st.sampled_from(["all-linear", ".*query", "(key|value)"]),
        st.lists(st.sampled_from(["query", "key", "value", "dense", "output.dense", "pooler"]), min_size=1, max_size=3),
    ),
)
def test_get_peft_model_on_a_small_bert(bert, cls, rank, init, stack_by, targets):
    kwargs = VALID[cls] | {"rank": rank, "init": init, "stack_by": stack_by, "target_modules": targets}
    cfg = attempt(cls.__name__, lambda: cls(**kwargs), names=["rank"])
    if not isinstance(cfg, Exception):
        base = bert()
        wrap_and_check(base, cfg, {"input_ids": torch.ones(1, 5, dtype=torch.long)})


@pytest.fixture(scope="module")
def bert():
    """A function returning a fresh tiny BERT with the same weights each time."""
    from transformers import BertConfig, BertModel

    cfg = BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=20)
    torch.manual_seed(0)
    state = BertModel(cfg).eval().state_dict()

    def make():
        model = BertModel(cfg).eval()
        model.load_state_dict(state)
        return model

    return make


# ---------------------------------------------------------------------- RankPruner
PRUNER = {"target_rank": 1, "total_steps": 10, "warmup_steps": 2, "final_steps": 2, "interval": 1}
PRUNER_ARGS = [*PRUNER, "initial_rank", "beta1", "beta2"]


def lora2():
    return tp.get_peft_model(mlp(), tp.LoRA2Config(rank=2, target_modules=["0", "2"]))


@given(name=st.sampled_from(PRUNER_ARGS), value=garbage)
def test_rank_pruner_argument(name, value):
    model = lora2()
    kwargs = PRUNER | {name: value}
    pruner = attempt("RankPruner", lambda: tp.RankPruner(model, **kwargs), [lambda: model_state(model)], [name])
    if not isinstance(pruner, Exception):
        attempt("RankPruner.budget", lambda: pruner.budget(value), names=["step"])


@given(model=garbage, values=st.fixed_dictionaries({n: half(st.integers(0, 12)) for n in PRUNER}))
def test_rank_pruner_everything(model, values):
    attempt("RankPruner", lambda: tp.RankPruner(model, **PRUNER), names=["model"])
    peft = lora2()
    attempt("RankPruner", lambda: tp.RankPruner(peft, **values), [lambda: model_state(peft)])


# ---------------------------------------------------------------------- compress_low_rank
@given(
    model=st.one_of(st.none(), st.just("mlp")),
    values=st.fixed_dictionaries(
        {},
        optional={
            "reduction": half(st.floats(0, 0.999)),
            "min_ratio": half(st.floats(0, 0.999)),
            "target_modules": garbage,
            "exclude_modules": garbage,
        },
    ),
)
def test_compress_low_rank(model, values):
    base = mlp() if model == "mlp" else model
    watched = [lambda: model_state(base)] if model == "mlp" else []
    attempt("compress_low_rank", lambda: tp.compress_low_rank(base, **values), watched)


# ---------------------------------------------------------------------- export_lora
paths = st.one_of(
    scalars.filter(lambda v: not isinstance(v, str)),
    st.text(alphabet="ab\x00 .", max_size=5).filter(lambda s: s not in {".", ".."} and "/" not in s),
    st.sampled_from(["", "a\x00", "x" * 300, "file", "file/sub", "out"]),
)


@contextlib.contextmanager
def in_temporary_directory():
    """A fresh current directory with one file ``file`` in it (relative paths land there)."""
    old = os.getcwd()
    with tempfile.TemporaryDirectory() as root:
        (Path(root) / "file").write_text("keep")
        os.chdir(root)
        try:
            yield Path(root)
        finally:
            os.chdir(old)


@given(model=half(st.just("peft")), path=paths, rank=half(st.one_of(st.none(), st.integers(1, 3))))
def test_export_lora(model, path, rank):
    peft = tp.get_peft_model(mlp(), tp.Tucker2Config(rank=2, target_modules=["0", "2"]))
    target = peft if isinstance(model, str) and model == "peft" else model
    with in_temporary_directory() as root:
        watched = [lambda: model_state(peft), lambda: files_state(root)]
        attempt("export_lora", lambda: tp.nn.export_lora(target, path, rank=rank), watched)
        attempt("export_lora", lambda: tp.nn.export_lora(peft, "out", rank=rank), watched, ["rank"])


# ---------------------------------------------------------------------- RankPruner state and steps
@given(
    key=st.sampled_from(["masks", "avg_ipt", "avg_unc", "final_done", None]),
    value=st.one_of(
        garbage,
        st.dictionaries(st.sampled_from(["0", "2", "x"]), st.one_of(garbage, st.just(torch.ones(2, dtype=torch.bool)))),
        st.just({"0": {"lambda": torch.zeros(2), "U2": torch.zeros(2, 2), "V2": 3}}),
    ),
    step=garbage,
)
def test_rank_pruner_state_and_step(key, value, step):
    model = lora2()
    pruner = tp.RankPruner(model, **PRUNER)
    state = pruner.state_dict()
    bad = garbage_state(state, key, value)
    watched = [lambda: model_state(model), lambda: pruner_state(pruner)]
    attempt("RankPruner.load_state_dict", lambda: pruner.load_state_dict(bad), watched, ["state"])
    attempt("RankPruner.budget", lambda: pruner.budget(step), watched, ["step"])
    if not isinstance(step, numbers.Integral) or isinstance(step, bool) or step < 0:  # a valid step needs gradients
        attempt("RankPruner.update_and_allocate", lambda: pruner.update_and_allocate(step), watched, ["step"])


def garbage_state(state, key, value):
    """``state`` with ``key`` replaced by ``value`` (``None``: ``value`` replaces the whole state)."""
    return value if key is None else {**state, key: value}


def pruner_state(pruner):
    s = pruner.state_dict()
    flat = [(k, _bytes(m)) for k, m in s["masks"].items()]
    for part in ("avg_ipt", "avg_unc"):
        flat += [(part, k, f, _bytes(t)) for k, v in s[part].items() for f, t in v.items()]
    return flat, s["final_done"]


# ---------------------------------------------------------------------- the building blocks
tensors = st.one_of(
    garbage,
    st.sampled_from(
        [
            torch.zeros(4, 2),
            torch.zeros(2, 3),
            torch.zeros(4),
            torch.zeros(4, dtype=torch.float64),
            torch.zeros(4, 0),
            torch.zeros(0, 3),
            torch.zeros(4, 2, dtype=torch.long),
            np.zeros((4, 2)),
        ]
    ),
)


@given(
    U=half(st.just(torch.zeros(4, 2)), tensors),
    V=half(st.just(torch.zeros(2, 3)), tensors),
    bias=half(st.sampled_from([None, torch.zeros(4)]), tensors),
)
def test_low_rank_linear(U, V, bias):
    attempt("LowRankLinear", lambda: tp.nn.LowRankLinear(U, V, bias), names=["U", "V", "bias"])


@given(
    fmt=half(st.just("fmt")),
    scaling=half(st.floats(-10, 10)),
    factors=half(st.just("factors")),
    index=half(st.sampled_from([(0,), (1,), (-1,), (2,), (0, 0), ()])),
    dropout=half(st.floats(0, 0.99)),
    layer=half(st.sampled_from(["linear", "wide"])),
)
def test_adapter_stack_and_linear(fmt, scaling, factors, index, dropout, layer):
    lora = decomp.LoRA(stack=(2,), out_features=4, in_features=3, rank=1)
    good = lora.init(seed=0, backend="torch")
    fmt = lora if isinstance(fmt, str) else fmt
    factors = good if isinstance(factors, str) else factors
    attempt("AdapterStack", lambda: tp.nn.AdapterStack(fmt, scaling, factors), names=["fmt", "scaling", "factors"])
    stack = tp.nn.AdapterStack(lora, 1.0, good)
    if isinstance(layer, str):
        layer = torch.nn.Linear(3, 4) if layer == "linear" else torch.nn.Linear(5, 4)
    watched = [lambda: model_state(layer)] if isinstance(layer, torch.nn.Module) else []
    call = lambda: tp.nn.AdapterLinear(layer, stack, index, dropout)  # noqa: E731
    attempt("AdapterLinear", call, watched, ["base_layer", "stack", "index", "dropout"])
