import copy
import errno
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import tensorpeft as tp
from tensorpeft import _safe_io
from tensorpeft.nn import AdapterLinear


def saved(make_model, helpers, tmp_path, kind="bert", fmt="tucker2", writer="save_adapter"):
    """A random adapter saved with ``tp.nn.save_adapter`` (atomic) or PEFT's ``model.save_pretrained``."""
    model = tp.get_peft_model(make_model(kind), helpers.FORMATS[fmt](helpers.TARGETS[kind]))
    helpers.randomize(model)
    path = tmp_path / "adapter"
    write(model, path, writer)
    return model, path


def write(model, path, writer="save_adapter"):
    if writer == "save_adapter":
        tp.nn.save_adapter(model, path)
    else:
        model.save_pretrained(path)


FILES = {
    "save_adapter": ["adapter_config.json", "adapter_model.safetensors"],
    "save_pretrained": ["README.md", "adapter_config.json", "adapter_model.safetensors"],  # PEFT adds a model card
}


def same_config(loaded, original, ignore=("inference_mode",)):
    """Equal configs but for ``ignore``: by default ``inference_mode`` (loaded adapters are frozen)."""
    expected = copy.copy(original)
    for name in ignore:
        setattr(expected, name, getattr(loaded, name))
    return loaded == expected


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_untouched(model, before):
    assert not any(isinstance(m, AdapterLinear) for m in model.modules())
    state = model.state_dict()
    assert state.keys() == before.keys() and all(torch.equal(before[k], state[k]) for k in before)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("writer", list(FILES))
def test_round_trip_is_bit_exact(make_model, helpers, ids, tmp_path, fmt, writer):
    model, path = saved(make_model, helpers, tmp_path, fmt=fmt, writer=writer)
    assert sorted(os.listdir(path)) == FILES[writer]
    loaded = tp.TensorPeftModel.from_pretrained(make_model("bert"), path)
    assert list(loaded.peft_config) == ["default"] and loaded.peft_config["default"].inference_mode
    assert same_config(loaded.peft_config["default"], model.peft_config["default"])
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
        tp.nn.save_adapter(model, path)
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


PEFT_ONLY = ("peft_type", "peft_version", "task_type", "inference_mode", "base_model_name_or_path", "revision")
PEFT_ONLY += ("auto_mapping", "modules_to_save", "tensorpeft")


def old_layout(meta):
    """A flat (PEFT-style) JSON rewritten in the layout of tensorpeft before the PEFT integration."""
    return {
        "peft_type": "TENSORPEFT",
        "tensorpeft_version": meta["tensorpeft"]["version"],
        "base_model_class": "BertModel",
        "config": {k: v for k, v in meta.items() if k not in PEFT_ONLY},
        "stacks": meta["tensorpeft"]["stacks"],
        "sha256": meta["tensorpeft"]["sha256"],
    }


def old_config(path, edit):
    """Rewrite ``path``'s config in the old layout (if not yet), then ``edit`` it."""
    file = path / "adapter_config.json"
    meta = json.loads(file.read_text())
    meta = meta if "config" in meta else old_layout(meta)
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
            lambda p: edit_config(p, lambda m: m.update(rank=0)),
            ValueError,
            ["`rank` must be a positive integer, got 0"],
        ),
        (lambda p: edit_config(p, lambda m: m.update(rank=3)), ValueError, ["has shape", "expected"]),
        (
            lambda p: edit_config(p, lambda m: m["tensorpeft"]["stacks"][0].update(name="renamed")),
            ValueError,
            ["'renamed'", "another model"],
        ),
        (lambda p: edit_config(p, lambda m: m.update(sha256=m["tensorpeft"]["sha256"])), ValueError, ["'sha256'"]),
        # the layout before the PEFT integration, still read
        (lambda p: old_config(p, lambda m: m.pop("sha256")), ValueError, ["lacks the 'sha256' entry"]),
        (lambda p: old_config(p, lambda m: m["config"].update(rank=0)), ValueError, ["`rank` must be a positive"]),
        (
            lambda p: old_config(p, lambda m: m["stacks"][0].update(name="renamed")),
            ValueError,
            ["'renamed'", "another model"],
        ),
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


