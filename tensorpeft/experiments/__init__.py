"""The fine-tuning comparison behind ``tensorpeft compare`` and the planner behind ``tensorpeft budget``.

Needs the ``demo`` extra (the embedded model and data sets, matplotlib, tqdm).
"""

from ._budget import budget_table, format_budget_table
from ._compare import CompareSettings, MethodRow, format_table, run_compare, write_outputs
from ._data import DATASETS, TextClassificationData, load_dataset
from ._methods import DEFAULT_METHODS, MethodSpec, parse_methods, resolve_method
from ._train import SentenceClassifier, TrainResult, TrainSettings, train_and_evaluate

__all__ = [
    "DATASETS",
    "DEFAULT_METHODS",
    "CompareSettings",
    "MethodRow",
    "MethodSpec",
    "SentenceClassifier",
    "TextClassificationData",
    "TrainResult",
    "TrainSettings",
    "budget_table",
    "format_budget_table",
    "format_table",
    "load_dataset",
    "parse_methods",
    "resolve_method",
    "run_compare",
    "train_and_evaluate",
    "write_outputs",
]
