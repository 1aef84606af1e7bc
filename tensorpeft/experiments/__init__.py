"""The fine-tuning comparison behind ``tensorpeft compare`` and the planner behind ``tensorpeft budget``.

Needs the ``demo`` extra (the embedded model and data sets, matplotlib, tqdm).
"""

import importlib

# Where each public name lives; resolved on first access (PEP 562), so that the command line can parse
# and refuse bad arguments without importing torch.
_HOMES = {
    "budget_table": "_budget",
    "format_budget_table": "_budget",
    "CompareSettings": "_compare",
    "MethodRow": "_compare",
    "format_table": "_compare",
    "run_compare": "_compare",
    "write_outputs": "_compare",
    "DATASETS": "_data",
    "TextClassificationData": "_data",
    "load_dataset": "_data",
    "DEFAULT_METHODS": "_methods",
    "MethodSpec": "_methods",
    "parse_methods": "_methods",
    "resolve_method": "_methods",
    "SentenceClassifier": "_train",
    "TrainResult": "_train",
    "TrainSettings": "_train",
    "train_and_evaluate": "_train",
}

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


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