# ------------------------------------------------------------------------------------------ atomic saves
CRASHER = textwrap.dedent(
    """
    import importlib.util, os, shutil, sys
    spec = importlib.util.spec_from_file_location("safe_io_under_test", sys.argv[1])
    io = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(io)
    target, crash_at, mode = sys.argv[2], int(sys.argv[3]), sys.argv[4]
    if mode == "journal":
        io._renameat2 = lambda: None
    if mode == "in-place":  # as on a mount point or under a read-only parent: no sibling can be made
        def no_sibling(*args, **kwargs):
            raise PermissionError(13, "Permission denied")
        io.fresh_sibling = no_sibling
    calls = [0]

    def crashing(fn):
        def step(*args, **kwargs):
            calls[0] += 1
            if calls[0] == crash_at:
                os._exit(17)  # killed here: no finally block, no cleanup
            return fn(*args, **kwargs)
        return step

    for owner, name in [(os, "rename"), (os, "replace"), (os, "remove"), (os, "fsync"), (os, "mkdir"),
                        (os, "link"), (os, "chmod"), (shutil, "rmtree"), (io, "_exchange")]:
        setattr(owner, name, crashing(getattr(owner, name)))
    io.write_directory_atomic(target, {"adapter_config.json": b"new config", "adapter_model.safetensors": b"new"})
    """
)
OLD = {"adapter_config.json": b"old config", "adapter_model.safetensors": b"old", "notes.txt": b"mine"}
NEW = {"adapter_config.json": b"new config", "adapter_model.safetensors": b"new", "notes.txt": b"mine"}


def contents(directory):
    if not directory.is_dir():
        return None
    return {f: (directory / f).read_bytes() for f in os.listdir(directory)}


@pytest.mark.parametrize("mode", ["exchange", "journal", "in-place"])
def test_a_save_killed_at_any_step_leaves_the_old_or_the_new_adapter(tmp_path, mode):
    if mode == "exchange" and _safe_io._renameat2() is None:
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here")
    crashes = 0
    for crash_at in range(1, 100):
        work = tmp_path / f"crash{crash_at}"
        target = work / "adapter"
        _safe_io.write_directory_atomic(target, {k: v for k, v in OLD.items() if k != "notes.txt"})
        (target / "notes.txt").write_bytes(b"mine")
        args = [sys.executable, "-c", CRASHER, _safe_io.__file__, str(target), str(crash_at), mode]
        returncode = subprocess.run(args, check=False).returncode
        if returncode == 0:
            assert contents(target) == NEW
            break
        assert returncode == 17
        crashes += 1
        if mode == "exchange" or (mode == "journal" and contents(target) is not None):
            assert contents(target) in (OLD, NEW)  # the exchange is never half done
        _safe_io.recover(target)  # what the next save or load does first
        assert contents(target) in (OLD, NEW)
        _safe_io.write_directory_atomic(target, {"adapter_config.json": b"3", "adapter_model.safetensors": b"3"})
        assert os.listdir(work) == ["adapter"]  # the killed save's temporaries are gone
        assert contents(target) == {
            "adapter_config.json": b"3",
            "adapter_model.safetensors": b"3",
            "notes.txt": b"mine",
        }
    else:
        pytest.fail("the save never completed")
    assert crashes >= {"exchange": 10, "journal": 17, "in-place": 11}[mode]  # every step was interrupted once


def test_a_failed_exchange_keeps_the_old_adapter_and_no_temporaries(make_model, helpers, tmp_path, monkeypatch):
    model, path = saved(make_model, helpers, tmp_path)
    before = {f: (path / f).read_bytes() for f in os.listdir(path)}
    helpers.randomize(model, seed=5)

    def broken(a, b):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(_safe_io, "_exchange", broken)
    with pytest.raises(OSError, match="I/O error"):
        tp.nn.save_adapter(model, path)
    assert {f: (path / f).read_bytes() for f in os.listdir(path)} == before
    assert os.listdir(tmp_path) == ["adapter"]


