"""Loading hostile or damaged adapter directories: every attack is a ValueError/TypeError, the base model untouched.

Each case edits a freshly saved adapter (or passes a bad argument), then loads it onto a fresh tiny base
model and checks that the error is a ValueError or TypeError and that the base keeps its state_dict keys,
tensor bytes and ``requires_grad`` flags. Each case records its exception type and whether the model
changed as junit properties (``pytest --junitxml``) so the suite can be summarized.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import textwrap

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

import tensorpeft as tp
from tensorpeft.nn import _serialization

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def tiny(seed=0):
    torch.manual_seed(seed)
    base = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8))
    base[2].weight.requires_grad_(False)  # a mixed pattern of flags, so a wrongly frozen base shows
    return base


def fingerprint(model):
    state = model.state_dict()
    return (
        list(state),
        {k: (v.dtype, tuple(v.shape), v.contiguous().view(torch.uint8).numpy().tobytes()) for k, v in state.items()},
        {n: p.requires_grad for n, p in model.named_parameters()},
        [type(m).__name__ for m in model.modules()],
    )


def save(path, config=None, seed=1, atomic=False):
    """A random adapter of ``tiny()`` saved into ``path`` (PEFT's ``save_pretrained``, or ``tp.nn.save_adapter``)."""
    model = tp.get_peft_model(tiny(), config or tp.Tucker2Config(rank=2, target_modules=["0", "2"]))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.tensor_adapters.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    if atomic:
        tp.nn.save_adapter(model, path)
    else:
        model.save_pretrained(path)
    return model


@pytest.fixture
def record(request):
    """``record(name, value)``: a property of this case in ``--junitxml`` output (any junit family)."""
    return lambda name, value: request.node.user_properties.append((name, value))


@pytest.fixture
def adapter(tmp_path):
    path = tmp_path / "adapter"
    save(path)
    return path


# ------------------------------------------------------------------------------------------ editing helpers
def read_meta(path):
    return json.loads((path / CONFIG).read_text())


def write_meta(path, meta):
    (path / CONFIG).write_text(json.dumps(meta))


PEFT_ONLY = ("peft_type", "peft_version", "task_type", "inference_mode", "base_model_name_or_path", "revision")
PEFT_ONLY += ("auto_mapping", "modules_to_save", "tensorpeft")


def old_layout(meta):
    """The JSON of a flat (PEFT-style) file rewritten in the layout of tensorpeft before the PEFT integration."""
    return {
        "peft_type": "TENSORPEFT",
        "tensorpeft_version": meta["tensorpeft"]["version"],
        "base_model_class": "Sequential",
        "config": {k: v for k, v in meta.items() if k not in PEFT_ONLY},
        "stacks": meta["tensorpeft"]["stacks"],
        "sha256": meta["tensorpeft"]["sha256"],
    }


def edit_meta(edit):
    def attack(path):
        meta = read_meta(path)
        edit(meta)
        write_meta(path, meta)

    return attack


def replace_text(old, new):
    """Edit the raw JSON text (for what json.dumps would never write: NaN, 1e999, huge integers)."""

    def attack(path):
        text = (path / CONFIG).read_text()
        assert old in text
        (path / CONFIG).write_text(text.replace(old, new, 1))

    return attack


def stack_field(field, raw):
    def attack(path):
        meta = read_meta(path)
        meta["tensorpeft"]["stacks"][0][field] = "@@"
        (path / CONFIG).write_text(json.dumps(meta).replace('"@@"', raw))

    return attack


def tensors_edit(edit):
    """Change the tensors and recompute the checksum, as an attacker can (it sits beside them)."""

    def attack(path):
        tensors = st_load((path / WEIGHTS).read_bytes())
        edit(tensors)
        (path / WEIGHTS).write_bytes(st_save(tensors))
        meta = read_meta(path)
        meta["tensorpeft"]["sha256"] = _serialization._digest(tensors)
        write_meta(path, meta)

    return attack


def replace_file(name, make):
    def attack(path):
        (path / name).unlink()
        make(path / name, path)

    return attack


def symlink_to(target_of):
    return lambda file, path: os.symlink(target_of(file, path), file)


def flip(name, position):
    def attack(path):
        data = bytearray((path / name).read_bytes())
        data[position % len(data)] ^= 0xFF
        (path / name).write_bytes(bytes(data))

    return attack


def truncate(name, keep):
    def attack(path):
        data = (path / name).read_bytes()
        (path / name).write_bytes(data[: keep(len(data))])

    return attack


def header_length(value):
    def attack(path):
        data = (path / WEIGHTS).read_bytes()
        (path / WEIGHTS).write_bytes(struct.pack("<Q", value) + data[8:])

    return attack


def custom_factory(factory):
    """Replace the config fields (at top level, PEFT's layout) by a CustomConfig naming ``factory``."""

    def edit(meta):
        kept = {k: meta[k] for k in ("peft_type", "tensorpeft")}
        meta.clear()
        meta.update(kept, format="Custom", target_modules=["0", "2"], rank=2, factory=factory)

    return edit_meta(edit)


def set_in(tensors, key, fill):
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = fill


FILE_ATTACKS = {
    # the config file itself
    "config-is-directory": replace_file(CONFIG, lambda f, p: f.mkdir()),
    "config-symlink-loop": replace_file(CONFIG, symlink_to(lambda f, p: f)),
    "config-symlink-dev-zero": replace_file(CONFIG, symlink_to(lambda f, p: "/dev/zero")),
    "config-symlink-to-directory": replace_file(CONFIG, symlink_to(lambda f, p: p)),
    "config-dangling-symlink": replace_file(CONFIG, symlink_to(lambda f, p: p / "nowhere")),
    "config-fifo": replace_file(CONFIG, lambda f, p: os.mkfifo(f)),
    "config-too-large": lambda p: (p / CONFIG).write_bytes(b" " * (_serialization.MAX_CONFIG_BYTES + 1) + b"{}"),
    "config-empty": lambda p: (p / CONFIG).write_bytes(b""),
    "config-truncated": truncate(CONFIG, lambda n: n // 2),
    "config-not-utf8": lambda p: (p / CONFIG).write_bytes(b'{"peft_type": "\xff\xfe"}'),
    "config-byte-flip-start": flip(CONFIG, 0),
    "config-deep-json": lambda p: (p / CONFIG).write_text("[" * 100_000 + "]" * 100_000),
    "config-deep-json-100": lambda p: (p / CONFIG).write_text("[" * 100 + "]" * 100),
    "config-deep-in-field": replace_text('"rank": 2', '"rank": ' + "[" * 70 + "]" * 70),
    "config-top-level-list": lambda p: (p / CONFIG).write_text("[]"),
    "config-is-string": edit_meta(lambda m: m.update(config="LoRA")),
    "tensorpeft-is-list": edit_meta(lambda m: m.update(tensorpeft=[1])),
    "stacks-is-dict": edit_meta(lambda m: m["tensorpeft"].update(stacks={})),
    "stacks-entry-is-list": edit_meta(lambda m: m["tensorpeft"].update(stacks=[[1, 2]])),
    "stacks-members-wrong": edit_meta(lambda m: m["tensorpeft"]["stacks"][0].update(members=5)),
    "stacks-top-level": edit_meta(lambda m: m.update(stacks=m["tensorpeft"]["stacks"])),  # no such config field
    "sha256-not-hex": edit_meta(lambda m: m["tensorpeft"].update(sha256="z" * 64)),
    "sha256-is-int": edit_meta(lambda m: m["tensorpeft"].update(sha256=5)),
    "old-layout-stacks-is-dict": lambda p: write_meta(p, old_layout(read_meta(p)) | {"stacks": {}}),
    "old-layout-sha256-missing": lambda p: write_meta(
        p, {k: v for k, v in old_layout(read_meta(p)).items() if k != "sha256"}
    ),
    "old-layout-config-is-list": lambda p: write_meta(p, old_layout(read_meta(p)) | {"config": []}),
    "peft-type-lora": edit_meta(lambda m: m.update(peft_type="LORA")),
    "unknown-format": edit_meta(lambda m: m.update(format="Evil")),
    "unknown-field": edit_meta(lambda m: m.update(evil=1)),
    "target-modules-int": edit_meta(lambda m: m.update(target_modules=5)),
    "alpha-nan": replace_text('"alpha": 8.0', '"alpha": NaN'),
    "alpha-infinity": replace_text('"alpha": 8.0', '"alpha": Infinity'),
    "alpha-1e999": replace_text('"alpha": 8.0', '"alpha": 1e999'),
    "rank-1e999": replace_text('"rank": 2', '"rank": 1e999'),
    "rank-huge-int": replace_text('"rank": 2', '"rank": 1000000000000000000000000000000'),
    "rank-5000-digits": replace_text('"rank": 2', '"rank": ' + "9" * 5000),
    "out-features-1e999": stack_field("out_features", "1e999"),
    "out-features-minus-1e999": stack_field("out_features", "-1e999"),
    "out-features-nan": stack_field("out_features", "NaN"),
    "stack-shape-infinity": stack_field("stack", "[Infinity]"),
    "stack-shape-huge": stack_field("stack", "[100000000000000000000]"),
    # factories named by the file
    "factory-os-system": custom_factory("os:system"),
    "factory-builtins-exec": custom_factory("builtins:exec"),
    "factory-subprocess": custom_factory("subprocess:getoutput"),
    "factory-public-non-format": custom_factory("tensorpeft.decomp:compare"),
    "factory-private-non-format": custom_factory("tensorpeft.decomp._lora:os"),
    "factory-no-colon": custom_factory("os.system"),
    "factory-not-string": custom_factory(["os", "system"]),
    # the weights file
    "weights-is-directory": replace_file(WEIGHTS, lambda f, p: f.mkdir()),
    "weights-symlink-loop": replace_file(WEIGHTS, symlink_to(lambda f, p: f)),
    "weights-symlink-dev-zero": replace_file(WEIGHTS, symlink_to(lambda f, p: "/dev/zero")),
    "weights-symlink-to-directory": replace_file(WEIGHTS, symlink_to(lambda f, p: p)),
    "weights-fifo": replace_file(WEIGHTS, lambda f, p: os.mkfifo(f)),
    "weights-missing": lambda p: (p / WEIGHTS).unlink(),
    "weights-empty": truncate(WEIGHTS, lambda n: 0),
    "weights-7-bytes": truncate(WEIGHTS, lambda n: 7),
    "weights-header-only": truncate(WEIGHTS, lambda n: 8),
    "weights-half": truncate(WEIGHTS, lambda n: n // 2),
    "weights-minus-1": truncate(WEIGHTS, lambda n: n - 1),
    "weights-appended": lambda p: (p / WEIGHTS).write_bytes((p / WEIGHTS).read_bytes() + b"\0" * 8),
    "weights-header-length-huge": header_length(2**63),
    "weights-header-length-zero": header_length(0),
    "weights-flip-length": flip(WEIGHTS, 3),
    "weights-flip-header": flip(WEIGHTS, 12),
    "weights-flip-header-end": flip(WEIGHTS, 60),
    "weights-flip-payload-first": flip(WEIGHTS, -4 * 36),
    "weights-flip-payload-last": flip(WEIGHTS, -1),
    "weights-nan-factor": tensors_edit(lambda t: set_in(t, "stack.A", float("nan"))),
    "weights-inf-factor": tensors_edit(lambda t: set_in(t, "stack.G", float("inf"))),
    "weights-minus-inf-factor": tensors_edit(lambda t: set_in(t, "stack.B", float("-inf"))),
    "weights-float8": tensors_edit(lambda t: t.update({k: v.to(torch.float8_e4m3fn) for k, v in t.items()})),
    "weights-int32": tensors_edit(lambda t: t.update({k: v.to(torch.int32) for k, v in t.items()})),
    "weights-bool": tensors_edit(lambda t: t.update({k: v > 0 for k, v in t.items()})),
    "weights-complex": tensors_edit(lambda t: t.update({k: v.to(torch.complex64) for k, v in t.items()})),
    "weights-mixed-dtypes": tensors_edit(lambda t: t.update({"stack.G": t["stack.G"].half()})),
    "weights-transposed": tensors_edit(lambda t: t.update({"stack.A": t["stack.A"].T.contiguous()})),
    "weights-wrong-shape": tensors_edit(lambda t: t.update({"stack.G": torch.zeros(2, 2, 3)})),
    "weights-extra-tensor": tensors_edit(lambda t: t.update({"stack.evil": torch.zeros(1)})),
    "weights-missing-tensor": tensors_edit(lambda t: t.pop("stack.B")),
    "weights-renamed-tensor": tensors_edit(lambda t: t.update({"other.A": t.pop("stack.A")})),
    "weights-too-large": lambda p: (p / WEIGHTS).write_bytes(b"\0" * 4096),  # cap lowered by the test
}

ARGUMENT_ATTACKS = {
    "is_trainable-1": {"is_trainable": 1},
    "is_trainable-0": {"is_trainable": 0},
    "is_trainable-yes": {"is_trainable": "yes"},
    "is_trainable-None": {"is_trainable": None},
    "is_trainable-list": {"is_trainable": []},
    "is_trainable-float": {"is_trainable": 1.0},
    "path-None": {"path": None},
    "path-int": {"path": 3},
    "path-bytes": {"path": b"adapter"},
    "path-empty": {"path": ""},
    "path-nul": {"path": "adap\0ter"},
    "path-missing": {"path": "nowhere"},
    "path-is-file": {"path": CONFIG},
    "base-not-module": {"base_model": "bert"},
    "trust-string": {"trust_custom_factories": "yes"},
    "trust-None": {"trust_custom_factories": None},
    "trust-int-entry": {"trust_custom_factories": [3]},
    "trust-bad-path-entry": {"trust_custom_factories": ["os"]},
    "trust-lambda-entry": {"trust_custom_factories": [lambda *a: None]},
}


def attempt(base, path, record, **kwargs):
    """Load onto ``base``; assert a ValueError/TypeError and an unchanged base; record both."""
    before = fingerprint(base)
    args = {"base_model": base, "path": path} | kwargs
    with pytest.raises((ValueError, TypeError)) as info:
        tp.TensorPeftModel.from_pretrained(**args)
    changed = fingerprint(base) != before
    record("exception", type(info.value).__name__)
    record("model_changed", changed)
    assert not changed
    assert not isinstance(info.value, RecursionError | json.JSONDecodeError)  # ours, with a clear message
    return info.value


@pytest.mark.parametrize("name", list(FILE_ATTACKS))
def test_file_attack(adapter, name, monkeypatch, record):
    if name == "weights-too-large":
        monkeypatch.setattr(_serialization, "MAX_WEIGHTS_BYTES", 1024)
    FILE_ATTACKS[name](adapter)
    exc = attempt(tiny(), adapter, record)
    message = str(exc)
    assert "adapter" in message  # names the directory or the file
    if name.startswith("config-"):
        assert CONFIG in message
    if name.startswith("weights-"):
        assert WEIGHTS in message
    if name.startswith("factory-") and name not in ("factory-no-colon", "factory-not-string"):
        assert "trust_custom_factories" in message and "nothing was imported" in message


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("config-symlink-loop", ["symlink loop"]),
        ("config-symlink-dev-zero", ["must be a regular file", "device"]),
        ("config-is-directory", ["must be a regular file", "directory"]),
        ("config-too-large", ["more than the limit"]),
        ("config-deep-json", ["nests JSON more than"]),
        ("alpha-nan", ["field `alpha`", "nan"]),
        ("out-features-1e999", ["`tensorpeft.stacks[0].out_features`", "inf"]),
        ("stack-shape-infinity", ["`tensorpeft.stacks[0].stack[0]`", "inf"]),
        ("stacks-top-level", ["unknown field", "'stacks'"]),
        ("old-layout-sha256-missing", ["lacks the 'sha256' entry"]),
        ("peft-type-lora", ["`peft_type`='TENSORPEFT'", "'LORA'"]),
        ("weights-nan-factor", ["'stack.A'", "non-finite"]),
        ("weights-float8", ["dtype torch.float8_e4m3fn", "float32"]),
        ("weights-mixed-dtypes", ["mix dtypes"]),
    ],
)
def test_file_attack_messages_name_file_and_field(adapter, name, words, record):
    FILE_ATTACKS[name](adapter)
    message = str(attempt(tiny(), adapter, record))
    for word in words:
        assert word in message


@pytest.mark.parametrize("name", list(ARGUMENT_ATTACKS))
def test_argument_attack(adapter, name, monkeypatch, record):
    monkeypatch.chdir(adapter)  # "path-is-file" names the config file, relative to here
    kwargs = dict(ARGUMENT_ATTACKS[name])
    path = kwargs.pop("path", adapter)
    if "base_model" in kwargs:  # not a module: nothing to fingerprint
        with pytest.raises(TypeError, match=r"`base_model` must be a torch\.nn\.Module"):
            tp.TensorPeftModel.from_pretrained(kwargs["base_model"], path)
        record("exception", "TypeError")
        record("model_changed", False)
        return
    exc = attempt(tiny(), path, record, **kwargs)
    prefix = name.split("-")[0]
    argument = {"is_trainable": "is_trainable", "path": "path", "trust": "trust_custom_factories"}[prefix]
    assert f"`{argument}" in str(exc)


def test_is_trainable_is_checked_before_the_base_is_wrapped(adapter, record):
    base = tiny()
    exc = attempt(base, adapter, record, is_trainable="yes")
    assert "`is_trainable` must be True or False" in str(exc)
    assert not any(k.endswith("base_layer.weight") for k in base.state_dict())
    assert base[0].weight.requires_grad and not base[2].weight.requires_grad


def test_loading_onto_an_already_wrapped_model(adapter, record):
    wrapped = tp.get_peft_model(tiny(), tp.LoRAConfig(rank=2, target_modules=["0"]))
    exc = attempt(wrapped, adapter, record)
    assert "`base_model` already has tensorpeft adapters" in str(exc)


# ------------------------------------------------------------------------------------------ factories
EVIL_MODULE = textwrap.dedent(
    """
    import pathlib
    pathlib.Path({marker!r}).write_text("imported")

    def evil(stack, out_features, in_features, rank):
        pathlib.Path({marker!r}).write_text("called")
        from tensorpeft import decomp
        return decomp.LoRA(stack, out_features, in_features, rank)
    """
)


@pytest.fixture
def evil_adapter(tmp_path, monkeypatch):
    """An adapter whose config names a factory module placed beside it, importable from sys.path and cwd."""
    marker = tmp_path / "marker"
    path = tmp_path / "adapter"
    save(path, tp.LoRAConfig(rank=2, target_modules=["0", "2"], stack_by="name"))
    (path / "evil_formats_h1.py").write_text(EVIL_MODULE.format(marker=str(marker)))
    custom_factory("evil_formats_h1:evil")(path)
    monkeypatch.syspath_prepend(str(path))
    monkeypatch.chdir(path)
    monkeypatch.delitem(sys.modules, "evil_formats_h1", raising=False)
    return path, marker


def test_a_factory_module_beside_the_adapter_is_never_imported(evil_adapter, record):
    path, marker = evil_adapter
    exc = attempt(tiny(), path, record)
    assert "evil_formats_h1:evil" in str(exc) and "trust_custom_factories=True" in str(exc)
    assert not marker.exists()
    assert "evil_formats_h1" not in sys.modules


def test_from_json_of_an_untrusted_custom_config_imports_nothing(evil_adapter):
    path, marker = evil_adapter
    text = json.dumps({k: v for k, v in read_meta(path).items() if k != "tensorpeft"})
    with pytest.raises(ValueError, match="nothing was imported"):
        tp.AdapterConfig.from_json(text)
    assert not marker.exists() and "evil_formats_h1" not in sys.modules


def test_another_allowed_factory_does_not_admit_this_one(evil_adapter, record):
    path, marker = evil_adapter
    attempt(tiny(), path, record, trust_custom_factories=["evil_formats_h1:other", tp.decomp.LoRA])
    assert not marker.exists() and "evil_formats_h1" not in sys.modules


@pytest.mark.parametrize("trust", [True, ["evil_formats_h1:evil"]])
def test_with_the_opt_in_a_custom_adapter_loads(evil_adapter, trust):
    path, marker = evil_adapter
    loaded = tp.TensorPeftModel.from_pretrained(tiny(), path, trust_custom_factories=trust)
    assert marker.read_text() == "called"
    assert loaded.peft_config["default"].factory == "evil_formats_h1:evil"
    assert len(list(loaded.adapter_layers())) == 2


def test_an_allow_list_of_functions_loads_a_custom_adapter(tmp_path, custom_factory):
    import importlib

    fn = importlib.import_module("user_formats").shared_core
    model = save(tmp_path / "custom", tp.CustomConfig(factory=fn, rank=2, target_modules=["0", "2"]))
    with pytest.raises(ValueError, match="trust_custom_factories"):
        tp.TensorPeftModel.from_pretrained(tiny(), tmp_path / "custom")
    loaded = tp.TensorPeftModel.from_pretrained(tiny(), tmp_path / "custom", trust_custom_factories=[fn])
    x = torch.randn(3, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_built_in_formats_are_saved_by_public_name_and_never_imported(tmp_path, monkeypatch):
    from tensorpeft.nn import _factories

    model = save(tmp_path / "a", tp.CustomConfig(factory=tp.decomp.LoRA, rank=2, target_modules=["0", "2"]))
    assert read_meta(tmp_path / "a")["factory"] == "tensorpeft.decomp:LoRA"
    # an adapter written before: a private module path
    custom_factory("tensorpeft.decomp._lora:LoRA")(tmp_path / "a")

    def no_import(name, *args, **kwargs):
        raise AssertionError(f"imported {name}")

    monkeypatch.setattr(_factories, "importlib", type("NoImport", (), {"import_module": staticmethod(no_import)}))
    loaded = tp.TensorPeftModel.from_pretrained(tiny(), tmp_path / "a")
    assert loaded.peft_config["default"].factory == "tensorpeft.decomp:LoRA"
    x = torch.randn(3, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


# ------------------------------------------------------------------------------------------ saving
@pytest.mark.parametrize(("value", "word"), [(float("nan"), "non-finite"), (float("inf"), "non-finite")])
def test_save_refuses_non_finite_factors_and_writes_nothing(tmp_path, value, word):
    model = save(tmp_path / "adapter", atomic=True)
    before = {f: (tmp_path / "adapter" / f).read_bytes() for f in os.listdir(tmp_path / "adapter")}
    with torch.no_grad():
        model.tensor_adapters["stack"].A.view(-1)[3] = value
    with pytest.raises(ValueError, match=f"'stack.A' of the model has 1 {word}"):
        tp.nn.save_adapter(model, tmp_path / "adapter")
    assert {f: (tmp_path / "adapter" / f).read_bytes() for f in os.listdir(tmp_path / "adapter")} == before
    assert sorted(os.listdir(tmp_path)) == ["adapter"]


@pytest.mark.parametrize("path", [None, 3, b"adapter", "", "a-file"])
def test_save_rejects_a_bad_path(tmp_path, path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("not a directory")
    model = save(tmp_path / "adapter", atomic=True)
    with pytest.raises((TypeError, ValueError), match="`path`"):
        tp.nn.save_adapter(model, path)
    assert (tmp_path / "a-file").read_text() == "not a directory"
    assert sorted(os.listdir(tmp_path)) == ["a-file", "adapter"]


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from([CONFIG, WEIGHTS]), position=st.integers(0, 2**20), mask=st.integers(1, 255))
def test_any_byte_flip_is_refused_or_harmless(tmp_path_factory, which, position, mask):
    path = tmp_path_factory.mktemp("flip") / "adapter"
    saved = save(path)
    data = bytearray((path / which).read_bytes())
    data[position % len(data)] ^= mask
    (path / which).write_bytes(bytes(data))
    base = tiny()
    before = fingerprint(base)
    try:
        loaded = tp.TensorPeftModel.from_pretrained(base, path)
    except (ValueError, TypeError):
        assert fingerprint(base) == before
    else:
        # Only a flip outside the tensor data can load (a digit of `seed` in the config, a space or the
        # metadata of the safetensors header): the factors are then exactly the saved ones.
        want = {k: v for k, v in saved.tensor_adapters.state_dict().items()}
        got = loaded.tensor_adapters.state_dict()
        assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


# ------------------------------------------------------------------------------------------ through PEFT
# PEFT reads the JSON once itself (json.load, to find `peft_type`) before tensorpeft's strict reader runs, so
# the attacks on the config *file* (symlinks, FIFOs, deep nesting) are tensorpeft's own loaders' business;
# every attack on the content of the files must be refused on PEFT's path too, before the base changes.
# "peft-type-lora" is a LoRA file to PEFT; "rank-5000-digits" is refused by PEFT's json.load, with its message.
PEFT_FILE_ATTACKS = [
    n for n in FILE_ATTACKS if not n.startswith("config-") and n not in ("weights-too-large", "peft-type-lora")
]
PEFT_OWN_MESSAGE = {"rank-5000-digits"}


def attempt_peft(base, path, record, **kwargs):
    """``peft.PeftModel.from_pretrained(base, path)``: a ValueError/TypeError and an unchanged base."""
    import peft

    before = fingerprint(base)
    with pytest.raises((ValueError, TypeError)) as info:
        peft.PeftModel.from_pretrained(base, str(path), **kwargs)
    changed = fingerprint(base) != before
    record("exception", type(info.value).__name__)
    record("model_changed", changed)
    assert not changed
    return info.value


@pytest.mark.parametrize("name", PEFT_FILE_ATTACKS)
def test_file_attack_through_peft(adapter, name, record):
    FILE_ATTACKS[name](adapter)
    exc = attempt_peft(tiny(), adapter, record)
    message = str(exc)
    if name in PEFT_OWN_MESSAGE:
        return
    assert "adapter" in message
    if name.startswith("weights-"):
        assert WEIGHTS in message and type(exc) is ValueError


@pytest.mark.parametrize(
    ("other", "words"),
    [
        (lambda: torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8)), ["another"]),
        (lambda: torch.nn.Sequential(torch.nn.Linear(8, 8)), ["'2'", "matches no module"]),
    ],
)
def test_an_adapter_of_another_model_is_refused_through_peft(adapter, other, words, record):
    base = other()
    base[0].bias.requires_grad_(False)
    message = str(attempt_peft(base, adapter, record))
    for word in words:
        assert word in message


def test_peft_loads_a_checked_adapter_with_modules_to_save_and_refuses_a_bad_one(tmp_path, record):
    """PEFT's ``modules_to_save`` tensors are checked too: a wrong shape is refused before the base changes."""
    import peft

    cfg = tp.Tucker2Config(rank=2, target_modules=["0"], modules_to_save=["2"])
    model = save(tmp_path / "ok", cfg)
    with torch.no_grad():
        model.base_model.model[2].modules_to_save["default"].weight.add_(1.0)
    model.save_pretrained(tmp_path / "ok")
    x = torch.randn(3, 8)
    loaded = peft.PeftModel.from_pretrained(tiny(), str(tmp_path / "ok"))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x)) and not torch.equal(loaded(x), tiny()(x))
    tensors_edit(lambda t: t.update({"base_model.model.2.weight": torch.zeros(3, 8)}))(tmp_path / "ok")
    assert WEIGHTS in str(attempt_peft(tiny(), tmp_path / "ok", record))


