import json

import pytest

pytest.importorskip("transformers")

from tensorpeft.cli import main


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["compare", "--methods", "bogus"], "unknown method 'bogus'"),
        (["compare", "--dataset", "imdb"], "`--dataset` must be one of"),
        (["compare", "--model", "/nonexistent"], "is not a checkpoint directory"),
        (["compare", "--methods", "tucker2:7"], "below the smallest"),
        (["budget", "--shape", "gpt-9"], "`--shape` must be one of"),
        (["budget", "--dims", "1,2"], "`--dims` needs 5 numbers"),
    ],
)
def test_bad_arguments_give_one_line_error(argv, needle, capsys):
    status = main(argv)
    err = capsys.readouterr().err
    assert status == 2
    assert needle in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_argparse_errors_exit_2(capsys):
    assert main(["compare", "--steps", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "`--steps` must be an integer between 1" in err


def test_help_exits_0(capsys):
    assert main(["budget", "--help"]) == 0
    assert "TENSORPEFT_DEBUG=1" in capsys.readouterr().out


def test_budget_table_for_bert_base(capsys):
    assert main(["budget", "--shape", "bert-base", "--lora-rank", "8"]) == 0
    out = capsys.readouterr().out
    assert "budget: 294,912 parameters" in out  # 12 layers × 2 matrices × 8 × (768 + 768)
    assert "Tucker-2 (LoTR)" in out and "CP (LoRTA)" in out


def test_quick_compare_writes_table_json_and_plot(tmp_path, capsys):
    status = main(["compare", "--quick", "--no-progress", "--steps", "3", "--n-test", "32", "-o", str(tmp_path)])
    assert status == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "lora:r8" in out
    record = json.loads((tmp_path / "results.json").read_text())
    assert [r["method"] for r in record["rows"]] == ["head", "lora:r8", "tucker2:r1", "cp:tiny"]
    for row in record["rows"]:
        assert 0.0 <= row["accuracy_mean"] <= 1.0
        assert row["seconds_per_step"] > 0
    png = (tmp_path / "accuracy_vs_params.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_validation_run_scores_held_out_training_examples(tmp_path, capsys):
    argv = ["compare", "--methods", "head", "--steps", "2", "--n-train", "64", "--n-test", "32"]
    status = main([*argv, "--validation", "48", "--no-progress", "-o", str(tmp_path)])
    assert status == 0
    out = capsys.readouterr().out
    assert "validation accuracy" in out and "test accuracy" not in out
    assert "48 validation (held out of train; test set unused)" in out
    settings = json.loads((tmp_path / "results.json").read_text())["settings"]
    assert settings["evaluate_on"] == "validation" and settings["n_val"] == 48


def test_validation_needs_a_validation_set():
    from tensorpeft.experiments import CompareSettings

    with pytest.raises(ValueError, match="`evaluate_on='validation'` needs a validation set"):
        CompareSettings(model_path="unused", evaluate_on="validation")
    with pytest.raises(ValueError, match="`evaluate_on` must be 'test' or 'validation'"):
        CompareSettings(model_path="unused", evaluate_on="train")