def test_journalled_fallback_round_trips_and_keeps_other_files(make_model, helpers, ids, tmp_path, monkeypatch):
    monkeypatch.setattr(_safe_io, "_renameat2", lambda: None)
    model, path = saved(make_model, helpers, tmp_path)
    (path / "README.md").write_text("my notes")
    (path / "sub").mkdir()
    (path / "sub" / "x.txt").write_text("x")
    (path / ".adapter_config.json.k3j2.tmp").write_text("left by a save killed before this version")
    helpers.randomize(model, seed=7)
    tp.nn.save_adapter(model, path)
    assert sorted(os.listdir(path)) == ["README.md", "adapter_config.json", "adapter_model.safetensors", "sub"]
    assert (path / "README.md").read_text() == "my notes" and (path / "sub" / "x.txt").read_text() == "x"
    assert os.listdir(tmp_path) == ["adapter"]
    loaded = tp.TensorPeftModel.from_pretrained(make_model("bert"), path)
    with torch.no_grad():
        assert torch.equal(helpers.output_of(loaded(ids)), helpers.output_of(model(ids)))


@pytest.mark.parametrize("where", ["exchange", "sibling"])
def test_a_directory_that_cannot_be_swapped_is_saved_in_place(make_model, helpers, ids, tmp_path, monkeypatch, where):
    model, path = saved(make_model, helpers, tmp_path)
    (path / "README.md").write_text("my notes")
    helpers.randomize(model, seed=11)

    def busy(*args, **kwargs):  # a mount point (EBUSY), or a read-only parent (EACCES)
        raise OSError(errno.EBUSY if where == "exchange" else errno.EACCES, "cannot")

    monkeypatch.setattr(_safe_io, "_exchange" if where == "exchange" else "fresh_sibling", busy)
    tp.nn.save_adapter(model, path)
    assert sorted(os.listdir(path)) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert os.listdir(tmp_path) == ["adapter"]
    loaded = tp.TensorPeftModel.from_pretrained(make_model("bert"), path)
    with torch.no_grad():
        assert torch.equal(helpers.output_of(loaded(ids)), helpers.output_of(model(ids)))


def test_an_exception_inside_the_journalled_swap_rolls_back(make_model, helpers, tmp_path, monkeypatch):
    monkeypatch.setattr(_safe_io, "_renameat2", lambda: None)
    model, path = saved(make_model, helpers, tmp_path)
    before = contents(path)
    helpers.randomize(model, seed=9)
    real_rename, calls = os.rename, []

    def interrupted_at_the_second_rename(src, dst):
        calls.append(src)
        if len(calls) == 2:  # the target is aside, the new directory not yet in place
            raise KeyboardInterrupt
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", interrupted_at_the_second_rename)
    with pytest.raises(KeyboardInterrupt):
        tp.nn.save_adapter(model, path)
    assert len(calls) == 3 and contents(path) == before
    assert os.listdir(tmp_path) == ["adapter"]


def dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_an_interrupted_journalled_swap_is_finished_by_the_next_load(make_model, helpers, ids, tmp_path):
    """The state a save killed between its two renames leaves: target aside, the new adapter beside it."""
    model, path = saved(make_model, helpers, tmp_path)
    pid = dead_pid()
    old, new = tmp_path / f".adapter.tensorpeft-old-{pid}-aa", tmp_path / f".adapter.tensorpeft-new-{pid}-bb"
    helpers.randomize(model, seed=9)
    tp.nn.save_adapter(model, new)
    os.rename(path, old)
    journal = {"pid": pid, "new": new.name, "old": old.name}
    (tmp_path / ".adapter.tensorpeft-swap.json").write_text(json.dumps(journal))
    loaded = tp.TensorPeftModel.from_pretrained(make_model("bert"), path)
    with torch.no_grad():
        assert torch.equal(helpers.output_of(loaded(ids)), helpers.output_of(model(ids)))
    assert os.listdir(tmp_path) == ["adapter"]


def test_stale_temporaries_of_a_dead_process_are_removed_by_the_next_save(make_model, helpers, tmp_path):
    model, path = saved(make_model, helpers, tmp_path)
    pid = dead_pid()
    (tmp_path / f".adapter.tensorpeft-new-{pid}-0123ab").mkdir()
    (tmp_path / f".adapter.tensorpeft-journal-{pid}-0123ab").write_text("{}")
    live = tmp_path / f".adapter.tensorpeft-new-{os.getppid()}-0123ab"  # a save in progress elsewhere
    live.mkdir()
    (tmp_path / ".adapter.tensorpeft-new-notours").mkdir()
    tp.nn.save_adapter(model, path)
    assert sorted(os.listdir(tmp_path)) == sorted(["adapter", live.name, ".adapter.tensorpeft-new-notours"])


