"""Every bad argument of ``tensorpeft compare`` / ``budget`` ends in one line on stderr and exit 2, never a traceback.

The commands run in-process through :func:`tensorpeft.cli.main`; nothing trains (``run_compare`` is
replaced by a function that fails the test) and every model is a shapes-only one on the meta device.
"""

import json
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("transformers")

from tensorpeft import cli
from tensorpeft.experiments import _budget, _compare, _outputs

HUGE = str(10**30)
REAL_RUN_COMPARE = _compare.run_compare


@pytest.fixture(autouse=True)
def no_training(monkeypatch):
    """A case that reached training would be a missed up-front check: make it fail loudly (exit 1)."""

    def train(*args, **kwargs):
        raise AssertionError("reached training")

    monkeypatch.setattr(_compare, "run_compare", train)
    monkeypatch.delenv("TENSORPEFT_DEBUG", raising=False)


@pytest.fixture
def bad_dirs(tmp_path):
    """Checkpoint-like directories whose config.json is broken in a different way each."""
    dirs = {}
    for name, text in {
        "badjson": "{not json",
        "zeroheads": json.dumps({"model_type": "bert", "num_attention_heads": 0}),
        "unknowntype": json.dumps({"model_type": "no-such-architecture"}),
    }.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(text)
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("x")
    dirs.update({name: str(tmp_path / name) for name in ("badjson", "zeroheads", "unknowntype", "empty", "afile")})
    dirs["missing"] = str(tmp_path / "missing")
    return dirs


def _run(argv, capsys):
    status = cli.main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _assert_one_line(err):
    assert "Traceback" not in err
    assert err.endswith("\n") and err.count("\n") == 1, err


PARSE_CASES = [
    (["compare", "--seeds", ","], "`--seeds`"),
    (["compare", "--seeds", ""], "`--seeds`"),
    (["compare", "--seeds", "-1"], "`--seeds`"),
    (["compare", "--seeds", HUGE], "`--seeds`"),
    (["compare", "--seeds", "1,1"], "must not repeat"),
    (["compare", "--seeds", "0,x"], "`--seeds`"),
    (["compare", "--methods", ","], "`--methods`"),
    (["compare", "--methods", ""], "`--methods`"),
    (["compare", "--budgets", ""], "`--budgets`"),
    (["compare", "--budgets", ","], "`--budgets`"),
    (["compare", "--targets", ","], "`--targets`"),
    (["compare", "--lr", "nan"], "`--lr`"),
    (["compare", "--lr", "inf"], "`--lr`"),
    (["compare", "--lr", "-1e-3"], "`--lr`"),
    (["compare", "--lr", "0"], "`--lr`"),
    (["compare", "--lr", "1e30"], "`--lr`"),
    (["compare", "--lr", "fast"], "`--lr`"),
    (["compare", "--head-lr", "nan"], "`--head-lr`"),
    (["compare", "--head-lr", "-inf"], "`--head-lr`"),
    (["compare", "--head-lr", "0"], "`--head-lr`"),
    (["compare", "--steps", "0"], "`--steps`"),
    (["compare", "--steps", "-3"], "`--steps`"),
    (["compare", "--steps", HUGE], "`--steps`"),
    (["compare", "--batch-size", "0"], "`--batch-size`"),
    (["compare", "--batch-size", HUGE], "`--batch-size`"),
    (["compare", "--n-train", "0"], "`--n-train`"),
    (["compare", "--n-test", HUGE], "`--n-test`"),
    (["compare", "--validation", "-1"], "`--validation`"),
    (["compare", "--threads", "0"], "`--threads`"),
    (["compare", "--threads", HUGE], "`--threads`"),
    (["compare", "--dataset", "imdb"], "`--dataset` must be one of"),
    (["compare", "--model", ""], "`--model` must be a path"),
    (["compare", "--output", ""], "`--output/-o` must be a path"),
    (["budget", "--model", " "], "`--model` must be a path"),
    (["compare", "--bogus"], "unrecognized arguments"),
    (["compare", "--steps"], "`--steps` expected one argument"),
    (["nonsense"], "invalid choice"),
    ([], "required"),
    (["budget", "--dims", ""], "`--dims`"),
    (["budget", "--dims", ","], "`--dims`"),
    (["budget", "--dims", "a,b,c,d,e"], "`--dims`"),
    (["budget", "--shape", "gpt-9"], "`--shape` must be one of"),
    (["budget", "--arch", "gpt", "--dims", "2,64,4,4,8"], "`--arch` must be one of"),
    (["budget", "--budget", "0"], "`--budget`"),
    (["budget", "--budget", "-5"], "`--budget`"),
    (["budget", "--budget", "1e3"], "`--budget`"),
    (["budget", "--lora-rank", "0"], "`--lora-rank`"),
    (["budget", "--lora-rank", HUGE], "`--lora-rank`"),
    (["budget", "--targets", ","], "`--targets`"),
    (["budget", "--shape", "bert-base", "--dims", "2,64,4,4,8"], "not allowed with"),
    (["budget", "--budget", "5", "--lora-rank", "2"], "not allowed with"),
]


