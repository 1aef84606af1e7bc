"""The comparison behind ``tensorpeft compare`` (encoders, decoder LLMs), the ``budget`` planner, offline LLMs.

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
    "format_table": "_table",
    "run_compare": "_compare",
    "write_outputs": "_outputs",
    "DATASETS": "_data",
    "TextClassificationData": "_data",
    "load_dataset": "_data",
    "DEFAULT_METHODS": "_methods",
    "DEFAULT_LLM_METHODS": "_methods",
    "MethodSpec": "_methods",
    "parse_methods": "_methods",
    "resolve_method": "_methods",
    "SentenceClassifier": "_train",
    "TrainResult": "_train",
    "TrainSettings": "_train",
    "train_and_evaluate": "_train",
    "load_causal_lm": "_llm",
    "causal_lm_directory": "_llm",
    "model_kind": "_instruct",
    "smollm2_path": "_llm",
}
# Names the command line needs, resolved the same way but not in ``__all__``: they are no documented API.
_CLI_HOMES = {
    "SHAPES": "_budget",
    "check_shape": "_budget",
    "model_from_path": "_budget",
    "model_from_shape": "_budget",
    "check_data_sizes": "_compare",
    "check_methods": "_compare",
    "is_data_file": "_data",
    "default_model_path": "_compare",
    "prepare_output_dir": "_compare",
    "FAMILIES": "_methods",
    "at_format_max": "_methods",
}

__all__ = [
    "DATASETS",
    "DEFAULT_LLM_METHODS",
    "DEFAULT_METHODS",
    "CompareSettings",
    "MethodRow",
    "MethodSpec",
    "SentenceClassifier",
    "TextClassificationData",
    "TrainResult",
    "TrainSettings",
    "budget_table",
    "causal_lm_directory",
    "format_budget_table",
    "format_table",
    "load_causal_lm",
    "load_dataset",
    "model_kind",
    "parse_methods",
    "resolve_method",
    "run_compare",
    "smollm2_path",
    "train_and_evaluate",
    "write_outputs",
]


def __getattr__(name: str):
    home = _HOMES.get(name) or _CLI_HOMES.get(name)
    if home is not None:
        return getattr(importlib.import_module(f".{home}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