def test_saving_through_a_symlink_and_into_the_working_directory(make_model, helpers, tmp_path, monkeypatch):
    model, path = saved(make_model, helpers, tmp_path)
    os.symlink(path, tmp_path / "link")
    tp.nn.save_adapter(model, tmp_path / "link")
    assert (tmp_path / "link").is_symlink()
    assert sorted(os.listdir(tmp_path / "link")) == ["adapter_config.json", "adapter_model.safetensors"]
    monkeypatch.chdir(path)
    tp.nn.save_adapter(model, ".")
    assert os.path.samefile(os.getcwd(), path) and sorted(os.listdir(".")) == sorted(os.listdir(path))


@pytest.mark.parametrize(
    "field, value",
    [("out_features", 2.7), ("out_features", "8"), ("stack", [True]), ("members", [["0", [0.0]]]), ("name", 3)],
)
def test_stack_plan_from_dict_is_strict(field, value):
    from tensorpeft.nn import StackPlan

    good = {"name": "s", "stack": [1], "out_features": 8, "in_features": 8, "heads": None, "members": [["0", [0]]]}
    assert StackPlan.from_dict(good).out_features == 8
    with pytest.raises(ValueError, match="malformed"):
        StackPlan.from_dict(good | {field: value})


def test_loading_plans_the_base_model_once(tmp_path, monkeypatch):
    from tensorpeft.nn import _grouping, _model, _serialization

    def mlp():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8))

    tp.get_peft_model(mlp(), tp.Tucker2Config(rank=2, target_modules=["0", "2"])).save_pretrained(tmp_path)
    calls = []

    def counting(model, config):
        calls.append(type(config).__name__)
        return _grouping.plan_stacks(model, config)

    monkeypatch.setattr(_serialization, "plan_stacks", counting)
    monkeypatch.setattr(_model, "plan_stacks", counting)
    loaded = tp.TensorPeftModel.from_pretrained(mlp(), tmp_path)
    assert calls == ["Tucker2Config"]
    assert [p.name for p in loaded.plans] == ["stack"]