@pytest.mark.parametrize(("argv", "needle"), PARSE_CASES)
def test_bad_argument_is_one_line_and_exit_2(argv, needle, capsys):
    status, out, err = _run(argv, capsys)
    assert status == 2 and out == ""
    assert needle in err
    _assert_one_line(err)


SHAPE_CASES = [
    ("2,64", "`--dims` needs 5 numbers"),
    ("0,0,0,0,0", "`layers` must be an integer between 1 and 256, got 0"),
    ("2,-64,4,4,8", "`hidden` must be an integer between 1"),
    ("2,64,3,3,8", "`hidden`=64 must be divisible by `heads`=3"),
    ("2,64,4,3,8", "`heads`=4 must be divisible by `kv_heads`=3"),
    ("2,60,4,4,8", "must be even for LLaMA's rotary embedding"),
    (f"2,64,4,4,{HUGE}", "`intermediate` must be an integer between 1"),
    ("100000,64,4,4,8", "`layers` must be an integer between 1 and 256"),
    ("2,64,4,0,8", "`kv_heads` must be an integer"),
]


@pytest.mark.parametrize(("dims", "needle"), SHAPE_CASES)
def test_bad_dims_are_named_before_any_model_is_built(dims, needle, capsys, monkeypatch):
    monkeypatch.setattr(_budget, "_layout_model", lambda *a: pytest.fail("built a model"))
    status, _, err = _run(["budget", "--dims", dims], capsys)
    assert status == 2
    assert needle in err and "`--dims`" in err
    _assert_one_line(err)


def test_bert_dims_need_kv_heads_equal_to_heads(capsys):
    status, _, err = _run(["budget", "--dims", "2,64,4,2,8", "--arch", "bert"], capsys)
    assert status == 2 and "`kv_heads` must equal `heads`=4 for BERT" in err
    _assert_one_line(err)


def test_arch_without_dims_is_refused(capsys):
    status, _, err = _run(["budget", "--arch", "bert", "--shape", "bert-base"], capsys)
    assert status == 2 and "`--arch` only applies" in err
    _assert_one_line(err)


@pytest.mark.parametrize("command", ["budget", "compare"])
@pytest.mark.parametrize(
    ("which", "needle"),
    [
        ("badjson", "OSError|config.json cannot be read"),
        ("zeroheads", "ZeroDivisionError"),
        ("unknowntype", "config.json does not give a model"),
        ("empty", "is not a checkpoint directory"),
        ("afile", "is not a checkpoint directory"),
        ("missing", "is not a checkpoint directory"),
    ],
)
def test_bad_model_directory_is_one_line(command, which, needle, bad_dirs, capsys):
    status, _, err = _run([command, "--model", bad_dirs[which]], capsys)
    assert status == 2
    assert "`--model`" in err and re.search(needle, err)
    _assert_one_line(err)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["budget", "--shape", "bert-base", "--targets", "nothing"], "matches no module"),
        (["budget", "--shape", "bert-base", "--lora-rank", "1000"], "the largest LoRA rank on these modules is 768"),
        (["compare", "--targets", "nothing", "--methods", "lora:r1"], "matches no module"),
        (["compare", "--methods", "tucker2:7"], "below the smallest"),
        (["compare", "--methods", "lora:r100000"], "the largest LoRA rank on these modules is 384"),
        (["compare", "--methods", f"lora:r{HUGE}"], "the largest LoRA rank"),
        (["compare", "--methods", "tt", "--budgets", "0"], "budget '0'"),
        (["compare", "--methods", "head", "--n-test", "100000"], "`n_test` must be between"),
        (["compare", "--methods", "head", "--n-train", "9999999"], "`n_train` must be between"),
        (["compare", "--methods", "head", "--validation", "9999999"], "`n_val` must be between"),
    ],
)
def test_bad_values_found_after_parsing_are_one_line(argv, needle, capsys, tmp_path):
    out_dir = tmp_path / "out"
    status, _, err = _run([*argv, "-o", str(out_dir)] if argv[0] == "compare" else argv, capsys)
    assert status == 2
    assert needle in err
    _assert_one_line(err)
    assert not out_dir.exists()  # refused before the output directory was made