def test_peft_refuses_an_untrusted_custom_factory_without_importing_it(evil_adapter, record):
    import peft

    path, marker = evil_adapter
    message = str(attempt_peft(tiny(), path, record))
    assert "evil_formats_h1:evil" in message and "trust_custom_factories" in message
    with pytest.raises(ValueError, match="nothing was imported"):
        peft.PeftConfig.from_pretrained(str(path))
    with pytest.raises(ValueError, match="nothing was imported"):
        tp.AdapterConfig.from_pretrained(path, trust_custom_factories=["evil_formats_h1:other"])
    assert not marker.exists()
    assert "evil_formats_h1" not in sys.modules


@pytest.mark.parametrize("trust", [True, ["evil_formats_h1:evil"]])
def test_peft_loads_a_custom_adapter_with_a_trusted_config(evil_adapter, trust):
    import peft

    path, marker = evil_adapter
    saved = tp.TensorPeftModel.from_pretrained(tiny(), path, trust_custom_factories=trust)
    config = tp.AdapterConfig.from_pretrained(path, trust_custom_factories=trust)
    assert isinstance(config, tp.CustomConfig) and config.factory == "evil_formats_h1:evil"
    loaded = peft.PeftModel.from_pretrained(tiny(), str(path), config=config)
    assert marker.read_text() == "called"
    assert type(loaded.base_model).__name__ == "TensorPeftModel" and len(list(loaded.adapter_layers())) == 2
    x = torch.randn(3, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), saved(x)) and not torch.equal(loaded(x), tiny()(x))


def test_peft_with_a_peft_read_config_refuses_a_nan_factor_before_touching_the_base(adapter, record):
    import peft

    tensors_edit(lambda t: set_in(t, "stack.A", float("nan")))(adapter)
    config = peft.PeftConfig.from_pretrained(str(adapter))
    assert "non-finite" in str(attempt_peft(tiny(), adapter, record, config=config))