def test_write_file_atomic_replaces_whole_or_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    target.write_bytes(b"old")
    assert _safe_io.write_file_atomic(target, b"new") == target.resolve()
    assert target.read_bytes() == b"new"

    def full_disk(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_safe_io.os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        _safe_io.write_file_atomic(target, b"newer")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # no temporary left


# ------------------------------------------------------------------------------------------ PEFT's loaders
@pytest.mark.parametrize("writer", list(FILES))
def test_peft_loads_what_either_save_wrote(make_model, helpers, ids, tmp_path, fmt, writer):
    import peft

    model, path = saved(make_model, helpers, tmp_path, fmt=fmt, writer=writer)
    config = peft.PeftConfig.from_pretrained(str(path))
    assert type(config) is type(model.active_config)
    assert same_config(config, model.active_config, ("inference_mode", "auto_mapping"))  # PEFT keeps auto_mapping
    loaded = peft.PeftModel.from_pretrained(make_model("bert"), str(path))
    assert type(loaded) is peft.PeftModel and type(loaded.base_model) is tp.nn.TensorPeftModel
    assert same_config(loaded.peft_config["default"], model.peft_config["default"])
    for name, stack in model.tensor_adapters.items():
        for fname, p in stack.factors().items():
            q = loaded.tensor_adapters[name].factors()[fname]
            assert torch.equal(p, q) and p.dtype == q.dtype and not q.requires_grad
    with torch.no_grad():
        out = helpers.output_of(loaded(ids))
        assert torch.equal(out, helpers.output_of(model(ids)))
        assert not torch.equal(out, helpers.output_of(make_model("bert")(ids)))  # the adapter is applied
    trainable = peft.PeftModel.from_pretrained(make_model("bert"), str(path), is_trainable=True)
    assert all(p.requires_grad for p in trainable.tensor_adapters.parameters())


def test_peft_refuses_a_damaged_directory_before_touching_the_base(make_model, helpers, tmp_path):
    import peft

    _, path = saved(make_model, helpers, tmp_path, writer="save_pretrained")
    good = path.with_name("good")
    os.rename(path, good)
    damages = {
        "corrupt": lambda p: corrupt_payload(p / "adapter_model.safetensors"),
        "truncated": lambda p: truncate(p / "adapter_model.safetensors"),
        "rank": lambda p: edit_config(p, lambda m: m.update(rank=3)),
        "stacks": lambda p: edit_config(p, lambda m: m["tensorpeft"]["stacks"][0].update(name="renamed")),
    }
    for name, damage in damages.items():
        path = tmp_path / name
        os.mkdir(path)
        for f in os.listdir(good):
            (path / f).write_bytes((good / f).read_bytes())
        damage(path)
        target = make_model("bert")
        before = snapshot(target)
        with pytest.raises(ValueError, match="adapter_"):
            peft.PeftModel.from_pretrained(target, str(path))
        assert_untouched(target, before)
    target = make_model("gpt2")  # a config for another model
    before = snapshot(target)
    with pytest.raises(ValueError, match="matches no module of GPT2LMHeadModel"):
        peft.PeftModel.from_pretrained(target, str(good))
    assert_untouched(target, before)


def test_two_adapters_of_different_formats_round_trip_through_peft(make_model, helpers, ids, tmp_path):
    import peft

    model = tp.get_peft_model(make_model("bert"), helpers.FORMATS["tucker2"](helpers.TARGETS["bert"]))
    model.add_adapter("b", helpers.FORMATS["cp"](["query", "value"]))
    for name, seed in (("default", 1), ("b", 2)):
        model.set_adapter(name)
        helpers.randomize(model, seed=seed)
    model.eval()
    with torch.no_grad():
        want = {}
        for name in ("default", "b"):
            model.set_adapter(name)
            want[name] = helpers.output_of(model(ids))
    assert not torch.equal(want["default"], want["b"])
    model.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path / "b")) == FILES["save_adapter"]  # PEFT's layout: the card at the top only
    loaded = peft.PeftModel.from_pretrained(make_model("bert"), str(tmp_path))
    loaded.load_adapter(str(tmp_path / "b"), adapter_name="b")
    assert sorted(loaded.peft_config) == ["b", "default"]
    assert type(loaded.peft_config["b"]) is tp.CPConfig and type(loaded.peft_config["default"]) is tp.Tucker2Config
    with torch.no_grad():
        for name in ("default", "b"):
            loaded.set_adapter(name)
            assert torch.equal(helpers.output_of(loaded(ids)), want[name]), name


@pytest.mark.parametrize("writer", list(FILES))
def test_files_of_the_layout_before_peft_still_load(make_model, helpers, ids, tmp_path, writer):
    model, path = saved(make_model, helpers, tmp_path, fmt="cp", writer=writer)
    old_config(path, lambda m: None)
    meta = json.loads((path / "adapter_config.json").read_text())
    assert sorted(meta) == ["base_model_class", "config", "peft_type", "sha256", "stacks", "tensorpeft_version"]
    loaded = tp.nn.load_adapter(make_model("bert"), path)
    assert same_config(loaded.peft_config["default"], model.peft_config["default"])
    with torch.no_grad():
        assert torch.equal(helpers.output_of(loaded(ids)), helpers.output_of(model(ids)))
    old_config(path, lambda m: m.update(sha256="0" * 64))  # and are checked as strictly
    with pytest.raises(ValueError, match="checksum"):
        tp.nn.load_adapter(make_model("bert"), path)


def test_a_config_without_checksum_still_checks_names_and_shapes(make_model, helpers, ids, tmp_path):
    """A config saved before its weights (no ``sha256``) loads; the tensors are still checked against the plans."""
    model, path = saved(make_model, helpers, tmp_path)
    edit_config(path, lambda m: m["tensorpeft"].pop("sha256"))
    loaded = tp.nn.load_adapter(make_model("bert"), path)
    with torch.no_grad():
        assert torch.equal(helpers.output_of(loaded(ids)), helpers.output_of(model(ids)))
    edit_config(path, lambda m: m.update(rank=3))
    target = make_model("bert")
    before = snapshot(target)
    with pytest.raises(ValueError, match="has shape"):
        tp.nn.load_adapter(target, path)
    assert_untouched(target, before)