def test_output_that_is_a_file_is_refused_before_training(tmp_path, capsys):
    target = tmp_path / "results"
    target.write_text("keep")
    status, _, err = _run(["compare", "--methods", "head", "-o", str(target)], capsys)
    assert status == 2 and "`--output`" in err and "must be a directory, got a file" in err
    _assert_one_line(err)
    assert target.read_text() == "keep"


def test_output_under_a_file_is_refused_before_training(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    status, _, err = _run(["compare", "--methods", "head", "-o", str(tmp_path / "file" / "sub")], capsys)
    assert status == 2 and "`--output`" in err and "must be a directory that can be created" in err
    _assert_one_line(err)


def test_output_whose_results_json_is_a_directory_is_refused(tmp_path, capsys):
    (tmp_path / "results.json").mkdir()
    status, _, err = _run(["compare", "--methods", "head", "-o", str(tmp_path)], capsys)
    assert status == 2 and "results.json in it must be a file" in err
    _assert_one_line(err)


@pytest.mark.parametrize("argv", [["--methods", ","], ["--methods", "tt", "--budgets", ""], ["--seeds", ","]])
def test_empty_lists_do_not_overwrite_earlier_results(argv, tmp_path, capsys):
    earlier = tmp_path / "results.json"
    earlier.write_text('{"rows": ["earlier"]}')
    status, _, err = _run(["compare", *argv, "-o", str(tmp_path)], capsys)
    assert status == 2
    _assert_one_line(err)
    assert earlier.read_text() == '{"rows": ["earlier"]}'


def test_failed_run_removes_the_output_directory_it_created(tmp_path, capsys, monkeypatch):
    def fail(*args, **kwargs):
        raise ValueError("`settings` stopped in the test")

    monkeypatch.setattr(_compare, "run_compare", fail)
    out_dir = tmp_path / "new" / "nested"
    status, _, err = _run(["compare", "--methods", "head", "-o", str(out_dir)], capsys)
    assert status == 2 and "stopped in the test" in err
    _assert_one_line(err)
    assert not (tmp_path / "new").exists()


def test_internal_error_is_one_line_and_exit_1(capsys, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(_budget, "budget_table", boom)
    status, _, err = _run(["budget", "--shape", "bert-base"], capsys)
    assert status == 1
    assert "internal error: RuntimeError: boom second line" in err and "TENSORPEFT_DEBUG=1" in err
    _assert_one_line(err)


def test_debug_env_lets_the_traceback_through(capsys, monkeypatch):
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(ValueError, match="`layers` must be an integer"):
        cli.main(["budget", "--dims", "0,0,0,0,0"])


def test_interrupt_is_one_line(capsys, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(_budget, "budget_table", interrupt)
    status, _, err = _run(["budget", "--shape", "bert-base"], capsys)
    assert status == 130 and "interrupted" in err
    _assert_one_line(err)


def test_table_is_printed_before_a_failed_write(tmp_path, capsys, monkeypatch):
    row = _compare.MethodRow("head", "head only", "-", 0, 770, 0, [0.75], 0.1, 100.0)
    monkeypatch.setattr(_compare, "run_compare", lambda *a, **k: [row])

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_outputs, "write_outputs", no_space)
    status, out, err = _run(["compare", "--methods", "head", "-o", str(tmp_path)], capsys)
    assert status == 1 and "No space left on device" in err
    _assert_one_line(err)
    assert "head" in out and "75.0" in out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [(["compare", "--seeds", ","], "`--seeds`"), (["budget", "--dims", "0,0,0,0,0"], "`--dims`")],
)
def test_real_entry_point_prints_no_traceback(argv, needle):
    env = {key: value for key, value in os.environ.items() if key != cli.DEBUG_ENV}
    proc = subprocess.run(
        [sys.executable, "-m", "tensorpeft", *argv], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and needle in proc.stderr


@pytest.fixture
def bounded_search(monkeypatch):
    """Past 1,000 parameter counts a rank search is taken to be unbounded (it used to double for ever)."""
    from tensorpeft.experiments import _methods

    real, calls = _methods.adapter_params, []

    def adapter_params_counted(model, config):
        calls.append(config.rank)
        if len(calls) > 1000:
            raise AssertionError("unbounded rank search")
        return real(model, config)

    monkeypatch.setattr(_methods, "adapter_params", adapter_params_counted)


@pytest.mark.usefixtures("bounded_search")
def test_budget_above_the_tensor_train_maximum_answers(capsys):
    status, out, _ = _run(["budget", "--shape", "minilm-l6", "--budget", "10000000"], capsys)
    assert status == 0
    tt = next(line for line in out.splitlines() if line.startswith("TT"))
    assert "3,638,784" in tt and "the format's maximum" in tt


@pytest.mark.usefixtures("bounded_search")
def test_budget_of_a_small_bert_at_a_huge_budget_answers(capsys):
    status, out, _ = _run(["budget", "--dims", "2,64,4,4,128", "--arch", "bert", "--budget", "100000000"], capsys)
    assert status == 0 and out.count("the format's maximum") >= 4


@pytest.mark.usefixtures("bounded_search")
def test_compare_above_the_tensor_train_maximum_says_so_before_training(tmp_path, capsys, monkeypatch):
    def stop(*args, **kwargs):
        raise ValueError("`settings` stopped before training")

    monkeypatch.setattr(_compare, "run_compare", stop)
    status, out, _ = _run(["compare", "--methods", "tt:10000000", "-o", str(tmp_path)], capsys)
    assert status == 2
    assert "note: tt:10000000" in out and "3,638,784 parameters" in out


def test_write_outputs_refuses_no_rows_and_keeps_earlier_results(tmp_path):
    settings = _compare.CompareSettings(model_path="unused")
    (tmp_path / "results.json").write_text("earlier")
    with pytest.raises(ValueError, match="`rows` must hold at least one"):
        _compare.write_outputs([], settings, tmp_path)
    assert (tmp_path / "results.json").read_text() == "earlier"


def test_write_outputs_replaces_nothing_when_the_plot_fails(tmp_path, monkeypatch):
    settings = _compare.CompareSettings(model_path="unused")
    row = _compare.MethodRow("head", "head only", "-", 0, 770, 0, [0.75], 0.1, 100.0)
    (tmp_path / "results.json").write_text("earlier")

    def broken_plot(rows, path):
        raise RuntimeError("no plotting today")

    monkeypatch.setattr(_outputs, "_plot", broken_plot)
    with pytest.raises(RuntimeError, match="no plotting today"):
        _outputs.write_outputs([row], settings, tmp_path)
    assert (tmp_path / "results.json").read_text() == "earlier"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # no temporary file left


def test_prepare_output_dir_returns_what_it_created(tmp_path):
    created = _compare.prepare_output_dir(tmp_path / "a" / "b")
    assert created == [tmp_path / "a" / "b", tmp_path / "a"]
    assert list((tmp_path / "a" / "b").iterdir()) == []  # the probe file is gone
    assert _compare.prepare_output_dir(tmp_path / "a" / "b") == []


def test_checkpoint_without_weights_fails_before_training(tmp_path, capsys, monkeypatch):
    import transformers

    checkpoint = tmp_path / "config-only"
    transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    ).save_pretrained(checkpoint)
    monkeypatch.setattr(_compare, "run_compare", REAL_RUN_COMPARE)  # it fails while loading, before training
    out_dir = tmp_path / "out"
    argv = ["compare", "--model", str(checkpoint), "--methods", "head", "--no-progress", "-o", str(out_dir)]
    status, _, err = _run(argv, capsys)
    assert status == 2 and "cannot be loaded" in err and "model.safetensors" in err
    _assert_one_line(err)
    assert not out_dir.exists()


def test_write_outputs_writes_the_output_files_and_is_the_one_compare_exports(tmp_path):
    import tensorpeft.experiments as experiments

    assert experiments.write_outputs is _compare.write_outputs is _outputs.write_outputs
    settings = _compare.CompareSettings(model_path="unused")
    row = _compare.MethodRow("head", "head only", "-", 0, 770, 0, [0.75, 0.5], 0.1, 100.0)
    paths = _outputs.write_outputs([row], settings, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(_outputs.OUTPUT_FILES)
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads(paths["json"].read_text())
    assert record["rows"][0]["accuracy"] == [0.75, 0.5] and record["settings"]["model_path"] == "unused"