@pytest.mark.parametrize("task", ["SEQ_CLS", "CAUSAL_LM"])
def test_auto_peft_model_loads_onto_a_local_base(tmp_path, monkeypatch, task):
    import peft
    from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    if task == "SEQ_CLS":
        cfg = BertConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            vocab_size=100,
            num_labels=3,
        )
        make, auto, targets = BertForSequenceClassification, peft.AutoPeftModelForSequenceClassification, ["query"]
        base = make(cfg).eval()
    else:
        cfg = GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=64, bos_token_id=0, eos_token_id=0)
        make, auto, targets = GPT2LMHeadModel, peft.AutoPeftModelForCausalLM, ["c_attn"]
        base = make(cfg).eval()
    base.save_pretrained(tmp_path / "base")
    model = tp.get_peft_model(
        make.from_pretrained(tmp_path / "base").eval(),
        tp.Tucker2Config(rank=2, target_modules=targets, task_type=task),
    )
    randomize_trainable(model)
    model.eval()
    assert model.peft_config["default"].base_model_name_or_path == str(tmp_path / "base")
    model.save_pretrained(tmp_path / "adapter")
    loaded = auto.from_pretrained(str(tmp_path / "adapter"))
    assert type(loaded) is type(model) and type(loaded.base_model) is tp.nn.TensorPeftModel
    ids = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
        assert not torch.equal(loaded(input_ids=ids).logits, base(input_ids=ids).logits)


def randomize_trainable(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) * 0.3)


def test_two_adapters_with_modules_to_save_round_trip_and_a_bad_second_one_is_refused(tmp_path):
    """The second adapter's ``modules_to_save`` tensors are checked against the wrapped head before injection."""
    import peft
    from safetensors.torch import load_file, save_file

    def tiny():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8))

    model = tp.get_peft_model(tiny(), tp.Tucker2Config(rank=2, target_modules=["0"], modules_to_save=["2"]))
    model.add_adapter("b", tp.CPConfig(rank=2, target_modules=["0"], modules_to_save=["2"]))
    for name in ("default", "b"):
        model.set_adapter(name)
        randomize_trainable(model, seed=3 if name == "b" else 4)
    x = torch.randn(3, 8)
    want = {}
    with torch.no_grad():
        for name in ("default", "b"):
            model.set_adapter(name)
            want[name] = model(x)
    model.save_pretrained(tmp_path)
    loaded = peft.PeftModel.from_pretrained(tiny(), str(tmp_path))
    before = snapshot(loaded)
    bad = load_file(tmp_path / "b" / "adapter_model.safetensors")
    bad["base_model.model.2.weight"] = torch.zeros(3, 8)
    save_file(bad, tmp_path / "b" / "adapter_model.safetensors")
    edit_config(tmp_path / "b", lambda m: m["tensorpeft"].update(sha256=_digest(bad)))
    with pytest.raises(ValueError, match=r"'base_model.model.2.weight' of .* has shape \(3, 8\)"):
        loaded.load_adapter(str(tmp_path / "b"), adapter_name="b")
    after = snapshot(loaded)
    assert list(loaded.peft_config) == ["default"] and after.keys() == before.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    model.save_pretrained(tmp_path)
    loaded.load_adapter(str(tmp_path / "b"), adapter_name="b")
    with torch.no_grad():
        for name in ("default", "b"):
            loaded.set_adapter(name)
            assert torch.equal(loaded(x), want[name]), name


def _digest(tensors):
    from tensorpeft.nn import _serialization

    return _serialization._digest(tensors)


def test_peft_save_pretrained_refuses_non_finite_factors_before_writing(tmp_path):
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8))
    model = tp.get_peft_model(base, tp.Tucker2Config(rank=2, target_modules=["0", "2"]))
    with torch.no_grad():
        next(p for p in model.parameters() if p.requires_grad)[0] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()
    assert not (tmp_path / "out" / "adapter_config.json").exists()
